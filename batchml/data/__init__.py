"""Datasets: immutable, content-hashed versions, and what they are made from.

`sources` reads files, folders, globs and URLs of Parquet or CSV as record batches; `datasets` snapshots them
into versions, with `stats` summarising each column while streaming (for the manifest and for diffs); `labels`
ingests delayed labels as one more dataset per model. `row_diff` compares two versions row by row by entity
id, and `dataset_export` gives a version back (Parquet, CSV or polars), checked against its manifest. May
import: `store`, `batchml.config`, `batchml.project` and the vocabulary. Never `models`: the two are
independent siblings, joined only above them (checks, scoring, the api).
"""
