"""Every deployment in one place: which flow, when (cron + timezone), and with which default parameters.

Parameters here are defaults: a run triggered by hand (UI, `prefect deployment run NAME -p key=value`) may
override any of them. `config` is left unset, so flows open $BATCHML_CONFIG or ./batchml.toml of the worker.

    python -m deployments.serve     serve them all from this process (needs PREFECT_API_URL)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from prefect import Flow
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.ingest import snapshot_dataset
from flows.monitor import monitor
from flows.score import score_and_publish
from flows.train import train_model

TIMEZONE = "UTC"
TAGS = ("batchml",)


@dataclass(frozen=True)
class DeploymentSpec:
    """One scheduled deployment of a flow."""

    name: str
    flow: Flow[..., Any]
    cron: str
    parameters: dict[str, Any]
    description: str
    timezone: str = TIMEZONE
    tags: tuple[str, ...] = field(default=TAGS)

    def to_deployment(self) -> RunnerDeployment:
        """The Prefect runner deployment (for `prefect.serve`)."""
        deployment = self.flow.to_deployment(
            name=self.name,
            schedules=[Cron(self.cron, timezone=self.timezone)],
            parameters=dict(self.parameters),
            description=self.description,
            tags=list(self.tags),
            enforce_parameter_schema=True,  # a run's parameters are validated against the flow's signature
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
        parameters={"model": "default_risk"},
        description="Monitor default_risk's published run every day at 07:00: drift, report, performance, "
        "alerts; retrain on breach (at most once per retrain.debounce_hours).",
    ),
)


def to_deployments() -> list[RunnerDeployment]:
    """Every deployment, ready for `prefect.serve(*to_deployments())`."""
    return [spec.to_deployment() for spec in DEPLOYMENTS]
