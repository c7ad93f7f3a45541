"""The deployments on a real Prefect server: serve them, trigger a run with parameters as the UI does.

One slow test. The server (`prefect server start`) and the serving process (`python -m deployments.serve`) run
as subprocesses on loopback (tests/prefect_server.py). The same deployments on a work pool, deployed from
prefect.yaml, are tests/test_deployments_pool.py.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL, temporary_settings

import batchml
from batchml.scoring.publications import PublicationLog
from deployments import DEPLOYMENTS, RETRAIN_ON_ALERT
from tests.conftest import SAMPLE_ROWS
from tests.prefect_server import free_port, healthy, running, subprocess_env, wait_for


@pytest.mark.slow
def test_served_deployment_runs_with_parameters_set_through_the_api(
    make_project: Callable[..., batchml.Project], tmp_path: Path
) -> None:
    # A project with a champion and a challenger (both the same version: the run is asked for the challenger).
    project = make_project()
    dataset = batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    batchml.promote(project, "default_risk", model.version, reason="test setup")
    batchml.promote(project, "default_risk", model.version, "challenger", reason="test setup")

    port = free_port()  # not 4200: the UI must be told where its API is
    api = f"http://127.0.0.1:{port}/api"
    home = tmp_path / "prefect-home"
    env = subprocess_env(
        home, PREFECT_RUNNER_POLL_FREQUENCY="1", BATCHML_CONFIG=str(project.base_dir / "batchml.toml")
    )
    assert not any(k.startswith("PREFECT_API") or "HARNESS" in k for k in env)
    timings: dict[str, float] = {}

    with ExitStack() as stack:
        started = time.monotonic()
        # README's command: `make serve` starts the server and serves every deployment against it (`-o`: the
        # virtualenv is the one running this test; never reinstall, tests are offline).
        venv = Path(sys.executable).parent.parent
        command = ["make", "--no-print-directory", "-o", f"{venv}/.installed-stamp", "serve", f"VENV={venv}"]
        command += [f"PREFECT_PORT={port}", f"SERVE_HOME={home}"]
        serving = stack.enter_context(running(command, env, tmp_path / "make-serve.log"))
        procs = [serving]
        wait_for("the server's /api/health", lambda: healthy(api), procs, timeout=90)
        timings["server start"] = time.monotonic() - started
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200  # the UI is served
        ui = httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=5).json()
        assert ui["api_url"] == api  # where the UI in a browser sends its requests
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api}))
        client = stack.enter_context(get_client(sync_client=True))

        def all_registered() -> Any:  # serve registers them one by one: wait for the whole set
            return len(client.read_deployments()) == len(DEPLOYMENTS) or None

        started = time.monotonic()
        wait_for("the deployments to be registered", all_registered, procs, timeout=90)
        timings["serve registered"] = time.monotonic() - started
        daily_score = client.read_deployment_by_name("score-and-publish/daily-score")
        # Every declared deployment is registered as declared: schedule, timezone, default parameters.
        for spec in DEPLOYMENTS:
            d = client.read_deployment_by_name(f"{spec.flow.name}/{spec.name}")
            assert d.parameters == spec.parameters and not d.paused
            assert [(s.schedule.cron, s.schedule.timezone) for s in d.schedules] == (  # type: ignore[union-attr]
                [(spec.cron, spec.timezone)] if spec.cron else []
            )
        assert daily_score.schedules[0].schedule.cron == "0 5 * * *"  # type: ignore[union-attr]
        # Serving registers the retrain deployment's trigger as an automation, as `prefect deploy` does.
        automation = wait_for(
            "the retrain automation",
            lambda: client.read_automations_by_name(RETRAIN_ON_ALERT["name"]) or None,
            procs,
            timeout=60,
        )
        on_alert = client.read_deployment_by_name("retrain/on-alert")
        assert [a.deployment_id for a in automation[0].actions] == [on_alert.id]  # type: ignore[union-attr]
        # The UI builds its run form from this schema: the flow's own signature.
        form = daily_score.parameter_openapi_schema or {}
        assert {"model", "alias", "dataset", "publish", "config", "reason"} <= set(form["properties"])

        # Parameters are checked against the flow's signature when the run is created, as in the UI's form.
        with pytest.raises(PrefectHTTPStatusError) as rejected:
            client.create_flow_run_from_deployment(daily_score.id, parameters={"publish": "maybe"})
        assert rejected.value.response.status_code in (409, 422)

        # "Custom run" in the UI: the same endpoint, defaults overridden per run.
        parameters = {"alias": "challenger", "dataset": dataset.ref, "reason": "triggered through the API"}
        started = time.monotonic()
        flow_run = client.create_flow_run_from_deployment(daily_score.id, parameters=parameters)

        def finished() -> Any:
            run = client.read_flow_run(flow_run.id)
            return run if run.state is not None and run.state.is_final() else None

        done = wait_for(f"flow run {flow_run.id}", finished, procs, timeout=120)
        timings["flow run"] = time.monotonic() - started
        logs = "\n".join(p.tail() for p in procs)
        assert done.state is not None and done.state.is_completed(), f"{done.state}\n{logs}"
        assert done.parameters == {**daily_score.parameters, **parameters}

        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )

        # The cron schedule is live: the server's scheduler queues the next daily runs at 05:00 UTC.
        def scheduled() -> list[Any] | None:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[daily_score.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
                ),
            )
            return runs or None

        upcoming = wait_for("scheduled runs of daily-score", scheduled, procs, timeout=60)
        starts = sorted(r.expected_start_time for r in upcoming if r.expected_start_time is not None)
        assert starts and all((t.hour, t.minute, t.utcoffset()) == (5, 0, timedelta(0)) for t in starts)
        assert starts[0] - datetime.now(UTC) <= timedelta(days=1)
        print("timings:", {k: round(v, 1) for k, v in timings.items()})

    # The run published the challenger's predictions of exactly that dataset version, with the given reason.
    publications = PublicationLog(project.storage)
    run_id = publications.current("default_risk")
    assert run_id is not None
    event = publications.events("default_risk")[-1]
    assert event["reason"] == "triggered through the API"
    # The records lead back to the deployment's flow run that made them (README: from a prediction to it).
    origin = (str(flow_run.id), str(daily_score.id), "score-and-publish")
    assert (event["flow_run_id"], event["deployment_id"], event["flow_name"]) == origin
    con = batchml.connect(project)
    try:
        rows = con.execute(
            "SELECT count(*), count(DISTINCT entity_id), min(run_id), max(run_id), min(model_version) "
            "FROM predictions WHERE model = 'default_risk'"
        ).fetchone()
        made_by = con.execute(
            "SELECT DISTINCT r.flow_run_id, r.deployment_id, r.flow_name "
            "FROM predictions p JOIN runs r USING (run_id) WHERE p.model = 'default_risk'"
        ).fetchall()
    finally:
        con.close()
    assert rows == (SAMPLE_ROWS, SAMPLE_ROWS, run_id, run_id, model.version)
    assert made_by == [origin]

    markdown = [a for a in artifacts if a.type == "markdown"]
    assert [a.key for a in markdown] == ["run-default-risk"]
    body = str(markdown[0].data)
    assert run_id in body and dataset.ref in body and "Published: yes" in body
