"""How bytes are kept: the one storage facade every read and write goes through, and the formats on it.

`storage` turns a URL (`file://`, `s3://`, `memory://`) into put-if-absent writes and hash-checked reads;
`records` seals every JSON record with the sha256 of its own content; `eventlog` is the append-only log that
aliases, publications and alerts are replayed from; `parts` writes a stream of record batches as Parquet
files that no manifest names yet. Nothing here knows a dataset, a model or a run. May import: only the
vocabulary at the top (`batchml.errors`, `batchml.names`, `batchml.redact`).
"""
