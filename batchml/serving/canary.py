"""Canary releases: the holder of the canary alias serves a share of the entities, ramped run by run.

    releases/<model>/canary/<000000001>.json     canary events: advance (a step of the ramp) / rollback

Which entities the canary serves is a stable salted hash of the entity id: `bucket(salt, id)` in [0, 1)
(the first 32 bits of md5(salt:id)); an entity is in the canary arm when its bucket is below the share, so
it stays in its arm across runs and dataset versions, and a larger share only adds entities.

Each score run of the champion also scores the canary version from the same read (`batchml.arms`), and
`step` decides: a breach (the canary run diverging from the control run beyond the limits, or a recorded
drift of one of its runs) withdraws the alias (an alias event `rollback` with the reason, `automatic`) and
records a rollback; a healthy new run advances one step (`shares[0]` first, the last share held). A run
already stepped on is not stepped again, so re-running is a no-op. Steps are counted per holding of the
alias (`alias_seq`: the alias event that gave the canary its version), so a re-promoted version starts the
ramp again. Every append is a compare-and-append on the log as read.

The `predictions` view serves the newest step on the published run (a step on a run scored but not yet
published leaves it standing) while no rollback came after it and the alias still holds its version by the
same event. Each entity of the control run gets exactly one row:
from the canary run if its bucket is below the share and the canary scored it, else from the control run.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from batchml.config import CanaryConfig
from batchml.models.registry import Registry, RegistryReader
from batchml.monitoring.drift import load_drift
from batchml.monitoring.shadow import compare_shadow
from batchml.names import check_name
from batchml.scoring.runs import PredictionRun, get_run
from batchml.store.eventlog import EventLog, append_decided, apply_event
from batchml.store.storage import Storage

log = logging.getLogger(__name__)
CONTROL = "control"


def bucket(salt: str, entity_id: str) -> float:
    """The entity's place in [0, 1): the canary serves it while its share is above this."""
    return int(hashlib.md5(f"{salt}:{entity_id}".encode()).hexdigest()[:8], 16) / 2**32


def bucket_sql(salt: str, column: str = "entity_id") -> str:
    """`bucket` as a SQL expression over the VARCHAR `column` (DuckDB 1.4 and newer)."""
    quoted = "'" + f"{salt}:".replace("'", "''") + "'"
    return salted_bucket_sql(quoted, column)


def salted_bucket_sql(salted: str, column: str = "entity_id") -> str:
    """`bucket` as SQL, the salt and its colon given as the SQL expression `salted` (e.g. a column's
    `salt || ':'`: history readers keep each served arm's salt in a table)."""
    return f"(CAST(('0x' || substr(md5({salted} || {column}), 1, 8)) AS UBIGINT) / 4294967296.0)"


def salt_of(model: str, config: CanaryConfig) -> str:
    """The configured salt, else the model's name."""
    return config.salt if config.salt is not None else model


def _log(storage: Storage, model: str) -> EventLog:
    return EventLog(storage, f"releases/{check_name('model', model)}/canary")


def events(storage: Storage, model: str) -> list[dict[str, Any]]:
    """Every canary event of `model`, oldest first."""
    return _log(storage, model).read()


def holding(
    registry: RegistryReader,
    model: str,
    alias: str,
    until: datetime | None = None,
    *,
    alias_events: list[dict[str, Any]] | None = None,
) -> tuple[int, int] | None:
    """(version, seq of the alias event that gave it) of the holder of `alias` (at `until`), or None.
    `alias_events`: the model's alias log, already read (a replay over many times reads it once)."""
    stacks: dict[str, list[Any]] = {}
    given: dict[tuple[str, Any], int] = {}
    for event in registry.events(model) if alias_events is None else alias_events:
        if until is not None and datetime.fromisoformat(event["at"]) > until:
            break
        stack = apply_event(stacks, event, group="alias", value="to_version")
        if event["action"] != "rollback" and event["alias"] == alias:
            given[(alias, event["to_version"])] = int(event["seq"])
    stack = stacks.get(alias) or []
    if not stack or stack[-1] is None:
        return None
    return int(stack[-1]), given.get((alias, stack[-1]), 0)


@dataclass(frozen=True)
class ServedCanary:
    """A canary step being served: its run, share, salt and the variant name its rows carry."""

    run: PredictionRun
    share: float
    salt: str
    variant: str
    alias_seq: int = 0  # the alias event that gave the canary its version (a holding)


def serving(
    storage: Storage,
    model: str,
    control_run_id: str | None,
    at: datetime | None = None,
    *,
    logs: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None,
) -> ServedCanary | None:
    """The canary step served beside `control_run_id` (the published run) now (or at time `at`), if any.
    `logs`: (canary events, alias events) already read, for a replay over many times."""
    if control_run_id is None:
        return None
    steps, alias_events = logs if logs is not None else (events(storage, model), None)
    found = [e for e in steps if at is None or datetime.fromisoformat(e["at"]) <= at]
    # The newest step on the published run; a newer step on a run not published yet (scored, publish to
    # come) leaves it standing, a rollback after it ends it.
    for step in reversed(found):
        if step["action"] == "rollback":
            return None
        if step["control_run_id"] == control_run_id:
            break
    else:
        return None
    held = holding(RegistryReader(storage), model, step["alias"], at, alias_events=alias_events)
    if held != (step["version"], step["alias_seq"]):
        return None  # withdrawn, or re-promoted since: this step no longer stands
    run = get_run(storage, model, step["run_id"])
    return ServedCanary(run, step["share"], step["salt"], step["alias"], step["alias_seq"])


def breaches(storage: Storage, comparison: dict[str, Any], runs: list[str], model: str) -> list[str]:
    """Why the canary must roll back: divergence from control, or drift recorded for one of its runs."""
    found = []
    if comparison["diverged"]:
        found.append(f"diverges from control: {'; '.join(comparison['divergences'])}")
    for run_id in runs:
        drift = load_drift(storage, model, run_id)
        summary = drift.summary if drift is not None else {}
        if summary.get("verdict") == "drifted" or summary.get("prediction_drifted"):
            found.append(f"drift recorded for canary run {run_id}")
    return found


def step(
    storage: Storage,
    model: str,
    config: CanaryConfig,
    control: PredictionRun,
    canary: PredictionRun,
    actor: str | None = None,
) -> dict[str, Any]:
    """Advance the canary one step, or roll it back on a breach; return the event (the existing one when
    this run was already stepped on). `canary` is the canary version's run on `control`'s dataset version."""
    registry = Registry(storage)
    held = holding(registry, model, config.alias)
    version = int(canary.manifest["model_version"])
    if held is None or held[0] != version:
        raise ValueError(f"alias {config.alias!r} of {model!r} does not hold v{version}: nothing to step")
    alias_seq = held[1]
    log_ = _log(storage, model)
    found = log_.read()
    mine = [e for e in found if e["alias_seq"] == alias_seq and e["version"] == version]
    if mine and mine[-1]["action"] == "rollback":
        return mine[-1]
    if mine and (mine[-1]["run_id"], mine[-1]["control_run_id"]) == (canary.run_id, control.run_id):
        return mine[-1]  # this run was stepped on: doing it again changes nothing
    comparison = compare_shadow(storage, control, canary, config)
    reasons = breaches(storage, comparison, [*(e["run_id"] for e in mine), canary.run_id], model)
    base = {"alias": config.alias, "version": version, "alias_seq": alias_seq, "run_id": canary.run_id}
    base |= {"control_run_id": control.run_id, "comparison_id": comparison["id"]}
    subject = _subject(model)
    if reasons:
        return roll_back(storage, model, config.alias, base, reasons, actor)
    index = min(len([e for e in mine if e["action"] == "advance"]), len(config.shares) - 1)
    share = config.shares[index]
    event = {"action": "advance", **base, "step": index, "share": share, "salt": salt_of(model, config)}
    steps = len(config.shares)
    event["reason"] = f"healthy run {canary.run_id}: share {share:g} (step {index + 1} of {steps})"
    return append_decided(log_, found, event, actor, None, subject)


def _subject(model: str) -> tuple[str, str]:
    return f"the canary log of model {model!r}", f"batchml experiments show {model}"


def roll_back(
    storage: Storage,
    model: str,
    alias: str,
    base: dict[str, Any],
    reasons: list[str],
    actor: str | None = None,
) -> dict[str, Any]:
    """Withdraw the canary (an automatic alias event naming `reasons`) and record the rollback in the
    canary log; `base` names the holding (version, alias_seq) and the runs the decision was made on."""
    version = int(base["version"])
    reason = f"canary v{version} rolled back: " + "; ".join(reasons)
    Registry(storage).withdraw(model, alias, version, reason, actor)
    log.warning("%s: %s", model, reason)
    log_ = _log(storage, model)
    found = log_.read()
    done = [e for e in found if e["action"] == "rollback" and e["alias_seq"] == base["alias_seq"]]
    if done:  # a rerun after a crash between the two appends, or another process was first
        return done[-1]
    event = {"action": "rollback", "alias": alias, **base, "reason": reason}
    return append_decided(log_, found, event, actor, None, _subject(model))
