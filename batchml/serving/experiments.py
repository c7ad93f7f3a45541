"""Named A/B experiments: variants (model versions) serving shares of the entities, chosen by a salted hash.

    releases/<model>/experiments/<000000001>.json    events: start, arms, stop, conclude (append-only)

A `start` event is an experiment version: its name, variants (name, the version or alias asked for, the
version it resolved to, share), control variant, salt, decision metric and goal, and the minimum labelled
rows per arm before a verdict. It is immutable: changing variants or shares appends a new `start` of the
same name with the next `experiment_version` (`--revise`). An entity's variant is where its bucket (the
canary's: first 32 bits of md5(`salt:entity_id`) over 2^32, equal in Python and DuckDB) falls among the
variants' cumulative shares, so it stays in its arm across runs and dataset versions.

Every champion score run scores each variant's version from the same read and appends an `arms` event (once
per experiment version and champion run) naming each variant's run. The `predictions` view serves the
running experiment's arms beside the published run while an `arms` event of the running version names that
run: one row per entity, from its variant's run (from the published run as `control` if that run lacks it).
At most one experiment runs per model, and never beside a canary (`releases` refuses to start either).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from batchml.errors import BatchMLError
from batchml.models.registry import ModelVersion, RegistryReader
from batchml.names import check_name
from batchml.scoring.runs import PredictionRun, get_run
from batchml.store.eventlog import EventLog, append_decided
from batchml.store.storage import Storage

log = logging.getLogger(__name__)
ENDS = ("stop", "conclude")


def event_log(storage: Storage, model: str) -> EventLog:
    """The experiments log of `model`."""
    return EventLog(storage, f"releases/{check_name('model', model)}/experiments")


def subject(model: str) -> tuple[str, str]:
    """What a conflict message calls the log, and the command that shows it."""
    return f"the experiments log of model {model!r}", f"batchml experiments show {model}"


def bounds(variants: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Each variant's bucket range [low, high): cumulative shares in the order given, the last ending at 1."""
    out, low = [], 0.0
    for i, v in enumerate(variants):
        high = 1.0 if i == len(variants) - 1 else low + float(v["share"])
        out.append((low, high))
        low = high
    return out


def running(events: list[dict[str, Any]], until: datetime | None = None) -> dict[str, Any] | None:
    """The `start` event of the experiment running after `events` (up to `until`), or None."""
    current = None
    for e in events:
        if until is not None and datetime.fromisoformat(e["at"]) > until:
            break
        if e["action"] == "start":
            current = e
        elif e["action"] in ENDS and current is not None and e["experiment"] == current["experiment"]:
            current = None
    return current


def starts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every experiment version (its `start` event), oldest first."""
    return [e for e in events if e["action"] == "start"]


def arm_versions(registry: RegistryReader, model: str, served: ModelVersion) -> list[ModelVersion]:
    """The versions of the running experiment's variants to score beside `served` (not `served` itself)."""
    started = running(event_log(registry.storage, model).read())
    wanted = [] if started is None else [int(v["model_version"]) for v in started["variants"]]
    return [registry.get(model, v) for v in dict.fromkeys(wanted) if v != served.version]


def record_arms(
    storage: Storage, model: str, served: PredictionRun, results: list[Any], actor: str | None = None
) -> dict[str, Any]:
    """Append the `arms` event of the running experiment for champion run `served` ({}: none running); an
    event already made for this experiment version and run is returned, nothing appended. `results`: the
    runs scored with it (an error in place of a version that failed: its entities are served control)."""
    runs = {int(r.manifest["model_version"]): r for r in results if isinstance(r, PredictionRun)}
    log_ = event_log(storage, model)
    found = log_.read()
    started = running(found)
    if started is None:
        return {}
    key = (started["experiment"], started["experiment_version"], served.run_id)
    for e in reversed(found):
        if e["action"] == "arms" and (e["experiment"], e["experiment_version"], e["control_run_id"]) == key:
            return e
    by_version = {**runs, int(served.manifest["model_version"]): served}
    arms = {v["name"]: by_version[int(v["model_version"])].run_id for v in started["variants"]
            if int(v["model_version"]) in by_version}  # fmt: skip
    event = {"action": "arms", "experiment": key[0], "experiment_version": key[1], "control_run_id": key[2]}
    event |= {"dataset_version": served.manifest["dataset_version"], "runs": arms}
    return append_decided(log_, found, event, actor, None, subject(model))


@dataclass(frozen=True)
class Arm:
    """One variant being served: its name, run (None: not scored) and bucket range."""

    variant: str
    run: PredictionRun | None
    low: float
    high: float


@dataclass(frozen=True)
class ServedExperiment:
    """The experiment version served beside a published run, and its arms."""

    experiment: str
    version: int
    salt: str
    arms: list[Arm]


def serving(
    storage: Storage,
    model: str,
    control_run_id: str | None,
    at: datetime | None = None,
    *,
    log_events: list[dict[str, Any]] | None = None,
) -> ServedExperiment | None:
    """The experiment served beside published run `control_run_id` now (or at time `at`), if any.
    `log_events`: the model's experiments log, already read (a replay over many times reads it once)."""
    if control_run_id is None:
        return None
    read = event_log(storage, model).read() if log_events is None else log_events
    events = [e for e in read if at is None or datetime.fromisoformat(e["at"]) <= at]
    started = running(events)
    if started is None:
        return None
    key = (started["experiment"], started["experiment_version"], control_run_id)
    scored = [e for e in events if e["action"] == "arms"]
    arms = next(
        (
            e
            for e in reversed(scored)
            if (e["experiment"], e["experiment_version"], e["control_run_id"]) == key
        ),
        None,
    )
    if arms is None:
        return None  # not scored beside this run yet: every entity is served the published run
    served = []
    for variant, (low, high) in zip(started["variants"], bounds(started["variants"]), strict=True):
        run_id = arms["runs"].get(variant["name"])
        try:
            run = get_run(storage, model, run_id) if run_id else None
        except BatchMLError as exc:  # a run collected since: its entities are served control
            log.warning("experiment %s arm %s: %s", started["experiment"], variant["name"], exc)
            run = None
        served.append(Arm(variant["name"], run, low, high))
    return ServedExperiment(
        started["experiment"], int(started["experiment_version"]), started["salt"], served
    )


EXPERIMENTS_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("experiment", pa.string()),
        ("experiment_version", pa.int64()),
        ("variant", pa.string()),
        ("is_control", pa.bool_()),
        ("requested", pa.string()),  # the version or alias given at start
        ("model_version", pa.int64()),
        ("share", pa.float64()),
        ("bucket_from", pa.float64()),
        ("bucket_to", pa.float64()),
        ("salt", pa.string()),
        ("metric", pa.string()),
        ("goal", pa.string()),
        ("min_samples", pa.int64()),
        ("status", pa.string()),  # running, stopped, concluded, revised (a newer version replaced it)
        ("winner", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("ended_at", pa.timestamp("us", tz="UTC")),
        ("reason", pa.string()),
        ("end_reason", pa.string()),
    ]
)


def status(events: list[dict[str, Any]], start: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """What became of experiment version `start`: (running|stopped|concluded|revised, the ending event)."""
    for e in events:
        if int(e["seq"]) <= int(start["seq"]) or e.get("experiment") != start["experiment"]:
            continue
        if e["action"] in ENDS:
            return ("stopped" if e["action"] == "stop" else "concluded"), e
        if e["action"] == "start":
            return "revised", e
    return "running", None


def catalog_tables(storage: Storage) -> dict[str, pa.Table]:
    """The `experiments` catalog table: one row per experiment version x variant."""
    rows = []
    for model in storage.list_dir("releases"):
        events = event_log(storage, model).read()
        for start in starts(events):
            state, end = status(events, start)
            for v, (low, high) in zip(start["variants"], bounds(start["variants"]), strict=True):
                rows.append(
                    {
                        "model": model, "experiment": start["experiment"],
                        "experiment_version": start["experiment_version"], "variant": v["name"],
                        "is_control": v["name"] == start["control"], "requested": str(v["requested"]),
                        "model_version": v["model_version"], "share": v["share"], "bucket_from": low,
                        "bucket_to": high, "salt": start["salt"], "metric": start["metric"],
                        "goal": start["goal"], "min_samples": start["min_samples"], "status": state,
                        "winner": (end or {}).get("winner"),
                        "started_at": datetime.fromisoformat(start["at"]),
                        "ended_at": datetime.fromisoformat(end["at"]) if end else None,
                        "reason": start.get("reason"), "end_reason": (end or {}).get("reason"),
                    }
                )  # fmt: skip
    return {"experiments": pa.Table.from_pylist(rows, schema=EXPERIMENTS_SCHEMA)}


#: entity → variant of every experiment version, over the entities each model serves now (see README).
ASSIGNMENTS_VIEW = """CREATE VIEW experiment_assignments AS
    SELECT e.model, e.experiment, e.experiment_version, p.entity_id, e.variant, e.model_version, e.status
    FROM (SELECT DISTINCT model, entity_id FROM predictions) p
    JOIN experiments e ON e.model = p.model
    AND CAST(('0x' || substr(md5(e.salt || ':' || p.entity_id), 1, 8)) AS UBIGINT) / 4294967296.0
        >= e.bucket_from
    AND CAST(('0x' || substr(md5(e.salt || ':' || p.entity_id), 1, 8)) AS UBIGINT) / 4294967296.0
        < e.bucket_to"""
