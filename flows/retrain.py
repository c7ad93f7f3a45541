"""Retrain a model on recorded alerts, debounced: its own flow, run inline by `monitor` or by an automation.

retrain_model(model, alert_ids)  ->  the alerts, as recorded by the monitor (unknown ids are an error)
                                 ->  claim a trigger (only for breaches the config retrains on, and only if
                                     none was claimed within `retrain.debounce_hours`; else a no-op)
                                 ->  snapshot -> train_model -> score_and_publish as subflows (every reason
                                     = the trigger id), and the outcome recorded next to the trigger

The debounce lives in storage (`batchml.monitoring.alerts.claim_retrain`, put-if-absent), not in Prefect: two
alert events, two monitors, or a monitor and an automation racing all end in at most one retrain per window.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

import batchml
from batchml.data import datasets
from batchml.errors import NotFoundError
from batchml.monitoring import alerts
from batchml.redact import redact
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
def recorded_alerts(model: str, alert_ids: list[str], config: str | None) -> list[dict[str, Any]]:
    """The alerts `alert_ids` of `model` as recorded (NotFoundError names any id that was never recorded)."""
    known = {a["id"]: a for a in alerts.list_alerts(open_project(config).storage, model)}
    missing = [i for i in alert_ids if i not in known]
    if missing:
        raise NotFoundError(f"alert of model {model!r}", ", ".join(missing), list(reversed(known)))
    return [known[i] for i in dict.fromkeys(alert_ids)]


@batch_task
def claim_retrain(model: str, breaches: list[dict[str, Any]], config: str | None) -> dict[str, Any] | None:
    """A retrain trigger for the breaches the config retrains on, unless debounced (None)."""
    project = open_project(config)
    retrain = project.config.model(model).monitoring.retrain
    # Other kinds (shadow divergence) are for people to judge: they never retrain.
    wanted = [
        b
        for b in breaches
        if b["kind"] == "model_age" or (b["kind"] in _TRIGGERS and getattr(retrain, _TRIGGERS[b["kind"]]))
    ]
    if not wanted:
        return None
    return alerts.claim_retrain(project.storage, model, wanted, retrain.debounce_hours)


@recorded  # the outcome is recorded from the flow itself, not from a task
def run_retrain(model: str, trigger: dict[str, Any], config: str | None) -> dict[str, Any]:
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


@flow(name="retrain")
def retrain_model(model: str, alert_ids: list[str], config: str | None = None) -> dict[str, Any] | None:
    """Retrain `model` because of the recorded alerts `alert_ids`, at most once per `debounce_hours`.

    Returns the recorded outcome, or None when nothing was retrained: none of the alerts is a breach the
    config retrains on, or a retrain was claimed within the window (a second alert event is then a no-op).
    """
    logger = get_run_logger()
    config = config_ref(config)
    breaches = recorded_alerts(model, alert_ids, config)
    trigger = claim_retrain(model, breaches, config)
    if trigger is None:
        logger.info(
            "no retrain of %s for %s: not configured for these breaches, or one ran within the window",
            model,
            ", ".join(alert_ids),
        )
        outcome = None
    else:
        outcome = run_retrain(model, trigger, config)
        batchml.rebuild_catalog(open_project(config), full=False)  # the retrain, its version and run in SQL
    rows = [{k: a[k] for k in ("id", "kind", "version", "detail")} for a in breaches]
    verdict = (
        f"**{outcome['retrain_id']}**: {outcome['status']}, {outcome['detail']}"
        if outcome is not None
        else "**none**: debounced (a retrain was claimed within `debounce_hours`) or not configured"
    )
    body = f"Retrain: {verdict}\n\n" + markdown_table(rows)
    report(artifact_key("retrain", model), f"Retrain {model}", body)
    return outcome
