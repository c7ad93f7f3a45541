"""batchml: batch-first ML pipelines.

Version datasets, train LightGBM models, score whole populations into versioned prediction tables, and
serve them read-only from DuckDB. The library is pure (no Prefect); `flows/` wraps it for scheduling.

The package reads like the pipeline, one package per stage, each importing only the ones below it:
`store` < `data` | `models` < `checks` < `scoring` < `monitoring` < `serving` < `api` < `cli` (the order is
an import-linter contract in pyproject.toml). At the top stand the public surface (`api`, `config`,
`project`, `testing`) and the vocabulary every stage speaks (`errors`, `names`, `redact`, `provenance`: the
flow run a record is written for); `redact` is here, not in `store`, because every error message passes
through it and `store` raises errors.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING, Any

from batchml import redact as _redact

if TYPE_CHECKING:
    from batchml.api import (
        promote,
        publish,
        read_dataset,
        rebuild_catalog,
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
    from batchml.registration import register_model
    from batchml.scoring.runs import PredictionRun
    from batchml.serving.lookup import lookup
    from batchml.serving.readers import connect, database_path, query

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
    "lookup",
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

#: Where each public name lives. Importing `batchml` loads none of them: the library's dependencies (pyarrow,
#: polars, LightGBM, scipy, Evidently) cost seconds to import, and `batchml --help` or a query needs none of
#: them. A name is imported from its module the first time it is used (PEP 562).
_HOMES = {
    "batchml.api": [
        *("promote", "publish", "read_dataset", "rebuild_catalog", "rollback_model"),
        *("rollback_predictions", "score", "snapshot_dataset", "train"),
    ],
    "batchml.registration": ["register_model"],
    # What apps and `batchml query` use: DuckDB and nothing heavy.
    "batchml.serving.readers": ["connect", "database_path", "query"],
    "batchml.serving.lookup": ["lookup"],  # returns Arrow: imports pyarrow, so not in `readers`
    "batchml.config": ["Config", "ModelSpec", "load_config"],
    "batchml.errors": [name for name in __all__ if name.endswith("Error")],
    "batchml.data.datasets": ["DatasetVersion"],
    "batchml.models.registry": ["ModelVersion"],
    "batchml.project": ["Project"],
    "batchml.scoring.runs": ["PredictionRun"],
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    home = _HOME_OF.get(name)
    if home is None:
        raise AttributeError(f"module 'batchml' has no attribute {name!r}")
    value = getattr(_importlib.import_module(home), name)
    globals()[name] = value  # once found, a plain module attribute
    return value


def __dir__() -> list[str]:
    loaded = [name for name, value in globals().items() if isinstance(value, type(_redact))]
    return sorted({*__all__, *loaded, "__version__"})


_redact.install_log_filter(__name__, list(__path__))
