"""Labels joined to the arm that served each entity, and what they say: `experiment_results`, canary breach.

Each label (entity, label, label time) is joined to what was served to that entity at the label time: the
published run then (the publication log replayed), and the experiment or canary step served beside it then
(their logs and the alias log replayed up to that time), whose bucket ranges put the entity in one arm; the
prediction comes from that arm's run. The serving state only changes at an event, so the logs are replayed
once per event time, not per label.

    monitoring/<model>/experiments/<name>/v<version>/<labels version>.json    written once (put-if-absent)

Per experiment version and labels version: per variant the labelled rows and metrics, and against control
the difference with its 95% interval and a verdict (`batchml.monitoring.arm_compare`); below `min_samples`
labelled rows in an arm the verdict is `insufficient_data` and there is no winner. The same comparison
decides a canary's labelled-performance breach (`canary_breach`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from batchml.config import ModelSpec
from batchml.data.datasets import DatasetVersion
from batchml.errors import ConfigError, ConflictError
from batchml.models.registry import RegistryReader
from batchml.monitoring import arm_compare, performance
from batchml.names import check_name
from batchml.scoring.publications import PublicationLog
from batchml.serving import canary, experiments
from batchml.serving.canary import CONTROL
from batchml.store.eventlog import now
from batchml.store.storage import Storage

log = logging.getLogger(__name__)
_UTC = pl.Datetime("us", "UTC")


def segments(storage: Storage, model: str) -> list[dict[str, Any]]:
    """From each event time on (`at`, oldest first): the `published` run, and the `arms` served beside it,
    (variant, run id or None if not scored, bucket from, bucket to) with their `salt` (`arm_of` names them).
    History readers replay the same segments (`batchml.serving.history_arms`)."""
    timeline = performance.publication_timeline(storage, model)
    # Each log read once: the replay asks them at every change time (O(events) reads, not O(events^2)).
    alias_events, steps = RegistryReader(storage).events(model), canary.events(storage, model)
    started = experiments.event_log(storage, model).read()
    logs = [PublicationLog(storage).events(model), alias_events, steps, started]
    found = []
    for at in sorted({datetime.fromisoformat(e["at"]) for events in logs for e in events}):
        published = timeline.filter(pl.col("at") <= at)["run_id"].to_list()[-1:] or [None]
        segment: dict[str, Any] = {
            "at": at,
            "published": published[0],
            "arm_of": None,
            "salt": "",
            "arms": [],
        }
        served = experiments.serving(storage, model, published[0], at, log_events=started)
        step = None
        if served is None:
            step = canary.serving(storage, model, published[0], at, logs=(steps, alias_events))
        if served is not None:
            segment |= {"arm_of": f"experiment:{served.experiment}:v{served.version}", "salt": served.salt}
            segment["arms"] = [
                (a.variant, a.run.run_id if a.run else None, a.low, a.high) for a in served.arms
            ]
        elif step is not None:
            segment |= {"arm_of": f"canary:{step.variant}:{step.alias_seq}", "salt": step.salt}
            segment["arms"] = [(step.variant, step.run.run_id, 0.0, step.share)]
        found.append(segment)
    return found


def served_arms(storage: Storage, model: str, labels: pl.DataFrame) -> pl.DataFrame:
    """`labels` (entity, label, label_time) with what served each entity then: `run_id` (null: nothing
    published), `variant` (`control` outside an arm) and `arm_of` (the experiment version or canary holding
    whose arms were served; null: none)."""
    replayed = segments(storage, model)
    starts = pl.DataFrame({"at": [s["at"] for s in replayed], "segment": list(range(len(replayed)))},
                          schema={"at": _UTC, "segment": pl.Int64})  # fmt: skip
    matched = labels.sort("label_time").join_asof(starts, left_on="label_time", right_on="at")
    run_ids, variants, arm_of = [], [], []
    for entity, index in matched.select("entity", "segment").iter_rows():
        segment = replayed[index] if index is not None else {"published": None, "arms": [], "arm_of": None}
        run_id, variant = segment["published"], CONTROL
        if segment["arms"]:
            place = canary.bucket(segment["salt"], entity)
            for name, arm_run, low, high in segment["arms"]:
                if low <= place < high and arm_run is not None:
                    run_id, variant = arm_run, name
        run_ids.append(run_id)
        variants.append(variant)
        arm_of.append(segment["arm_of"])
    return matched.select("entity", "label", "label_time").with_columns(
        pl.Series("arm_of", arm_of, dtype=pl.String),
        pl.Series("run_id", run_ids, dtype=pl.String),
        pl.Series("variant", variants, dtype=pl.String),
    )


def joined_arms(storage: Storage, model: str, labels: pl.DataFrame) -> pl.DataFrame:
    """`served_arms` joined to each arm's prediction (entities the run did not score drop out), with the
    label encoded by the version that served it (`y`) and whether the served decision matched (`hit`)."""
    served = served_arms(storage, model, labels).filter(pl.col("run_id").is_not_null())
    parts = [performance.join_run(storage, model, str(run_id), group, [])
             for (run_id,), group in served.group_by(["run_id"])]  # fmt: skip
    registry, encoded = RegistryReader(storage), []
    for part in parts:
        version = registry.get(model, int(part["model_version"][0]))
        y = performance.encode_labels(part, version)
        if version.task == "binary":
            hit = (part["prediction"].to_numpy() >= 0.5) == (y == 1)
        else:
            hit = (part["predicted_class"].cast(pl.String) == part["label"].cast(pl.String)).to_numpy()
        encoded.append(part.with_columns(pl.Series("y", y), pl.Series("hit", hit.astype(np.float64))))
    return pl.concat(encoded, how="diagonal_relaxed") if encoded else pl.DataFrame()


def arm_values(task: str, joined: pl.DataFrame, arm_of: str) -> dict[str, dict[str, np.ndarray]]:
    """Per variant served under `arm_of`, `arm_compare.row_values` of its labelled rows."""
    mine = joined.filter(pl.col("arm_of") == arm_of) if joined.height else joined
    return {
        str(variant): arm_compare.row_values(
            task, g["y"].to_numpy(), g["prediction"].to_numpy(), g["hit"].to_numpy()
        )
        for (variant,), g in (mine.group_by(["variant"]) if mine.height else [])
    }


def result_path(model: str, experiment: str, version: int, labels_version: str) -> str:
    """Where the result of an experiment version on a labels version is stored."""
    return (
        f"monitoring/{check_name('model', model)}/experiments/{experiment}/v{version}/{labels_version}.json"
    )


def _summary(start: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[str, str | None]:
    primary = [r for r in rows if r["metric"] == start["metric"] and r["variant"] != start["control"]]
    if not primary or any(r["verdict"] == "insufficient_data" for r in primary):
        return "insufficient_data", None
    better = [r for r in primary if r["verdict"] == "better"]
    if not better:
        return "no_winner", None
    sign = 1 if start["goal"] == "increase" else -1
    return "winner", max(better, key=lambda r: sign * r["uplift"])["variant"]


def experiment_results(
    storage: Storage, model: str, labels: DatasetVersion, spec: ModelSpec, joined: pl.DataFrame | None = None
) -> list[dict[str, Any]]:
    """The result of every experiment version of `model` scored beside a run, on `labels` (computed once
    per experiment version x labels version, then loaded). `joined`: `joined_arms`, if already made."""
    events = experiments.event_log(storage, model).read()
    scored = {(e["experiment"], e["experiment_version"]) for e in events if e["action"] == "arms"}
    found = []
    for start in experiments.starts(events):
        key = (start["experiment"], start["experiment_version"])
        if key not in scored:
            continue
        path = result_path(model, *key, labels.version)
        if storage.exists(path):
            found.append(storage.read_json(path))
            continue
        if joined is None:
            joined = joined_arms(storage, model, _labels_of(storage, model, spec, labels))
        arm_of = f"experiment:{key[0]}:v{key[1]}"
        values = arm_values(spec.task, joined, arm_of)
        variants = {v["name"]: values.get(v["name"], {}) for v in start["variants"]}
        variants = {
            n: v or {m: np.array([]) for m in arm_compare.TASK_METRICS[spec.task]}
            for n, v in variants.items()
        }
        rows = arm_compare.compare_arms(spec.task, variants, start["control"], int(start["min_samples"]),
                                        {start["metric"]: start["goal"]})  # fmt: skip
        verdict, winner = _summary(start, rows)
        record = {"kind": "experiment_result", "model": model, "experiment": key[0],
                  "experiment_version": key[1], "labels_version": labels.ref, "computed_at": now(),
                  "level": arm_compare.LEVEL, "metric": start["metric"], "goal": start["goal"],
                  "min_samples": start["min_samples"], "control": start["control"], "verdict": verdict,
                  "winner": winner, "rows": rows}  # fmt: skip
        try:
            storage.create_json(path, record)
        except ConflictError:  # a concurrent monitor stored it first
            record = storage.read_json(path)
        found.append(record)
    return found


def _labels_of(storage: Storage, model: str, spec: ModelSpec, labels: DatasetVersion) -> pl.DataFrame:
    if spec.monitoring.labels is None:
        raise ConfigError(f"model {model!r} has no [models.{model}.monitoring.labels] section")
    return performance.read_labels(storage, spec.monitoring.labels, labels)


def canary_breach(
    storage: Storage,
    model: str,
    spec: ModelSpec,
    labels: DatasetVersion,
    actor: str | None = None,
    joined: pl.DataFrame | None = None,
) -> dict[str, Any] | None:
    """Roll the running canary back when its labelled arm is worse than control's by more than
    `max_performance_drop` on `performance_metric`, both arms with `min_samples` labelled rows; return the
    rollback event (None: no canary, no margin configured, too few labels, or within the margin)."""
    config = spec.canary
    if config is None or config.performance_metric is None or config.max_performance_drop is None:
        return None
    metric = config.performance_metric
    if metric not in arm_compare.TASK_METRICS[spec.task]:
        allowed = ", ".join(arm_compare.TASK_METRICS[spec.task])
        raise ConfigError(
            f"canary performance_metric {metric!r} does not apply to a {spec.task} model: use {allowed}"
        )
    held = canary.holding(RegistryReader(storage), model, config.alias)
    if held is None:
        return None
    if joined is None:
        joined = joined_arms(storage, model, _labels_of(storage, model, spec, labels))
    values = arm_values(spec.task, joined, f"canary:{config.alias}:{held[1]}")
    if CONTROL not in values or config.alias not in values:
        return None
    rows = arm_compare.compare_arms(spec.task, {CONTROL: values[CONTROL], config.alias: values[config.alias]},
                                    CONTROL, config.min_samples)  # fmt: skip
    row = next(r for r in rows if r["variant"] == config.alias and r["metric"] == metric)
    if min(row["rows"], len(values[CONTROL][metric])) < config.min_samples:
        return None
    drop = row["value"] - row["control_value"]
    drop = drop if metric in arm_compare.LOWER_IS_BETTER else -drop
    if drop <= config.max_performance_drop:
        return None
    interval = (
        ""
        if row["ci_low"] is None
        else f", 95% CI of the difference [{row['ci_low']:.4g}, {row['ci_high']:.4g}]"
    )
    reasons = [f"labelled {metric} {row['value']:.4g} vs control {row['control_value']:.4g} "
               f"(worse by {drop:.4g} > max_performance_drop {config.max_performance_drop:g}; "
               f"{row['rows']} vs {len(values[CONTROL][metric])} labelled rows{interval}; "
               f"labels {labels.ref})"]  # fmt: skip
    base = {"alias": config.alias, "version": held[0], "alias_seq": held[1], "labels_version": labels.ref}
    return canary.roll_back(storage, model, config.alias, base, reasons, actor)


def evaluate(
    storage: Storage, model: str, spec: ModelSpec, labels: DatasetVersion, actor: str | None = None
) -> dict[str, Any]:
    """What the monitor does with a labels version: every experiment version's result (stored once) and
    the canary's labelled-performance check (a rollback event, or None); the labels are joined once."""
    config = spec.canary
    checks_canary = config is not None and config.performance_metric is not None
    held = canary.holding(RegistryReader(storage), model, config.alias) if config and checks_canary else None
    joined = joined_arms(storage, model, _labels_of(storage, model, spec, labels)) if held else None
    results = experiment_results(storage, model, labels, spec, joined)
    rollback = canary_breach(storage, model, spec, labels, actor, joined) if held else None
    return {"results": results, "canary_rollback": rollback}


def list_results(storage: Storage) -> list[dict[str, Any]]:
    """Every stored experiment result, oldest first."""
    found = []
    for model in storage.list_dir("monitoring"):
        root = f"monitoring/{model}/experiments"
        for name in storage.list_dir(root):
            for version in storage.list_dir(f"{root}/{name}"):
                folder = f"{root}/{name}/{version}"
                found += [
                    storage.read_json(f"{folder}/{f}")
                    for f in storage.list_dir(folder)
                    if f.endswith(".json")
                ]
    return sorted(found, key=lambda r: (r["computed_at"], r["experiment"]))


RESULTS_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("experiment", pa.string()),
        ("experiment_version", pa.int64()),
        ("labels_version", pa.string()),
        ("variant", pa.string()),
        ("metric", pa.string()),
        ("is_decision_metric", pa.bool_()),
        ("rows", pa.int64()),  # labelled entities of the variant (the sample size)
        ("value", pa.float64()),
        ("control_value", pa.float64()),
        ("uplift", pa.float64()),  # value - control_value
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("level", pa.float64()),
        ("min_samples", pa.int64()),
        ("verdict", pa.string()),  # better, worse, no_difference, insufficient_data; NULL for control
        ("experiment_verdict", pa.string()),  # winner, no_winner, insufficient_data
        ("winner", pa.string()),
        ("computed_at", pa.timestamp("us", tz="UTC")),
    ]
)


def catalog_tables(storage: Storage) -> dict[str, pa.Table]:
    """The `experiment_results` catalog table: one row per result x variant x metric."""
    rows = [
        {**row, **{k: r[k] for k in ("model", "experiment", "experiment_version", "labels_version", "level",
                                     "min_samples", "winner")},
         "is_decision_metric": row["metric"] == r["metric"], "experiment_verdict": r["verdict"],
         "computed_at": datetime.fromisoformat(r["computed_at"])}
        for r in list_results(storage)
        for row in r["rows"]
    ]  # fmt: skip
    return {"experiment_results": pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA)}
