"""The deployments the Prefect way, on a real server: `prefect deploy` from deployments/prefect.yaml onto a
process work pool, a worker running the runs, and retraining driven by alert events through an automation.

One slow test, so one server (`prefect server start`, 15 s or more on a loaded machine) serves both parts,
and pytest-xdist cannot split them over two workers (and two servers). Everything runs as subprocesses on
loopback with environments built from scratch (tests/prefect_server.py); the CLI calls are the README's.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings

import batchml
from batchml.monitoring import alerts
from batchml.scoring.publications import PublicationLog
from deployments import DEPLOYMENTS, POOL, RETRAIN_ON_ALERT
from tests.prefect_server import PREFECT, REPO, Proc, free_port, healthy, running, subprocess_env, wait_for


def _cli(args: list[str], env: dict[str, str]) -> str:
    """Run `prefect ARGS` to completion (generous timeout: the machine may be loaded); its output."""
    done = subprocess.run(
        [PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _runs_of(client: SyncPrefectClient, deployment_id: UUID) -> list[FlowRun]:
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    )


def _finished(client: SyncPrefectClient, flow_run_id: UUID) -> Callable[[], FlowRun | None]:
    def probe() -> FlowRun | None:
        run = client.read_flow_run(flow_run_id)
        return run if run.state is not None and run.state.is_final() else None

    return probe


def _post_alert_event(api: str, alert: dict[str, Any]) -> None:
    """The event the monitor emits for `alert`, sent again (as any client may) through POST /api/events."""
    event = {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": f"batchml.alert.{alert['kind']}",
        "resource": {"prefect.resource.id": f"batchml.model.{alert['model']}", "prefect.resource.name": "x"},
        "payload": alert,
    }
    assert httpx.post(f"{api}/events", json=[event], timeout=10).status_code == 204


@pytest.mark.slow
def test_prefect_yaml_deploys_to_a_process_pool_and_alert_events_trigger_one_debounced_retrain(
    make_project: Callable[..., batchml.Project], loans_csv: Path, tmp_path: Path
) -> None:
    project = make_project()
    toml = project.base_dir / "batchml.toml"
    dataset = batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    batchml.promote(project, "default_risk", model.version, reason="test setup")
    batchml.promote(project, "default_risk", model.version, "challenger", reason="test setup")

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = tmp_path / "prefect-home"
    cli_env = subprocess_env(home, PREFECT_API_URL=api)
    worker_env = {
        **cli_env,
        "BATCHML_REPO": str(REPO),  # prefect.yaml's pull step: where the worker runs the flows
        "BATCHML_CONFIG": str(toml),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    timings: dict[str, float] = {}
    started = time.monotonic()

    def lap(what: str) -> None:
        nonlocal started
        timings[what], started = time.monotonic() - started, time.monotonic()

    with ExitStack() as stack:
        server = stack.enter_context(
            running(
                [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                # A run refused a slot of its deployment's concurrency limit (the retrains, one at a time) is
                # retried after this many seconds: Prefect's 30 s default left the worker idle for up to 20 s.
                subprocess_env(home, PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2"),
                tmp_path / "server.log",
            )
        )
        procs: list[Proc] = [server]
        wait_for("the server's /api/health", lambda: healthy(api), procs, timeout=180)
        lap("server start")

        # -- 1. `prefect deploy` from the yaml, onto a process pool, and a worker on it ---------------------
        _cli(["work-pool", "create", POOL, "--type", "process"], cli_env)
        _cli(["--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], cli_env)
        lap("pool + deploy")
        procs.append(
            stack.enter_context(
                running([PREFECT, "worker", "start", "--pool", POOL], worker_env, tmp_path / "worker.log")
            )
        )
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api}))
        client = stack.enter_context(get_client(sync_client=True))

        # Deployed as declared (as serve registers them): pool, entrypoint, schedule, defaults, concurrency.
        assert len(client.read_deployments()) == len(DEPLOYMENTS)
        for spec in DEPLOYMENTS:
            d = client.read_deployment_by_name(f"{spec.flow.name}/{spec.name}")
            assert (d.work_pool_name, d.entrypoint) == (POOL, spec.to_deployment().entrypoint)
            assert d.parameters == spec.parameters and d.enforce_parameter_schema
            assert d.global_concurrency_limit is not None and d.global_concurrency_limit.limit == 1
            assert [(s.schedule.cron, s.schedule.timezone) for s in d.schedules] == (  # type: ignore[union-attr]
                [(spec.cron, spec.timezone)] if spec.cron else []
            )
        [automation] = client.read_automations_by_name(RETRAIN_ON_ALERT["name"])
        assert automation.enabled and automation.trigger.expect == {"batchml.alert.*"}  # type: ignore[union-attr]

        # "Custom run" in the UI: the deployment's run endpoint with parameters; the worker runs it.
        daily_score = client.read_deployment_by_name("score-and-publish/daily-score")
        parameters = {"alias": "challenger", "dataset": dataset.ref, "reason": "run on the pool"}
        flow_run = client.create_flow_run_from_deployment(daily_score.id, parameters=parameters)
        done = wait_for(f"flow run {flow_run.id}", _finished(client, flow_run.id), procs, timeout=300)
        logs = "\n".join(p.tail() for p in procs)
        assert done.state is not None and done.state.is_completed(), f"{done.state}\n{logs}"
        assert done.parameters == {**daily_score.parameters, **parameters}
        assert PublicationLog(project.storage).events("default_risk")[-1]["reason"] == "run on the pool"
        lap("score run")

        # -- 2. Drifted data is published; the daily monitor alerts and the automation retrains -------------
        drifted_csv = tmp_path / "drifted.csv"
        import polars as pl

        from batchml.testing import shift_loans

        shift_loans(pl.read_csv(loans_csv)).write_csv(drifted_csv)
        toml.write_text(toml.read_text().replace(str(loans_csv), str(drifted_csv)))  # retrain snapshots it
        drifted = batchml.snapshot_dataset(project, "loans", str(drifted_csv))
        run = batchml.score(project, "default_risk", dataset=drifted.ref)
        batchml.publish(project, "default_risk", run.run_id, reason="drifted data arrives")

        daily_monitor = client.read_deployment_by_name("monitor/daily-monitor")
        monitored = client.create_flow_run_from_deployment(daily_monitor.id)  # defaults: retrain="event"
        done = wait_for("the monitor run", _finished(client, monitored.id), procs, timeout=300)
        assert done.state is not None and done.state.is_completed(), "\n".join(p.tail() for p in procs)
        raised = alerts.list_alerts(project.storage, "default_risk")
        lap("drifted data + monitor run")
        assert "drift" in {a["kind"] for a in raised}

        # One retrain run per alert event (each new alert is one event), all completed; the debounce in
        # storage lets the first claim a retrain and makes the others no-ops that complete.
        on_alert = client.read_deployment_by_name("retrain/on-alert")

        def retrains_done(expected: int) -> Callable[[], list[FlowRun] | None]:
            def probe() -> list[FlowRun] | None:
                runs = _runs_of(client, on_alert.id)
                final = [r for r in runs if r.state is not None and r.state.is_final()]
                return final if len(runs) >= expected and len(final) == len(runs) else None

            return probe

        runs = wait_for("the retrain runs", retrains_done(len(raised)), procs, timeout=600)
        lap(f"{len(runs)} retrain runs")
        assert len(runs) == len(raised) and all(r.state and r.state.is_completed() for r in runs)
        assert sorted(r.parameters["alert_ids"][0] for r in runs) == sorted(a["id"] for a in raised)
        assert {r.parameters["model"] for r in runs} == {"default_risk"}
        [retrain] = alerts.list_retrains(project.storage, "default_risk")
        assert retrain["outcome"]["status"] == "promoted" and retrain["outcome"]["published"]
        assert PublicationLog(project.storage).current("default_risk") == retrain["outcome"]["run_id"]

        # The same alert event again, within debounce_hours: a retrain run starts and completes as a no-op.
        _post_alert_event(api, raised[0])
        again = wait_for("the replayed event's run", retrains_done(len(raised) + 1), procs, timeout=300)
        assert all(r.state and r.state.is_completed() for r in again)
        assert len(alerts.list_retrains(project.storage, "default_risk")) == 1
        lap("replayed event's run")
        print("timings:", {k: round(v, 1) for k, v in timings.items()})
