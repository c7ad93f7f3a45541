"""Every deployment in one place: which flow, when (cron + timezone, or an event trigger), with which
default parameters, and how many of its runs at once.

Parameters here are defaults: a run triggered by hand (UI, `prefect deployment run NAME -p key=value`) may
override any of them. `config` is left unset, so flows open $BATCHML_CONFIG or ./batchml.toml of the worker.
Two ways to run them, declared once here:

    python -m deployments.serve         serve them all from this process (needs PREFECT_API_URL)
    prefect deploy --all --prefect-file deployments/prefect.yaml
                                        the same deployments on the process work pool POOL, run by
                                        `prefect worker start --pool batchml`; the file is generated
                                        from this list (`python -m deployments.prefect_yaml`)

Retraining is event-driven in both: `monitor/daily-monitor` runs with `retrain="event"` and emits
`batchml.alert.<kind>` events; the trigger of `retrain/on-alert` (a Prefect automation, created when the
deployment is registered either way) runs the `retrain` flow for each, and that flow's debounce in storage
keeps it to one retrain per `retrain.debounce_hours`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from prefect import Flow
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.ingest import snapshot_dataset
from flows.monitor import monitor
from flows.retrain import retrain_model
from flows.score import score_and_publish
from flows.train import train_model

TIMEZONE = "UTC"
TAGS = ("batchml",)
POOL = "batchml"  # the process work pool of prefect.yaml's deployments

#: Run the `retrain` flow for every `batchml.alert.*` event the monitor emits, with the alert's model and id
#: (templated from the event: its payload is the alert as recorded). Every event fires (threshold 1, no
#: window): the debounce is the retrain flow's, in storage, so it holds however the flow is started.
RETRAIN_ON_ALERT: dict[str, Any] = {
    "name": "batchml: retrain on alert",
    "description": "A monitor alert (batchml.alert.<kind> on batchml.model.<model>) starts retrain/on-alert.",
    "type": "event",
    "enabled": True,
    "match": {"prefect.resource.id": "batchml.model.*"},
    "expect": ["batchml.alert.*"],
    "posture": "Reactive",
    "threshold": 1,
    "within": 0,
    # The list is one expression: `prefect deploy` drops a templated item of a list (its env-var pass).
    "parameters": {"model": "{{ event.payload.model }}", "alert_ids": "{{ [event.payload.id] }}"},
}


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment of a flow: on a cron schedule, or on the events of its triggers (automations)."""

    name: str
    flow: Flow[..., Any]
    cron: str | None
    parameters: dict[str, Any]
    description: str
    timezone: str = TIMEZONE
    tags: tuple[str, ...] = field(default=TAGS)
    #: Runs of this deployment at once; more wait for a slot (Prefect's deployment concurrency limit).
    concurrency_limit: int = 1
    #: Prefect deployment triggers, as written in prefect.yaml (`triggers:`).
    triggers: tuple[dict[str, Any], ...] = ()

    def to_deployment(self) -> RunnerDeployment:
        """The Prefect runner deployment (for `prefect.serve`); serving creates its triggers' automations."""
        deployment = self.flow.to_deployment(
            name=self.name,
            schedules=[Cron(self.cron, timezone=self.timezone)] if self.cron else [],
            parameters=dict(self.parameters),
            description=self.description,
            tags=list(self.tags),
            enforce_parameter_schema=True,  # a run's parameters are validated against the flow's signature
            concurrency_limit=self.concurrency_limit,
            triggers=[DeploymentEventTrigger(**t) for t in self.triggers],
        )
        return cast(RunnerDeployment, deployment)  # sync in a sync context


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        name="daily-snapshot",
        flow=snapshot_dataset,
        cron="0 2 * * *",
        parameters={"name": "loans"},
        description="Snapshot the loans source every day at 02:00 (a no-op when the source is unchanged).",
    ),
    DeploymentSpec(
        name="weekly-train",
        flow=train_model,
        cron="0 3 * * 1",
        parameters={"model": "default_risk", "promote_to": "champion"},
        description="Retrain default_risk on the latest loans version every Monday at 03:00 and promote it.",
    ),
    DeploymentSpec(
        name="daily-score",
        flow=score_and_publish,
        cron="0 5 * * *",
        parameters={"model": "default_risk", "alias": "champion", "publish": True},
        description="Score the latest loans version with the champion every day at 05:00 and publish it.",
    ),
    DeploymentSpec(
        name="daily-monitor",
        flow=monitor,
        cron="0 7 * * *",
        parameters={"model": "default_risk", "retrain": "event"},
        description="Monitor default_risk's published run every day at 07:00: drift, report, performance, "
        "alerts; each new alert is an event that starts retrain/on-alert.",
    ),
    DeploymentSpec(
        name="on-alert",
        flow=retrain_model,
        cron=None,
        parameters={},
        description="Retrain the model of a monitor alert (run by its automation on batchml.alert.* events) "
        "and publish its predictions if promoted; at most once per retrain.debounce_hours.",
        triggers=(RETRAIN_ON_ALERT,),
    ),
)


def to_deployments() -> list[RunnerDeployment]:
    """Every deployment, ready for `prefect.serve(*to_deployments())`."""
    return [spec.to_deployment() for spec in DEPLOYMENTS]
