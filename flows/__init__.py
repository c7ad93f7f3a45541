"""Prefect flows over the batchml library: the only package that imports prefect.

ingest.snapshot_dataset   source file(s) -> dataset version
train.train_model         dataset version -> model version (optionally promoted to an alias)
score.score_and_publish   model alias x dataset version -> prediction run -> serving DuckDB
pipeline.pipeline         all of the above, for one model or every configured model
"""
