"""Shadow scoring: versions scored beside the served one on every run, compared with it, never served.

    monitoring/<model>/shadow/<comparison id>.json    one comparison (written once, put-if-absent)

A shadow run is an ordinary immutable run (same content key as scoring that version alone), made from the
same read of the same dataset version as the served run (`batchml.scoring.together`, or per partition
`partitions.score_partition_together`). Nothing publishes it.
Each is compared with the served run (`run_compare`); the record's id is a hash of both run ids, the top
share and the limits, so comparing again returns the record, and changed limits judge anew. A comparison
beyond a limit is an alert of kind `shadow_divergence` (recorded once per comparison; it never retrains).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from batchml.config import DivergenceLimits, ShadowConfig
from batchml.errors import ConflictError
from batchml.models.registry import ModelVersion, RegistryReader
from batchml.monitoring import alerts
from batchml.monitoring.run_compare import compare_runs, fits_in_memory
from batchml.names import check_name
from batchml.scoring.runs import PredictionRun
from batchml.store.eventlog import now
from batchml.store.storage import Storage

log = logging.getLogger(__name__)
ALERT_KIND = "shadow_divergence"
#: The alias whose scoring brings the shadow versions along (the one the score flow publishes).
SERVED_ALIAS = "champion"
#: Comparison field each limit applies to, and whether it is a cap (max) or a floor (min).
_LIMITS = {
    "max_psi": "psi",
    "max_ks": "ks_statistic",
    "max_flip_rate": "flip_rate",
    "min_top_k_overlap": "top_k_overlap",
    "max_mean_abs_delta": "mean_abs_delta",
}


@dataclass(frozen=True)
class ShadowScoring:
    """A served run scored with its shadows: their runs, comparisons, why any failed, the canary's step."""

    served: PredictionRun
    shadows: list[PredictionRun]
    comparisons: list[dict[str, Any]]
    failed: dict[int, str]  # shadow (or canary) version -> the error that stopped it
    canary: dict[str, Any] = field(default_factory=dict)  # the canary event of this run ({}: no canary)
    experiment: dict[str, Any] = field(default_factory=dict)  # the experiment's `arms` event ({}: none)


def shadow_versions(
    registry: RegistryReader, model: str, config: ShadowConfig, served: ModelVersion
) -> list[ModelVersion]:
    """The versions to score in shadow now: holders of `config.aliases` and `config.versions`, each once,
    never the served version itself. An alias nobody holds is skipped (logged)."""
    holders = registry.aliases(model)
    wanted: list[int] = []
    for alias in config.aliases:
        if alias in holders:
            wanted.append(holders[alias])
        else:
            log.info("shadow alias %r of %s is not held by any version: skipped", alias, model)
    wanted += config.versions
    unique = [v for v in dict.fromkeys(wanted) if v != served.version]
    return [registry.get(model, v) for v in unique]


def divergences(comparison: dict[str, Any], limits: dict[str, float]) -> list[str]:
    """What lies beyond a limit, one phrase each (`psi 0.31 > max_psi 0.2`); empty when within all."""
    found = []
    for limit, threshold in sorted(limits.items()):
        value = comparison.get(_LIMITS[limit])
        if value is None:
            continue
        beyond = value < threshold if limit.startswith("min_") else value > threshold
        if beyond:
            found.append(f"{_LIMITS[limit]} {value:.4g} {'<' if limit.startswith('min_') else '>'} "
                         f"{limit} {threshold:g}")  # fmt: skip
    return found


def comparison_id(served_run: str, shadow_run: str, top_share: float, limits: dict[str, float]) -> str:
    """The id of a comparison: everything that decides its values and its verdict."""
    key = json.dumps([served_run, shadow_run, top_share, sorted(limits.items())])
    return "s-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _folder(model: str) -> str:
    return f"monitoring/{check_name('model', model)}/shadow"


def compare_shadow(
    storage: Storage,
    served: PredictionRun,
    shadow: PredictionRun,
    config: DivergenceLimits,
    served_rows: Callable[[], pa.Table] | None = None,
) -> dict[str, Any]:
    """Compare `shadow` with `served` and record it, or return the record made before; a divergence
    beyond the limits is recorded as an alert too. `served_rows`: gives `served` as `run_compare.read_run`
    does (read once for several shadows)."""
    if served.manifest["dataset_version"] != shadow.manifest["dataset_version"]:
        raise ValueError(
            f"shadow run {shadow.run_id} scored {shadow.manifest['dataset_version']}, the served run "
            f"{served.run_id} {served.manifest['dataset_version']}: compare runs of one dataset version"
        )
    limits = config.limits()
    ident = comparison_id(served.run_id, shadow.run_id, config.top_share, limits)
    path = f"{_folder(served.model)}/{ident}.json"
    if storage.exists(path):
        return storage.read_json(path)
    # Large runs are compared from their files (bounded memory): the served run is then not read whole.
    old_table = served_rows() if served_rows is not None and fits_in_memory(shadow, served) else None
    report = compare_runs(storage, shadow, served, top_share=config.top_share, old_table=old_table)
    beyond = divergences(report, limits)
    record = {
        "id": ident,
        "model": served.model,
        "dataset_version": served.manifest["dataset_version"],
        "served_run_id": served.run_id,
        "served_version": served.manifest["model_version"],
        "shadow_run_id": shadow.run_id,
        "shadow_version": shadow.manifest["model_version"],
        "served_rows": report["old"]["rows"],
        "shadow_rows": report["new"]["rows"],
        **{k: report[k] for k in ("common_entities", "psi", "ks_statistic", "flip_rate", "mean_abs_delta")},
        **{k: report[k] for k in ("top_k", "top_k_overlap")},
        "top_share": config.top_share,
        "limits": limits,
        "diverged": bool(beyond),
        "divergences": beyond,
        "computed_at": now(),
    }
    try:
        storage.create_json(path, record)
    except ConflictError:  # a concurrent comparison of the same runs won: keep its record
        record = storage.read_json(path)
    if record["diverged"]:
        alerts.record(storage, [divergence_alert(record)])
    return record


def divergence_alert(record: dict[str, Any]) -> dict[str, Any]:
    """The alert (not yet recorded) for a comparison beyond its limits."""
    return alerts.breach(
        record["model"],
        ALERT_KIND,
        f"shadow:{record['id']}",
        version=record["shadow_version"],
        run_id=record["shadow_run_id"],
        detail=f"shadow v{record['shadow_version']} (run {record['shadow_run_id']}) diverges from served "
        f"v{record['served_version']} (run {record['served_run_id']}) on {record['dataset_version']}: "
        + "; ".join(record["divergences"]),
        value=None,
        threshold=None,
    )


def list_comparisons(storage: Storage, model: str | None = None) -> list[dict[str, Any]]:
    """Recorded comparisons of `model` (None: every model), oldest first."""
    models = [model] if model else storage.list_dir("monitoring")
    found = [
        storage.read_json(f"{_folder(m)}/{name}")
        for m in models
        for name in storage.list_dir(_folder(m))
        if name.endswith(".json")
    ]
    return sorted(found, key=lambda r: (r["computed_at"], r["id"]))


SHADOW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("model", pa.string()),
        ("dataset_version", pa.string()),
        ("served_run_id", pa.string()),
        ("served_version", pa.int64()),
        ("shadow_run_id", pa.string()),
        ("shadow_version", pa.int64()),
        ("served_rows", pa.int64()),
        ("shadow_rows", pa.int64()),
        ("common_entities", pa.int64()),
        ("psi", pa.float64()),
        ("ks_statistic", pa.float64()),
        ("flip_rate", pa.float64()),
        ("mean_abs_delta", pa.float64()),
        ("top_k", pa.int64()),
        ("top_k_overlap", pa.float64()),
        ("top_share", pa.float64()),
        ("limits_json", pa.string()),
        ("diverged", pa.bool_()),
        ("divergences", pa.list_(pa.string())),
        ("computed_at", pa.timestamp("us", tz="UTC")),
    ]
)


def catalog_tables(storage: Storage) -> dict[str, pa.Table]:
    """The `shadow_comparisons` catalog table, from storage."""
    rows = [
        {
            **r,
            "limits_json": json.dumps(r["limits"], sort_keys=True),
            "computed_at": datetime.fromisoformat(r["computed_at"]),
        }
        for r in list_comparisons(storage)
    ]
    return {"shadow_comparisons": pa.Table.from_pylist(rows, schema=SHADOW_SCHEMA)}
