"""Drift of a prediction run against its model's training reference, recorded once per run.

    monitoring/<model>/<run_id>/drift.json          the run's drift result; creating it records it (immutable)
    monitoring/<model>/reference/v<version>.json    a reference profile computed for a card without one

The current side is the run's scoring input (the dataset version in its manifest, streamed with only the
model's feature columns) and its predictions (the run's Parquet files); the reference is the card's profile
(`card["profile"]`: training rows for the features, held-out predictions). Statistics are in
`batchml.drift_stats`. A feature drifts when any of its statistics exceeds its threshold; the run's verdict is
"drifted" when the share of drifted features exceeds `max_drifted_share`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchml import datasets
from batchml.config import DriftConfig
from batchml.drift_stats import Counter, ProfileBuilder, counter_for, counters_for, fold_batch, profile_stream
from batchml.errors import ConflictError, DataError
from batchml.eventlog import now
from batchml.features import encode
from batchml.names import check_name
from batchml.profiles import numeric_profile, prediction_values
from batchml.registry import ModelVersion, RegistryReader
from batchml.scoring import get_run
from batchml.storage import Storage

log = logging.getLogger(__name__)

BATCH_ROWS = 131_072
PREDICTION = "prediction"
#: Which DriftConfig field (or per-feature override key) sets each statistic's threshold.
THRESHOLD_KEYS: dict[str, str] = {"psi": "psi", "ks_binned": "ks", "js": "js"}


@dataclass(frozen=True)
class DriftResult:
    """Per-feature drift rows and the run's summary (see the module docstring for the verdict)."""

    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    reused: bool = field(default=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in `drift.json`."""
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
        "computed_at": at,
    }
    return DriftResult(metrics=metrics, summary=summary)


def reference_profile(storage: Storage, model: ModelVersion) -> dict[str, Any]:
    """The card's profile, or one computed (once, then stored) from the card's dataset version."""
    profile = model.card.get("profile")
    if profile and profile.get("features"):
        return dict(profile)
    path = f"monitoring/{model.name}/reference/v{model.version:06d}.json"
    if storage.exists(path):
        return dict(storage.read_json(path))
    ref = model.card.get("dataset_version")
    if not ref:
        raise DataError(
            f"model {model.ref} has no training profile in its card and no dataset version to compute one "
            "from: register it with dataset='NAME@VERSION' (or train it with batchml) to monitor drift"
        )
    version = datasets.get_version(storage, ref)
    features = [f for f in model.features if f.name in version.columns]
    numeric = [f for f in features if f.kind == "numeric"]
    builder = ProfileBuilder([f.name for f in numeric], [f.name for f in features if f.kind != "numeric"])
    for batch in datasets.iter_batches(storage, version, [f.name for f in features], BATCH_ROWS):
        builder.add(encode(batch, numeric), {f.name: batch.column(f.name) for f in features})
    profile = {"rows": builder.rows, "split": "all", "source": ref, "features": builder.profiles()}
    if len(numeric) == len(model.features):  # the sample holds every model input: score it for a reference
        booster = RegistryReader(storage).load_booster(model)
        raw = np.asarray(booster.predict(builder.sample()))
        profile["predictions"] = {"split": "sample", **numeric_profile(prediction_values(raw))}
    with contextlib.suppress(ConflictError):  # a concurrent monitor stored the same derivation first
        storage.create_json(path, profile)
    return profile


def compute_run_drift(
    storage: Storage, model: str, run_id: str, config: DriftConfig | None = None
) -> DriftResult:
    """Drift of run `run_id` of `model`: its input features and predictions against the training profile."""
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
    return _result(counters, prediction, config, context)


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
    return f"monitoring/{check_name('model', model)}/{run_id}/drift.json"


def load_drift(storage: Storage, model: str, run_id: str) -> DriftResult | None:
    """The recorded drift of a run, or None if it was never recorded."""
    path = _path(model, run_id)
    return DriftResult.from_dict(storage.read_json(path), reused=True) if storage.exists(path) else None


def record_drift(storage: Storage, result: DriftResult) -> str:
    """Write `result` to `monitoring/<model>/<run_id>/drift.json` once; a second write keeps the first."""
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
            if storage.exists(path := f"monitoring/{model}/{run_id}/drift.json"):
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
