"""Monitor a published run: drift, an Evidently report, delayed-label performance, alerts, and retraining.

monitor(model)  ->  drift (batchml.monitoring.drift) -> report (batchml.monitoring.reports)
                ->  performance (labels, if any)
                ->  alerts (stored, one Prefect event each) -> on breach: a debounced retrain
                    (snapshot -> train_model -> score_and_publish as subflows, every reason = trigger id)
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact
from prefect.events import emit_event

import batchml
from batchml.data import datasets
from batchml.data.labels import latest_labels
from batchml.errors import NotFoundError
from batchml.models.registry import RegistryReader
from batchml.monitoring import alerts
from batchml.monitoring.performance import compute
from batchml.redact import redact
from batchml.scoring.publications import PublicationLog
from batchml.scoring.runs import get_run
from flows.common import (
    artifact_key,
    batch_task,
    config_ref,
    markdown_table,
    open_project,
    recorded,
    report,
)
from flows.ingest import snapshot_dataset
from flows.score import score_and_publish
from flows.train import train_model

_TRIGGERS = {"drift": "on_drift", "prediction_drift": "on_drift", "performance": "on_performance"}


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


@batch_task
def claim_retrain(model: str, breaches: list[dict[str, Any]], config: str | None) -> dict[str, Any] | None:
    """A retrain trigger for the breaches the config retrains on, unless debounced (None)."""
    project = open_project(config)
    retrain = project.config.model(model).monitoring.retrain
    wanted = [b for b in breaches if b["kind"] == "model_age" or getattr(retrain, _TRIGGERS[b["kind"]])]
    if not wanted:
        return None
    return alerts.claim_retrain(project.storage, model, wanted, retrain.debounce_hours)


@recorded  # the outcome is recorded from the flow itself, not from a task
def retrain(model: str, trigger: dict[str, Any], config: str | None) -> dict[str, Any]:
    """Snapshot the newest data, train, promote if the gates pass, score and publish; record the outcome."""
    logger = get_run_logger()
    project = open_project(config)
    spec = project.config.model(model)
    reason = f"retrain {trigger['id']} (alerts {', '.join(trigger['alert_ids'])})"
    outcome: dict[str, Any] = {"published": False, "run_id": None, "model_version": None}
    try:
        configured = project.config.datasets.get(spec.dataset)
        if configured is not None and configured.source is not None:
            snapshot_dataset(spec.dataset, None, config)
        dataset = datasets.get_version(project.storage, f"{spec.dataset}@latest").ref
        outcome["dataset_version"] = dataset
        trained = train_model(model, dataset=dataset, promote_to="champion", config=config, reason=reason)
        outcome |= {
            "model_version": trained["version"],
            "status": "held_back",
            "detail": trained["held_back"],
        }
        if trained["promotion"] is not None and not trained["promotion"]["changed"]:
            # The newest data is what the champion was trained on. Scoring it again and publishing that run
            # would replace newer predictions (the batch that breached) with ones of the training data.
            outcome |= {"status": "unchanged", "detail": f"no newer data: v{trained['version']} is champion"}
        elif trained["promotion"] is not None:
            scored = score_and_publish(model, dataset=dataset, config=config, reason=reason)
            published = bool(scored["published"])
            outcome |= {"status": "promoted", "run_id": scored["run_id"], "published": published}
            outcome["detail"] = f"v{trained['version']} promoted and run {scored['run_id']} published"
    except Exception as exc:  # the trigger stays debounced; its outcome says why nothing came of it
        failed = {**outcome, "status": "failed", "detail": redact(repr(exc))}  # no credentials in the record
        alerts.record_outcome(project.storage, trigger, failed)
        raise
    logger.info("retrain %s: %s", trigger["id"], outcome["detail"])
    return alerts.record_outcome(project.storage, trigger, outcome)


@flow(name="monitor")
def monitor(model: str, run_id: str | None = None, config: str | None = None) -> dict[str, Any]:
    """Monitor `run_id` of `model` (default: the published run) and retrain on breach, debounced."""
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
    trigger = claim_retrain(model, found["current"], config) if found["current"] else None
    outcome = retrain(model, trigger, config) if trigger is not None else None
    if found["current"] and trigger is None:
        logger.info(
            "no retrain for %s: not configured for these breaches, or one ran within the window", model
        )
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
                       "debounced or not configured" if found["current"] else "not needed"),
    ]  # fmt: skip
    report(artifact_key("monitor", model), f"Monitor {model} run {run_id}", "\n".join(lines), table=rows)
    return {
        "model": model,
        "run_id": run_id,
        "drift": summary,
        "report": ref,
        "performance": perf,
        "alerts": found["current"],
        "new_alerts": found["new"],
        "events": events,
        "retrain": outcome,
    }
