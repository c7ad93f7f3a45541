"""Scoring: prediction runs, how they are made, and which one is published.

`runs` keys a run by its content (model, dataset, code, engine, params), scores a dataset version and commits
the run's manifest; `pipeline` is the stream a whole run and each partition share (read, check and encode,
predict with `receipts`, whose reason codes go to the rows `reason_rows` selects, write parts), its stages
overlapped by `prefetch` (here, not in `store`: the pipeline is its only user); `partitions` spreads a version
over workers and commits them as the same run; `run_checksum` is the checksum of a run's rows that a serving
build checks a copied table against (it is computed when the run commits). `publications` is the log of which
run is published or staged: a record about runs, as the alias log is about versions, kept here so that
monitoring (which judges what was published) reads it without reaching up into serving. May import: `checks`,
`data`, `models`, `store`, `batchml.config` and the vocabulary.
"""
