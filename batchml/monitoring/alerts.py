"""Alerts on monitoring breaches, and the debounced retrain triggers they cause.

    monitoring/<model>/alerts/<000000001>.json      one alert (append-only event log)
    monitoring/<model>/retrains/<000000001>.json    one retrain trigger: which alerts, why (put-if-absent)
    monitoring/<model>/retrain_outcomes/<seq>.json  what the retrain produced: model version, run, published

An alert's id is a hash of what breached (kind + subject: the run, the labels version and group, the model
version), so a breach that persists is recorded once; the monitor still sees it as current.
"""

from __future__ import annotations

import getpass
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from batchml.config import MonitoringConfig
from batchml.errors import ConflictError
from batchml.models.registry import ModelVersion
from batchml.names import check_name
from batchml.store.eventlog import EventLog, now
from batchml.store.storage import Storage

KINDS = ("drift", "prediction_drift", "performance", "model_age", "shadow_divergence")


def _folder(model: str, kind: str) -> str:
    return f"monitoring/{check_name('model', model)}/{kind}"


def alert_id(model: str, kind: str, subject: str) -> str:
    """A stable id for one breach: the same breach seen again has the same id."""
    return "a-" + hashlib.sha256(f"{model}\0{kind}\0{subject}".encode()).hexdigest()[:12]


def breach(
    model: str,
    kind: str,
    subject: str,
    *,
    version: int | None,
    run_id: str | None,
    detail: str,
    value: float | None,
    threshold: float | None,
) -> dict[str, Any]:
    """An alert not yet recorded (no seq/at)."""
    return {
        "id": alert_id(model, kind, subject),
        "model": model,
        "version": version,
        "run_id": run_id,
        "kind": kind,
        "subject": subject,
        "detail": detail,
        "value": value,
        "threshold": threshold,
    }


def find_breaches(
    model: str,
    version: ModelVersion,
    run_id: str | None,
    config: MonitoringConfig,
    drift: dict[str, Any] | None = None,
    performance: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> list[dict[str, Any]]:
    """Breaches in a drift summary, a performance record and the model's age, as unrecorded alerts."""
    found = []
    if drift and drift.get("verdict") == "drifted":
        found.append(
            breach(
                model, "drift", f"run:{run_id}", version=version.version, run_id=run_id,
                detail=f"{drift.get('drifted_share', 0.0):.0%} of features drifted in run {run_id}",
                value=drift.get("drifted_share"), threshold=drift.get("max_drifted_share"),
            )
        )  # fmt: skip
    if drift and drift.get("prediction_drifted"):
        found.append(
            breach(
                model, "prediction_drift", f"run:{run_id}", version=version.version, run_id=run_id,
                detail=f"the prediction distribution of run {run_id} drifted", value=None, threshold=None,
            )
        )  # fmt: skip
    for row in (performance or {}).get("rows", []):
        if row["degraded"]:
            where = "overall" if row["slice"] == "all" else f"{row['slice']}={row['slice_value']}"
            subject = (
                f"labels:{performance['labels_version']}:v{row['model_version']}:{row['run_id']}:"  # type: ignore[index]
                f"{row['period']}:{row['slice']}={row['slice_value']}:{row['metric']}"
            )
            found.append(
                breach(
                    model, "performance", subject, version=row["model_version"], run_id=row["run_id"],
                    detail=f"{row['metric']} {row['value']:.4f} vs validation {row['validation_value']:.4f} "
                    f"({where}, period {row['period']}, {row['rows']} rows)",
                    value=row["value"], threshold=row["validation_value"],
                )
            )  # fmt: skip
    max_age = config.retrain.max_model_age_days
    created = version.card.get("created_at")
    if max_age is not None and created:
        age = ((at or datetime.now(UTC)) - datetime.fromisoformat(created)) / timedelta(days=1)
        if age > max_age:
            found.append(
                breach(
                    model, "model_age", f"version:{version.version}", version=version.version, run_id=run_id,
                    detail=f"{version.ref} is {age:.1f} days old", value=age, threshold=max_age,
                )
            )  # fmt: skip
    return found


def list_alerts(storage: Storage, model: str | None = None) -> list[dict[str, Any]]:
    """Recorded alerts of `model` (None: every model), oldest first."""
    models = [model] if model else storage.list_dir("monitoring")
    found = [a for m in models for a in EventLog(storage, _folder(m, "alerts")).read()]
    return sorted(found, key=lambda a: (a["at"], a["model"], a["seq"]))


def record(storage: Storage, alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append the alerts not recorded before (by id); return the newly recorded ones, as stored."""
    new = []
    for alert in alerts:
        known = {a["id"] for a in list_alerts(storage, alert["model"])}
        if alert["id"] not in known:
            new.append(EventLog(storage, _folder(alert["model"], "alerts")).append(alert))
    return new


def list_retrains(storage: Storage, model: str | None = None) -> list[dict[str, Any]]:
    """Retrain triggers (with their outcome, once recorded), oldest first."""
    models = [model] if model else storage.list_dir("monitoring")
    found = []
    for m in models:
        outcomes = {o["retrain_id"]: o for o in EventLog(storage, _folder(m, "retrain_outcomes")).read()}
        for trigger in EventLog(storage, _folder(m, "retrains")).read():
            found.append({**trigger, "outcome": outcomes.get(trigger["id"])})
    return sorted(found, key=lambda r: (r["at"], r["model"]))


def claim_retrain(
    storage: Storage,
    model: str,
    alerts: list[dict[str, Any]],
    debounce_hours: float,
    at: datetime | None = None,
) -> dict[str, Any] | None:
    """Record a retrain trigger for `alerts`, unless one was triggered within `debounce_hours` (None).

    The next sequence number is taken with put-if-absent: of two monitors racing, one wins, the other gets
    None. The trigger's id (`r-<model>-<seq>`) goes into every reason the retrain records.
    """
    folder = _folder(model, "retrains")
    moment = at or datetime.now(UTC)
    previous = EventLog(storage, folder).read()
    if previous:
        last = datetime.fromisoformat(previous[-1]["at"])
        if moment - last < timedelta(hours=debounce_hours):
            return None
    seq = len(previous) + 1
    trigger = {
        "id": f"r-{model}-{seq:06d}",
        "model": model,
        "seq": seq,
        "alert_ids": [a["id"] for a in alerts],
        "kinds": sorted({a["kind"] for a in alerts}),
        "reason": "; ".join(f"{a['id']} {a['kind']}: {a['detail']}" for a in alerts),
        "at": moment.isoformat() if at else now(),
        "by": getpass.getuser(),
    }
    try:
        storage.create_json(f"{folder}/{seq:09d}.json", trigger)
    except ConflictError:
        return None
    return trigger


def record_outcome(storage: Storage, trigger: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
    """Record what a retrain produced (written once per trigger)."""
    stored = {**outcome, "retrain_id": trigger["id"], "model": trigger["model"], "finished_at": now()}
    storage.create_json(f"{_folder(trigger['model'], 'retrain_outcomes')}/{trigger['seq']:09d}.json", stored)
    return stored


_TS = pa.timestamp("us", tz="UTC")
ALERTS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("model", pa.string()),
        ("seq", pa.int64()),
        ("version", pa.int64()),
        ("run_id", pa.string()),
        ("kind", pa.string()),
        ("detail", pa.string()),
        ("value", pa.float64()),
        ("threshold", pa.float64()),
        ("at", _TS),
    ]
)
RETRAINS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("model", pa.string()),
        ("seq", pa.int64()),
        ("alert_ids", pa.list_(pa.string())),
        ("reason", pa.string()),
        ("at", _TS),
        ("by", pa.string()),
        ("status", pa.string()),  # running (no outcome yet), promoted, unchanged, held_back, failed
        ("dataset_version", pa.string()),
        ("model_version", pa.int64()),
        ("run_id", pa.string()),
        ("published", pa.bool_()),
        ("detail", pa.string()),
        ("finished_at", _TS),
    ]
)


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def catalog_tables(storage: Storage) -> dict[str, pa.Table]:
    """The `alerts` and `retrains` catalog tables, from storage."""
    alerts = [{**a, "at": _ts(a["at"])} for a in list_alerts(storage)]
    retrains = []
    for r in list_retrains(storage):
        outcome = r["outcome"] or {"status": "running"}
        retrains.append(
            {
                **{k: outcome.get(k) for k in RETRAINS_SCHEMA.names},
                **{k: r[k] for k in ("id", "model", "seq", "alert_ids", "reason", "by")},
                "at": _ts(r["at"]),
                "finished_at": _ts(outcome.get("finished_at")),
            }
        )
    return {
        "alerts": pa.Table.from_pylist(alerts, schema=ALERTS_SCHEMA),
        "retrains": pa.Table.from_pylist(retrains, schema=RETRAINS_SCHEMA),
    }
