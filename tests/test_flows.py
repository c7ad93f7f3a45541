"""The Prefect flows and deployments: end to end under one Prefect test server per session.

Flow tests are marked slow (they start Prefect's API, ~10 s once per session). The deployment and retry
classification tests need no server.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from prefect import flow, get_client, get_run_logger
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import Artifact, TaskRun
from prefect.client.schemas.schedules import CronSchedule
from prefect.settings import PREFECT_API_URL
from prefect.states import State

import batchml
from batchml import provenance
from batchml.models.registry import RegistryReader
from batchml.scoring.publications import PublicationLog
from batchml.scoring.runs import get_run
from deployments import DEPLOYMENTS
from flows.common import RETRY, is_transient
from flows.ingest import snapshot_dataset
from flows.pipeline import pipeline
from flows.score import score_and_publish
from flows.train import train_model
from tests.conftest import PROJECT_TOML, SAMPLE_ROWS

ROOT = Path(__file__).resolve().parent.parent

# -- fixtures ----------------------------------------------------------------------------------------------


class FlakyFileSystem(LocalFileSystem):
    """Local disk that raises the queued `faults` on the next directory listings, like a throttled store."""

    protocol = "flaky"
    faults: list[OSError] = []  # noqa: RUF012 - shared on purpose: fsspec caches instances

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        return super()._strip_protocol(str(path).removeprefix("flaky://"))

    def ls(self, path: str, detail: bool = False, **kwargs: Any) -> Any:
        if FlakyFileSystem.faults:
            raise FlakyFileSystem.faults.pop(0)
        return super().ls(path, detail=detail, **kwargs)


@pytest.fixture
def flaky_config(tmp_path: Path, loans_csv: Path) -> Iterator[str]:
    """A project whose storage is a FlakyFileSystem; yields its config path."""
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    toml = PROJECT_TOML.format(source=loans_csv).replace(
        'root = "store"', f'root = "flaky://{tmp_path}/store"'
    )
    (tmp_path / "batchml.toml").write_text(toml)
    yield str(tmp_path / "batchml.toml")
    FlakyFileSystem.faults.clear()


def _config(project: batchml.Project) -> str:
    return str(project.base_dir / "batchml.toml")


def _flow_run_id(state: State[Any]) -> UUID:
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    return flow_run_id


def _task_runs(state: State[Any]) -> list[TaskRun]:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[_flow_run_id(state)]))
        )


def _artifacts(state: State[Any]) -> list[Artifact]:
    """Artifacts left by a flow run and its subflow runs."""
    root = _flow_run_id(state)
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[root]))
        )
        ids = [root, *(run.id for run in children)]
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
        )


# -- no server needed --------------------------------------------------------------------------------------


def test_deployments_are_declared_sanely() -> None:
    flows = {spec.flow.name for spec in DEPLOYMENTS}
    assert flows == {"snapshot-dataset", "train-model", "score-and-publish", "monitor", "retrain"}
    names = [spec.name for spec in DEPLOYMENTS]
    assert len(set(names)) == len(names)
    for spec in DEPLOYMENTS:
        deployment = spec.to_deployment()
        assert deployment.entrypoint is not None and deployment.entrypoint.startswith("flows/")
        assert deployment.parameters == spec.parameters and deployment.concurrency_limit == 1
        if spec.cron is None:  # started by its triggers only: they supply the parameters the defaults lack
            assert spec.triggers and not deployment.schedules
            for trigger in spec.triggers:
                example = {k: ["x"] if k.endswith("_ids") else "x" for k in trigger["parameters"]}
                spec.flow.validate_parameters({**spec.parameters, **example})
            continue
        CronSchedule(cron=spec.cron, timezone=spec.timezone)  # raises on a bad cron or timezone
        zoneinfo.ZoneInfo(spec.timezone)
        minute, hour, day, month, weekday = spec.cron.split()
        assert minute.isdigit() and hour.isdigit() and day == month == "*"
        assert (weekday == "*") == spec.name.startswith("daily-"), spec.name
        spec.flow.validate_parameters(dict(spec.parameters))  # defaults alone make a valid run
        spec.flow.validate_parameters({**spec.parameters, "config": "other/batchml.toml"})  # overridable
        assert [s.schedule.cron for s in deployment.schedules] == [spec.cron]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (batchml.TransientError("throttled"), True),
        (TimeoutError("read timed out"), True),
        (ConnectionResetError("reset by peer"), True),
        (batchml.InvalidNameError("dataset name", "../x", "[a-z]"), False),
        (batchml.SchemaError("missing column"), False),
        (batchml.ConfigError("bad toml"), False),
        (FileNotFoundError("no such file"), False),
        (PermissionError("denied"), False),
        (ValueError("bug"), False),
    ],
)
def test_only_transient_errors_are_retried(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
    assert RETRY.task_options()["retries"] >= 1


# -- flows under the Prefect test server -------------------------------------------------------------------


@flow
def _logs_a_url(url: str) -> None:
    get_run_logger().info("cannot open %s", url)


def test_prefect_log_lines_are_redacted(prefect_api: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    logging.getLogger("prefect").info("cannot open %s", "s3://key:not-for-logs@bucket/x")
    _logs_a_url("s3://key:not-for-logs@bucket/y")
    logged = [r.getMessage() for r in caplog.records if "cannot open" in r.getMessage()]
    assert logged == ["cannot open s3://***@bucket/x", "cannot open s3://***@bucket/y"]
    assert "not-for-logs" not in caplog.text


@pytest.mark.slow
def test_pipeline_publishes_predictions_and_leaves_artifacts(
    prefect_api: None, project: batchml.Project
) -> None:
    state = pipeline(config=_config(project), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    [summary] = result["models"]
    assert summary["predictions"] == summary["dataset_rows"] == SAMPLE_ROWS
    assert summary["published"] == "yes"

    con = batchml.connect(project)
    try:
        count, runs = con.execute("SELECT count(*), any_value(run_id) FROM predictions").fetchone() or (0, "")
        alias = con.execute("SELECT version FROM model_aliases WHERE alias = 'champion'").fetchone()
    finally:
        con.close()
    assert (count, runs) == (SAMPLE_ROWS, summary["run_id"])
    assert alias == (summary["model_version"],)
    assert result["database"] == str(batchml.database_path(project))
    # Each event names its request within its flow run: a retried task would find it and append nothing.
    [promotion] = RegistryReader(project.storage).events("default_risk")
    assert re.fullmatch(r"prefect:[0-9a-f-]{36}:promote:default_risk:champion:1", promotion["operation"])
    [publication] = PublicationLog(project.storage).events("default_risk")
    expected = rf"prefect:[0-9a-f-]{{36}}:publish:default_risk:{summary['run_id']}"
    assert re.fullmatch(expected, publication["operation"])

    artifacts = {a.key: a for a in _artifacts(state)}
    assert {"dataset-loans", "model-default-risk", "run-default-risk", "pipeline", "pipeline-table"} <= set(
        artifacts
    )
    run_md = str(artifacts["run-default-risk"].data)
    assert summary["run_id"] in run_md and f"{SAMPLE_ROWS:,}" in run_md
    assert "WHERE entity_id = 'L" in run_md and result["database"] in run_md
    assert "predict s" in run_md and "peak RSS MiB" in run_md  # where scoring spent its time
    assert "publish: its serving build took" in run_md  # and publishing (`run_stats.publish_s`)
    assert summary["dataset"] in str(artifacts["dataset-loans"].data)
    assert "auc" in str(artifacts["model-default-risk"].data)
    table = artifacts["pipeline-table"].data
    assert isinstance(table, str)
    rows = json.loads(table)
    assert rows[0]["run_id"] == summary["run_id"] and rows[0]["predictions"] == SAMPLE_ROWS


@pytest.mark.slow
def test_records_written_by_a_flow_run_lead_back_to_it_in_sql(
    prefect_api: None, project: batchml.Project
) -> None:
    """Card, alias event, run manifest and publication event name the flow run that wrote them."""
    batchml.snapshot_dataset(project, "loans")
    trained = train_model("default_risk", config=_config(project), return_state=True)
    scored = score_and_publish("default_risk", config=_config(project), return_state=True)
    assert trained.is_completed() and scored.is_completed(), (trained.message, scored.message)
    by_train = {"flow_run_id": str(_flow_run_id(trained)), "deployment_id": None, "flow_name": "train-model"}
    by_score = {
        "flow_run_id": str(_flow_run_id(scored)),
        "deployment_id": None,  # run by hand, not from a deployment (test_deployments_server has one)
        "flow_name": "score-and-publish",
    }
    registry = RegistryReader(project.storage)
    run_id = scored.result()["run_id"]
    records = {
        "card": registry.get("default_risk", 1).card,
        "promotion": registry.events("default_risk")[0],
        "manifest": get_run(project.storage, "default_risk", run_id).manifest,
        "publication": PublicationLog(project.storage).events("default_risk")[0],
    }
    ids = {name: {k: r.get(k) for k in provenance.FIELDS} for name, r in records.items()}
    assert ids == {"card": by_train, "promotion": by_train, "manifest": by_score, "publication": by_score}

    con = batchml.connect(project)
    try:
        made_by = con.execute(  # README's query: from a prediction to the flow run that made it
            "SELECT DISTINCT r.flow_run_id, r.flow_name FROM predictions p JOIN runs r USING (run_id)"
        ).fetchall()
        trained_by = con.execute("SELECT flow_run_id FROM models").fetchall()
        promoted_by = con.execute("SELECT flow_run_id FROM alias_events").fetchall()
        published_by = con.execute("SELECT flow_run_id FROM publications").fetchall()
    finally:
        con.close()
    assert made_by == [(by_score["flow_run_id"], "score-and-publish")]
    assert trained_by == promoted_by == [(by_train["flow_run_id"],)]
    assert published_by == [(by_score["flow_run_id"],)]


@pytest.mark.slow
def test_rerun_of_score_and_publish_is_a_noop(
    prefect_api: None, project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    first = score_and_publish("default_risk", config=_config(project))
    link = os.readlink(batchml.database_path(project))
    second = score_and_publish("default_risk", config=_config(project))
    assert second["run_id"] == first["run_id"]
    assert (first["reused"], second["reused"]) == (False, True)
    assert (first["published"]["changed"], second["published"]["changed"]) == (True, False)
    assert second["telemetry"] == first["telemetry"] and first["telemetry"]["seconds"]["predict"] > 0
    assert len(PublicationLog(project.storage).events("default_risk")) == 1
    assert os.readlink(batchml.database_path(project)) == link  # no new serving file either
    assert second["serving"]["sql"] == first["serving"]["sql"]
    with get_client(sync_client=True) as client:  # one flow run per model at a time; the slot was released
        limit = client.read_global_concurrency_limit_by_name("batchml-score-default_risk")
    assert (limit.limit, limit.active_slots) == (1, 0)


@pytest.mark.slow
def test_two_score_flow_runs_of_one_model_take_turns(
    prefect_api: None, project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    """The per-model concurrency limit: two processes starting the flow together never work at once."""
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONPATH": str(ROOT)}
    start_at = time.time() + 8.0  # both interpreters have imported prefect by then
    drivers = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "flow_driver.py"), _config(project), str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [driver.communicate(timeout=300) for driver in drivers]
    assert [d.returncode for d in drivers] == [0, 0], [err[-2000:] for _, err in outputs]
    runs = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    first, second = sorted(run["inside"] for run in runs)
    assert first[0] >= start_at - 1 and second[0] >= first[1], f"the two runs overlapped: {first}, {second}"
    assert runs[0]["result"]["run_id"] == runs[1]["result"]["run_id"]
    assert sorted(run["result"]["reused"] for run in runs) == [False, True]
    assert len(PublicationLog(project.storage).events("default_risk")) == 1


@pytest.mark.slow
def test_transient_storage_errors_are_retried_terminal_errors_are_not(
    prefect_api: None, flaky_config: str
) -> None:
    FlakyFileSystem.faults[:] = [TimeoutError("listing timed out")]
    state = snapshot_dataset("loans", config=flaky_config, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["rows"] == SAMPLE_ROWS
    [attempts] = [t.run_count for t in _task_runs(state)]
    assert attempts == 2  # failed once, retried once

    FlakyFileSystem.faults[:] = [PermissionError("access denied"), TimeoutError("never reached")]
    state = snapshot_dataset("loans", config=flaky_config, return_state=True)
    assert state.is_failed()
    assert [t.run_count for t in _task_runs(state)] == [1]
    with pytest.raises(PermissionError):
        state.result()

    state = snapshot_dataset("../x", config=flaky_config, return_state=True)
    assert state.is_failed()
    assert [t.run_count for t in _task_runs(state)] == [1]
    with pytest.raises(batchml.InvalidNameError, match=r"'\.\./x' is invalid"):
        state.result()


@pytest.mark.slow
def test_train_flow_promotes_only_when_every_gate_passed(
    prefect_api: None, project: batchml.Project, loans_csv: Path
) -> None:
    config = project.base_dir / "batchml.toml"
    gates = "\n[models.default_risk.gates]\nmetrics = {auc = {min = 0.99}}\n"
    config.write_text(PROJECT_TOML.format(source=loans_csv) + gates)
    batchml.snapshot_dataset(project, "loans")
    state = train_model("default_risk", config=str(config), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["promotion"] is None and result["held_back"].startswith("gates failed: metrics: auc min")
    assert RegistryReader(project.storage).aliases("default_risk") == {}
    markdown = str({a.key: a for a in _artifacts(state)}["model-default-risk"].data)
    assert "**not promoted** to `champion`: gates failed" in markdown
    assert "## Gates: FAILED" in markdown and "| FAIL |" in markdown

    # The pipeline cannot score without a champion: it says the version was trained, why it was held back
    # and how to promote it anyway (it used to fail with "alias 'champion' not found; available: none").
    state = pipeline(config=str(config), return_state=True)
    assert state.is_failed()
    with pytest.raises(batchml.PromotionError) as stopped:
        state.result()
    message = str(stopped.value)
    assert "default_risk@1 was trained but not promoted to 'champion' (gates failed: metrics: auc" in message
    assert "batchml models promote default_risk 1 --alias champion --force --reason" in message

    config.write_text(config.read_text().replace("min = 0.99}}", "min = 0.6}}\nauto_promote = false"))
    result = train_model("default_risk", config=str(config))
    assert result["promotion"] is None and result["held_back"] == "gates.auto_promote is false"
    assert result["gates"]["passed"] and result["version"] == 2
    assert RegistryReader(project.storage).aliases("default_risk") == {}
    with pytest.raises(batchml.PromotionError, match=r"auto_promote is false\), and no version holds"):
        pipeline(config=str(config))


# -- monitoring --------------------------------------------------------------------------------------------

CHAIN_SQL = """
SELECT a.id AS alert_id, r.id AS retrain_id, r.model_version, e.reason AS promote_reason,
       p.run_id, p.reason AS publish_reason
FROM alerts a
JOIN retrains r ON r.model = a.model AND list_contains(r.alert_ids, a.id)
JOIN alias_events e ON e.model = r.model AND e.to_version = r.model_version AND contains(e.reason, r.id)
JOIN publications p ON p.model = r.model AND p.run_id = r.run_id AND contains(p.reason, r.id)
WHERE a.model = 'default_risk' AND a.kind = 'drift'
"""


def _drifted_source(loans_csv: Path, path: Path) -> str:
    """The sample loans with most features shifted well beyond the training distribution."""
    import polars as pl

    from batchml.testing import shift_loans

    shift_loans(pl.read_csv(loans_csv)).write_csv(path)
    return str(path)


@pytest.mark.slow
def test_monitor_on_unchanged_data_raises_no_alert_and_does_not_retrain(
    prefect_api: None, project: batchml.Project, published: batchml.PredictionRun
) -> None:
    """The published run scored the training data itself: nothing drifted, so nothing is retrained."""
    from flows.monitor import monitor

    state = monitor("default_risk", config=_config(project), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["run_id"] == published.run_id
    # A link artifact leads from the flow run's page to the Evidently report.
    [link] = [a for a in _artifacts(state) if a.key == "report-default-risk"]
    assert f"]({result['report']['html_uri']})" in str(link.data)  # Prefect stores a link as markdown
    assert result["drift"]["verdict"] == "stable" and result["drift"]["prediction_drifted"] is False
    assert result["alerts"] == [] and result["new_alerts"] == [] and result["retrain"] is None
    assert len(RegistryReader(project.storage).list_versions("default_risk")) == 1
    assert PublicationLog(project.storage).current("default_risk") == published.run_id


@pytest.mark.slow
def test_monitor_alerts_on_drift_and_retrains_once(
    prefect_api: None,
    project: batchml.Project,
    published: batchml.PredictionRun,
    loans_csv: Path,
    tmp_path: Path,
) -> None:
    from flows.monitor import monitor

    # Drifted data arrives at the configured source: the retrain re-snapshots it and trains on what drifted.
    drifted_csv = _drifted_source(loans_csv, tmp_path / "drifted.csv")
    toml = Path(_config(project))
    toml.write_text(toml.read_text().replace(str(loans_csv), drifted_csv))
    drifted = batchml.snapshot_dataset(project, "loans", drifted_csv)
    run = batchml.score(project, "default_risk", dataset=drifted.ref)
    batchml.publish(project, "default_risk", run.run_id, reason="drifted data arrives")

    state = monitor("default_risk", config=_config(project), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["run_id"] == run.run_id and result["drift"]["verdict"] == "drifted"
    kinds = {a["kind"] for a in result["new_alerts"]}
    assert "drift" in kinds and len(result["events"]) == len(result["new_alerts"]) and all(result["events"])
    retrain = result["retrain"]
    assert retrain["status"] == "promoted" and retrain["dataset_version"] == drifted.ref
    assert retrain["model_version"] == 2 and retrain["published"]
    assert PublicationLog(project.storage).current("default_risk") == retrain["run_id"]
    assert result["report"]["html_uri"].endswith(".html")
    artifacts = {a.key: a for a in _artifacts(state)}
    monitor_md = str(artifacts["monitor-default-risk"].data)
    assert "drifted" in monitor_md and result["report"]["html_uri"] in monitor_md
    assert retrain["retrain_id"] in monitor_md

    # The drifted run again, inside the debounce window: the breach is current but already alerted, and no
    # second retrain starts.
    again = monitor("default_risk", run_id=run.run_id, config=_config(project))
    assert again["alerts"] and again["new_alerts"] == [] and again["retrain"] is None
    assert len(RegistryReader(project.storage).list_versions("default_risk")) == 2

    con = batchml.connect(project)
    try:
        chain = con.execute(CHAIN_SQL).fetchall()
        retrains = con.execute("SELECT count(*) FROM retrains").fetchone()
    finally:
        con.close()
    assert retrains == (1,)
    [(alert_id, retrain_id, version, promote_reason, run_id, publish_reason)] = chain
    assert (retrain_id, version, run_id) == (retrain["retrain_id"], 2, retrain["run_id"])
    assert alert_id in promote_reason and alert_id in publish_reason
