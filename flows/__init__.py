"""Prefect flows over the batchml library: the only package that imports prefect.

ingest.snapshot_dataset   source file(s) -> dataset version
train.train_model         dataset version -> model version (optionally promoted to an alias)
score.score_and_publish   model alias x dataset version -> prediction run -> serving DuckDB
pipeline.pipeline         all of the above, for one model or every configured model
monitor.monitor           published run -> drift, report, performance, alerts (events) -> retrain
retrain.retrain_model     recorded alerts -> debounced retrain: snapshot, train, score and publish
"""

import os

# LightGBM's OpenMP threads spin while idle; next to Prefect's API threads that can slow training 10x on
# small machines. Passive waiting costs little for batch work. Set before lightgbm is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Prefect's ephemeral API (used when no PREFECT_API_URL is set, e.g. by `make demo`) must start within 20 s by
# default; on a loaded 2-core machine it can take longer, and the run then fails before doing anything.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
