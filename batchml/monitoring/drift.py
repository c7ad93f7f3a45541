"""Drift of a prediction run against its model's training reference, recorded once per run.

    monitoring/<model>/<run_id>/drift-all-rows.json    the run's drift; creating it records it (immutable)

The current side is the run's scoring input (the dataset version in its manifest, streamed with only the
model's feature columns) and its predictions (the run's Parquet files). The reference is like for like
(`batchml.monitoring.drift_reference`): every row of the model's training dataset version and the model's
predictions on them, so scoring the training data again drifts nothing. Statistics are in
`batchml.monitoring.drift_stats`. A feature drifts when any of its statistics exceeds its threshold; the run's
verdict is "drifted" when the share of drifted features exceeds `max_drifted_share`. This verdict is the one
alerts and retraining act on.

Records made before the reference was like for like (`drift.json`, against the held-out predictions) are
not read: their verdicts may be false alarms, so a run's drift is computed again against the new reference.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchml.config import DriftConfig
from batchml.data import datasets
from batchml.errors import ConflictError, DataError
from batchml.models.registry import RegistryReader
from batchml.monitoring.drift_reference import reference_profile
from batchml.monitoring.drift_stats import Counter, counter_for, counters_for, fold_batch, profile_stream
from batchml.names import check_name
from batchml.scoring.runs import get_run
from batchml.store.eventlog import now
from batchml.store.storage import Storage

log = logging.getLogger(__name__)

BATCH_ROWS = 131_072
PREDICTION = "prediction"
#: The name of a run's drift record; it names the reference, so records against an older one are not reused.
RECORD = "drift-all-rows.json"
#: Which DriftConfig field (or per-feature override key) sets each statistic's threshold.
THRESHOLD_KEYS: dict[str, str] = {"psi": "psi", "ks_binned": "ks", "js": "js"}


@dataclass(frozen=True)
class DriftResult:
    """Per-feature drift rows and the run's summary (see the module docstring for the verdict)."""

    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    reused: bool = field(default=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in the run's drift record."""
        return {"kind": "drift", "summary": self.summary, "metrics": self.metrics}

    @classmethod
    def from_dict(cls, data: dict[str, Any], reused: bool = False) -> DriftResult:
        """Parse the stored JSON form."""
        return cls(metrics=list(data["metrics"]), summary=dict(data["summary"]), reused=reused)


def threshold(config: DriftConfig, feature: str, statistic: str) -> float:
    """The threshold of `statistic` for `feature`: its override in `config.features`, else the default."""
    key = THRESHOLD_KEYS[statistic]
    overrides = config.features.get(feature, {})
    return float(overrides.get(statistic, overrides.get(key, getattr(config, key))))


def _rows(
    counters: dict[str, Counter], config: DriftConfig, context: dict[str, Any], at: str
) -> list[dict[str, Any]]:
    rows = []
    for name, counter in counters.items():
        for statistic, value in counter.statistics().items():
            limit = threshold(config, name, statistic)
            rows.append(
                {
                    **context,
                    "feature": name,
                    "statistic": statistic,
                    "value": value,
                    "threshold": limit,
                    "drifted": value > limit,
                    "computed_at": at,
                }
            )
    return rows


def _result(
    counters: dict[str, Counter],
    prediction: Counter | None,
    config: DriftConfig,
    context: dict[str, Any],
    reference: dict[str, Any] | None = None,
) -> DriftResult:
    at = now()
    metrics = _rows(counters, config, context, at)
    if prediction is not None:
        metrics += _rows({PREDICTION: prediction}, config, context, at)
    drifted = sorted({r["feature"] for r in metrics if r["drifted"] and r["feature"] in counters})
    share = len(drifted) / len(counters) if counters else 0.0
    summary = {
        **context,
        "features": len(counters),
        "drifted_features": len(drifted),
        "drifted_columns": drifted,
        "drifted_share": share,
        "max_drifted_share": config.max_drifted_share,
        "prediction_drifted": (
            any(r["drifted"] for r in metrics if r["feature"] == PREDICTION) if prediction else None
        ),
        "verdict": "drifted" if share > config.max_drifted_share else "stable",
        "reference": reference,
        "computed_at": at,
    }
    return DriftResult(metrics=metrics, summary=summary)


def compute_run_drift(
    storage: Storage, model: str, run_id: str, config: DriftConfig | None = None
) -> DriftResult:
    """Drift of run `run_id` of `model`: its input features and predictions against the model's reference."""
    config = config or DriftConfig()
    run = get_run(storage, check_name("model", model), run_id)
    version = RegistryReader(storage).get(model, int(run.manifest["model_version"]))
    profile = reference_profile(storage, version)
    dataset = datasets.get_version(storage, str(run.manifest["dataset_version"]))
    features = [f for f in version.features if f.name in dataset.columns]
    counters = counters_for(profile.get("features", {}), [f.name for f in features])
    for batch in datasets.iter_batches(storage, dataset, list(counters), BATCH_ROWS):
        fold_batch(counters, batch, features)
    prediction = counter_for({"kind": "numeric", **(profile.get("predictions") or {})})
    if prediction is not None:
        for entry in run.files:
            storage.verify(entry)
            with storage.open_read(entry.path) as f:
                for batch in pq.ParquetFile(f).iter_batches(BATCH_ROWS, columns=[PREDICTION]):
                    values = batch.column(0).to_numpy(zero_copy_only=False)
                    prediction.add(np.asarray(values, dtype=np.float64))
    context = {"model": model, "version": version.version, "run_id": run_id}
    reference = {"dataset_version": profile.get("dataset_version"), "rows": profile.get("rows")}
    return _result(counters, prediction, config, context, reference)


def drift_between(
    reference: Iterable[pa.RecordBatch],
    current: Iterable[pa.RecordBatch],
    columns: list[str],
    config: DriftConfig | None = None,
    *,
    categorical: Iterable[str] = (),
) -> DriftResult:
    """Drift of one stream of batches against another, without a model: the reference is profiled while
    streaming (as training profiles are), then the current side is counted into its bins. Numeric, boolean
    and temporal columns are numeric unless named in `categorical`; the others are categorical."""
    config = config or DriftConfig()
    batches = iter(reference)
    first = next(batches, None)
    if first is None:
        raise DataError("the reference has no batches: drift needs reference rows")
    features, profiles = profile_stream(itertools.chain([first], batches), columns, set(categorical))
    counters = counters_for(profiles, columns)
    for batch in current:
        fold_batch(counters, batch, features)
    return _result(counters, None, config, {"model": None, "version": None, "run_id": None})


def _path(model: str, run_id: str) -> str:
    return f"monitoring/{check_name('model', model)}/{run_id}/{RECORD}"


def load_drift(storage: Storage, model: str, run_id: str) -> DriftResult | None:
    """The recorded drift of a run, or None if it was never recorded."""
    path = _path(model, run_id)
    return DriftResult.from_dict(storage.read_json(path), reused=True) if storage.exists(path) else None


def record_drift(storage: Storage, result: DriftResult) -> str:
    """Write `result` to the run's drift record once; a second write keeps the first."""
    path = _path(str(result.summary["model"]), str(result.summary["run_id"]))
    try:
        storage.create_json(path, result.to_dict())
    except ConflictError:
        log.info("drift of run %s is already recorded: keeping %s", result.summary["run_id"], path)
    return path


def monitor_run(storage: Storage, model: str, run_id: str, config: DriftConfig | None = None) -> DriftResult:
    """The run's recorded drift, computing and recording it first if needed (`reused` tells which)."""
    stored = load_drift(storage, model, run_id)
    if stored is not None:
        return stored
    result = compute_run_drift(storage, model, run_id, config)
    record_drift(storage, result)
    stored = load_drift(storage, model, run_id)
    if stored is None or stored.summary["computed_at"] == result.summary["computed_at"]:
        return result
    return stored  # another monitor recorded it first: theirs is the record


def list_drift(storage: Storage) -> list[DriftResult]:
    """Every recorded run drift in storage, by model then computation time."""
    found = []
    for model in storage.list_dir("monitoring"):
        for run_id in storage.list_dir(f"monitoring/{model}"):
            if storage.exists(path := f"monitoring/{model}/{run_id}/{RECORD}"):
                found.append(DriftResult.from_dict(storage.read_json(path), reused=True))
    return sorted(found, key=lambda r: (r.summary["model"], r.summary["computed_at"]))


_TS = pa.timestamp("us", tz="UTC")
SCHEMAS: dict[str, pa.Schema] = {
    "drift_metrics": pa.schema(
        [
            ("model", pa.string()),
            ("version", pa.int64()),
            ("run_id", pa.string()),
            ("feature", pa.string()),
            ("statistic", pa.string()),
            ("value", pa.float64()),
            ("threshold", pa.float64()),
            ("drifted", pa.bool_()),
            ("computed_at", _TS),
        ]
    ),
    "drift_runs": pa.schema(
        [
            ("model", pa.string()),
            ("version", pa.int64()),
            ("run_id", pa.string()),
            ("features", pa.int64()),
            ("drifted_features", pa.int64()),
            ("drifted_share", pa.float64()),
            ("max_drifted_share", pa.float64()),
            ("prediction_drifted", pa.bool_()),
            ("verdict", pa.string()),
            ("drifted_columns", pa.list_(pa.string())),
            ("computed_at", _TS),
        ]
    ),
}


def catalog_tables(storage: Storage) -> dict[str, pa.Table]:
    """The serving DB's `drift_metrics` (one row per run, feature and statistic) and `drift_runs` tables."""
    results = list_drift(storage)

    def stamped(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "computed_at": datetime.fromisoformat(row["computed_at"])}

    metrics = [stamped(row) for r in results for row in r.metrics]
    runs = [stamped(r.summary) for r in results]
    return {
        "drift_metrics": pa.Table.from_pylist(metrics, schema=SCHEMAS["drift_metrics"]),
        "drift_runs": pa.Table.from_pylist(runs, schema=SCHEMAS["drift_runs"]),
    }
