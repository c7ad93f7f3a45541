"""batchml: batch-first ML pipelines.

Version datasets, train LightGBM models, score whole populations into versioned prediction tables, and
serve them read-only from DuckDB. The library is pure (no Prefect); `flows/` wraps it for scheduling.

The package reads like the pipeline, one package per stage, each importing only the ones below it:
`store` < `data` | `models` < `checks` < `scoring` < `monitoring` < `serving` < `api` < `cli` (the order is
an import-linter contract in pyproject.toml). At the top stand the public surface (`api`, `config`,
`project`, `testing`) and the vocabulary every stage speaks (`errors`, `names`, `redact`); `redact` is here,
not in `store`, because every error message passes through it and `store` raises errors.
"""

from batchml import redact as _redact
from batchml.api import (
    connect,
    database_path,
    promote,
    publish,
    query,
    read_dataset,
    rebuild_catalog,
    register_model,
    rollback_model,
    rollback_predictions,
    score,
    snapshot_dataset,
    train,
)
from batchml.config import Config, ModelSpec, load_config
from batchml.data.datasets import DatasetVersion
from batchml.errors import (
    BatchMLError,
    ConfigError,
    ConflictError,
    DataError,
    IntegrityError,
    InvalidNameError,
    NotFoundError,
    PromotionError,
    QueryTimeoutError,
    ReadOnlyError,
    SchemaError,
    TransientError,
)
from batchml.models.registry import ModelVersion
from batchml.project import Project
from batchml.scoring.runs import PredictionRun

__version__ = "0.1.0"

__all__ = [
    "BatchMLError",
    "Config",
    "ConfigError",
    "ConflictError",
    "DataError",
    "DatasetVersion",
    "IntegrityError",
    "InvalidNameError",
    "ModelSpec",
    "ModelVersion",
    "NotFoundError",
    "PredictionRun",
    "Project",
    "PromotionError",
    "QueryTimeoutError",
    "ReadOnlyError",
    "SchemaError",
    "TransientError",
    "connect",
    "database_path",
    "load_config",
    "promote",
    "publish",
    "query",
    "read_dataset",
    "rebuild_catalog",
    "register_model",
    "rollback_model",
    "rollback_predictions",
    "score",
    "snapshot_dataset",
    "train",
]

_redact.install_log_filter(__name__, list(__path__))
