"""Monitor a published run: drift, an Evidently report, delayed-label performance, alerts, and retraining.

monitor(model)  ->  drift (batchml.monitoring.drift) -> report (batchml.monitoring.reports)
                ->  performance (labels, if any); experiment results and the canary's labelled check
                ->  alerts (stored, one Prefect event `batchml.alert.<kind>` each)
                ->  on breach, with retrain="inline": the `retrain` flow as a subflow (flows/retrain.py:
                    debounced; snapshot -> train_model -> score_and_publish, every reason = trigger id);
                    with retrain="event": nothing here, the `retrain` deployment's automation reacts to the
                    events (deployments/: `retrain/on-alert`), with the same debounce
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact
from prefect.events import emit_event

import batchml
from batchml.data.labels import latest_labels
from batchml.errors import NotFoundError
from batchml.models.registry import RegistryReader
from batchml.monitoring import alerts
from batchml.monitoring.performance import compute
from batchml.scoring.publications import PublicationLog
from batchml.scoring.runs import get_run
from flows.common import artifact_key, batch_task, config_ref, markdown_table, open_project, report
from flows.retrain import retrain_model


@batch_task
def drift(model: str, run_id: str, config: str | None) -> dict[str, Any]:
    """Drift of run `run_id` against the model's training reference (computed once, then loaded)."""
    from batchml.monitoring.drift import monitor_run

    project = open_project(config)
    result = monitor_run(project.storage, model, run_id, project.config.model(model).monitoring.drift)
    return dict(result.summary)


@batch_task
def evidently_report(model: str, run_id: str, config: str | None) -> dict[str, Any]:
    """The Evidently report (HTML + JSON snapshot) of run `run_id`, judged as its drift was."""
    from batchml.monitoring.reports import render_run_report

    project = open_project(config)
    monitoring = project.config.model(model).monitoring
    ref = render_run_report(
        project.storage, model, run_id, monitoring.report_sample_rows, config=monitoring.drift
    )
    return {"html_uri": str(ref.html_uri), "json_uri": str(ref.json_uri)}


@batch_task
def performance(model: str, config: str | None) -> dict[str, Any] | None:
    """Metrics of the newest labels version (None: no labels configured or ingested yet)."""
    project = open_project(config)
    spec = project.config.model(model)
    labels = latest_labels(project.storage, spec.monitoring.labels) if spec.monitoring.labels else None
    if labels is None:
        return None
    result = compute(project.storage, model, spec, labels)
    return {
        "labels_version": result.record["labels_version"],
        "joined": result.record["joined"],
        "rows": result.degraded,  # alerts only need the degraded groups
        "reused": result.reused,
    }


@batch_task
def evaluate_experiments(model: str, config: str | None) -> dict[str, Any] | None:
    """Experiment results on the newest labels, and the canary's labelled-performance check (None: no
    labels configured or ingested yet)."""
    from batchml.serving.experiment_results import evaluate

    project = open_project(config)
    spec = project.config.model(model)
    labels = latest_labels(project.storage, spec.monitoring.labels) if spec.monitoring.labels else None
    return None if labels is None else evaluate(project.storage, model, spec, labels)


def experiments_markdown(model: str, evaluated: dict[str, Any] | None) -> str:
    """The experiments section of the monitor's artifact: per experiment version its verdict and arms."""
    if evaluated is None:
        return "Experiments: no labels yet."
    lines = []
    rollback = evaluated["canary_rollback"]
    if rollback:
        lines += [f"**Canary rolled back on labels:** {rollback['reason']}", ""]
    for r in evaluated["results"]:
        winner = f", winner **{r['winner']}**" if r["winner"] else ""
        how = f"goal {r['goal']}, {r['level']:.0%} intervals, >= {r['min_samples']} labelled rows per arm"
        verdict = f"**{r['verdict']}**{winner} on {r['metric']}"
        lines += [f"### Experiment `{r['experiment']}` v{r['experiment_version']} of `{model}`",
                  f"Labels {r['labels_version']}: {verdict} ({how}).", ""]  # fmt: skip
        rows = [{k: x[k] if not isinstance(x[k], float) else f"{x[k]:.4g}" for k in
                 ("variant", "rows", "value", "uplift", "ci_low", "ci_high", "verdict")}
                for x in r["rows"] if x["metric"] == r["metric"]]  # fmt: skip
        lines += [markdown_table(rows), ""]
    return "\n".join(lines) or "Experiments: none scored beside a published run."


@batch_task
def raise_alerts(
    model: str, run_id: str, drift: dict[str, Any] | None, perf: dict[str, Any] | None, config: str | None
) -> dict[str, Any]:
    """Current breaches (with stable ids) and the ones recorded for the first time now."""
    project = open_project(config)
    version = RegistryReader(project.storage).get(
        model, get_run(project.storage, model, run_id).manifest["model_version"]
    )
    monitoring = project.config.model(model).monitoring
    current = alerts.find_breaches(model, version, run_id, monitoring, drift, perf)
    return {"current": current, "new": alerts.record(project.storage, current)}


@flow(name="monitor")
def monitor(
    model: str,
    run_id: str | None = None,
    config: str | None = None,
    retrain: Literal["inline", "event"] = "inline",
) -> dict[str, Any]:
    """Monitor `run_id` of `model` (default: the published run) and retrain on breach, debounced.

    `retrain="inline"` runs the `retrain` flow as a subflow on the current breaches (no server needed, as
    in `make demo`); `"event"` leaves it to an automation on the `batchml.alert.*` events this run emits for
    new alerts (the deployments' way: `retrain/on-alert`), so `retrain` in the result is None.
    """
    logger = get_run_logger()
    config = config_ref(config)
    project = open_project(config)
    project.config.model(model)
    run_id = run_id or PublicationLog(project.storage).current(model)
    if run_id is None:
        raise NotFoundError(f"published run of model {model!r}", "current", ["publish a run first"])
    summary = drift(model, run_id, config)
    logger.info("run %s of %s: drift verdict %s", run_id, model, summary.get("verdict"))
    ref = evidently_report(model, run_id, config)
    create_link_artifact(  # the report from the flow run's page in the UI
        link=ref["html_uri"],
        link_text=f"Evidently report of run {run_id} of {model}",
        key=artifact_key("report", model),
        description=f"Evidently report of run {run_id} of {model}",
    )
    perf = performance(model, config)
    evaluated = evaluate_experiments(model, config)
    if evaluated is not None and evaluated["canary_rollback"]:
        logger.warning("%s: %s", model, evaluated["canary_rollback"]["reason"])
    found = raise_alerts(model, run_id, summary, perf, config)
    events = []
    for alert in found["new"]:
        logger.warning("alert %s (%s): %s", alert["id"], alert["kind"], alert["detail"])
        event = emit_event(
            event=f"batchml.alert.{alert['kind']}",
            resource={"prefect.resource.id": f"batchml.model.{model}", "prefect.resource.name": model},
            payload=alert,
        )
        events.append(str(event.id) if event is not None else None)
    outcome = None
    if found["current"] and retrain == "inline":
        outcome = retrain_model(model, [a["id"] for a in found["current"]], config)
    batchml.rebuild_catalog(open_project(config), full=False)  # alerts, performance and retrains into SQL
    rows = [{k: a[k] for k in ("id", "kind", "version", "detail")} for a in found["current"]]
    lines = [
        f"Run **{run_id}** of `{model}`: drift verdict **{summary.get('verdict')}** "
        f"({summary.get('drifted_share', 0.0):.0%} of features drifted; prediction drifted: "
        f"{summary.get('prediction_drifted')}).",
        "",
        f"Evidently report: [{ref['html_uri']}]({ref['html_uri']})",
        "",
        "Performance: " + (f"labels {perf['labels_version']}, {perf['joined']:,} labelled predictions, "
                           f"{len(perf['rows'])} degraded groups" if perf else "no labels yet"),
        "",
        f"## Alerts ({len(found['new'])} new, {len(rows)} current)",
        "",
        markdown_table(rows),
        "",
        "Retrain: " + (f"{outcome['retrain_id']}: {outcome['detail']}" if outcome else
                       "not needed" if not found["current"] else
                       f"left to the automation on batchml.alert.* ({len(events)} events)"
                       if retrain == "event" else "debounced or not configured"),
    ]  # fmt: skip
    report(artifact_key("monitor", model), f"Monitor {model} run {run_id}", "\n".join(lines), table=rows)
    if evaluated is not None and (evaluated["results"] or evaluated["canary_rollback"]):
        report(
            artifact_key("experiments", model),
            f"Experiments of {model}",
            experiments_markdown(model, evaluated),
        )
    return {
        "model": model,
        "run_id": run_id,
        "drift": summary,
        "report": ref,
        "performance": perf,
        "experiments": evaluated,
        "alerts": found["current"],
        "new_alerts": found["new"],
        "events": events,
        "retrain": outcome,
    }
