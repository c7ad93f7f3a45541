"""`batchml run FLOW`: the flow registry, parameters checked before Prefect loads, and one real run."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner, Result

import batchml
from batchml.cli import _run, app
from batchml.errors import NotFoundError
from batchml.testing import write_loans
from tests.conftest import PROJECT_TOML

runner = CliRunner()


@pytest.fixture
def no_flow_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The calls `batchml run` would have made into Prefect: recorded, not made."""
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(_run, "_run_flow", lambda *args: calls.append(args))
    return calls


def invoke(*args: str, cwd: Path | None = None) -> Result:
    env = {"BATCHML_CONFIG": None, "BATCHML_STORAGE": None}
    if cwd is None:
        return runner.invoke(app, list(args), env=env)
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, list(args), env=env)
    finally:
        os.chdir(old)


def one_error_line(result: Result, after: str = "") -> str:
    """The one `error:` line a failure ends with (after the `after` line, if one is expected)."""
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == (2 if after else 1) and lines[0].startswith(after), result.stderr
    assert lines[-1].startswith("error: ")
    return lines[-1]


def test_an_unknown_flow_is_one_line_naming_it_and_the_flows(no_flow_runs: list[tuple[Any, ...]]) -> None:
    error = one_error_line(invoke("run", "pipelin"))
    assert "'pipelin'" in error and "pipeline, snapshot, train, score, monitor" in error
    assert no_flow_runs == []


@pytest.mark.parametrize(
    ("flow", "params", "expected"),
    [
        ("pipeline", ["modle=x"], "flow 'pipeline' has no parameter 'modle': use model, alias, publish, "),
        ("pipeline", ["publish=maybe"], "parameter 'publish' of flow 'pipeline' takes true or false, not"),
        ("score", ["model=m", "partitions=two"], "parameter 'partitions' of flow 'score' takes an integer"),
        ("train", ["model=m", "params=[1]"], "parameter 'params' of flow 'train' takes a JSON object or"),
        ("monitor", ["run_id=r"], "flow 'monitor' needs model: pass -p model=VALUE"),
        ("snapshot", ["name=loans", "config=x"], "'config' of flow 'snapshot' is set with --config PATH"),
        ("train", ["model"], "parameter 'model' is not KEY=VALUE"),
        ("train", ["model=a", "model=b"], "parameter 'model' of flow 'train' is given twice"),
    ],
)
def test_a_bad_parameter_is_one_line_before_anything_runs(
    flow: str, params: list[str], expected: str, no_flow_runs: list[tuple[Any, ...]]
) -> None:
    args = [arg for param in params for arg in ("-p", param)]
    assert expected in one_error_line(invoke("run", flow, *args))
    assert no_flow_runs == []


def test_a_missing_config_is_one_line(tmp_path: Path, no_flow_runs: list[tuple[Any, ...]]) -> None:
    error = one_error_line(invoke("run", "pipeline", cwd=tmp_path))
    assert "'batchml.toml' does not exist: pass --config PATH" in error
    assert no_flow_runs == []


@pytest.mark.quick_variant_of("test_the_cli_works_without_prefect")
def test_without_prefect_a_flow_command_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, no_flow_runs: list[tuple[Any, ...]]
) -> None:
    """As `pip install batchml` without its `prefect` extra leaves it (tests/test_packaging.py has one)."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "prefect" else find_spec(name, *args)
    )
    error = one_error_line(invoke("run", "pipeline", "-p", "modle=x"))  # before the parameters are checked
    assert error == f"error: {_run.NO_PREFECT.format(name='pipeline')}"
    assert error.endswith("needs Prefect, which is not installed: pip install 'batchml[prefect]'")
    assert no_flow_runs == []


def test_the_listed_parameters_are_the_flows_own() -> None:
    """Read from source without importing Prefect, they match the imported flows' signatures exactly."""
    listed = json.loads(invoke("run", "--json").stdout)
    assert list(listed) == list(_run.FLOWS) == ["pipeline", "snapshot", "train", "score", "monitor"]
    for name, entry in _run.FLOWS.items():
        module, _, function = entry.target.partition(":")
        flow = getattr(__import__(module, fromlist=[function]), function)
        real = inspect.signature(flow.fn).parameters
        assert list(listed[name]["parameters"]) == list(real), name
        required = [p for p, v in listed[name]["parameters"].items() if v["default"] is None]
        assert required == [p for p, v in real.items() if v.default is inspect.Parameter.empty], name
    assert listed["monitor"]["parameters"]["run_id"] == {"type": "str | None", "default": "None"}


def test_run_passes_typed_values_and_the_absolute_config_and_summarises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_project: Callable[..., batchml.Project]
) -> None:
    make_project(folder="proj")
    calls: list[tuple[Any, ...]] = []
    result = {"dataset": "loans@abc", "rows": 1200, "columns": 13, "source": "/x/loans.csv", "reused": False}
    monkeypatch.setattr(_run, "_run_flow", lambda *args: calls.append(args) or result)

    config = "proj/batchml.toml"
    shown = invoke("run", "snapshot", "-p", "name=loans", "-p", "source=none", "--config", config,
                   cwd=tmp_path)  # fmt: skip
    assert shown.exit_code == 0, shown.stderr
    assert calls == [
        (
            "flows.ingest:snapshot_dataset",
            "snapshot",
            {"name": "loans", "source": None, "config": str(tmp_path / "proj" / "batchml.toml")},
            False,
        )
    ]
    assert "loans@abc (new version)" in shown.stdout and "1,200 (13 columns)" in shown.stdout

    as_json = invoke("--config", config, "run", "snapshot", "-p", "name=loans", "--json", cwd=tmp_path)
    assert json.loads(as_json.stdout) == result


def test_a_failing_flow_is_one_line(monkeypatch: pytest.MonkeyPatch, project: batchml.Project) -> None:
    def fail(*args: Any) -> None:
        raise NotFoundError("published run of model 'default_risk'", "current", ["publish a run first"])

    monkeypatch.setattr(_run, "_run_flow", fail)
    config = str(project.base_dir / "batchml.toml")
    result = invoke("run", "monitor", "-p", "model=default_risk", "--config", config)
    assert "published run of model 'default_risk'" in one_error_line(result, after="running flow monitor on")


@pytest.mark.slow  # a fresh process starts Prefect's ephemeral API and runs the whole pipeline
def test_installed_batchml_runs_the_pipeline_from_any_folder(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "batchml"
    if not script.exists():
        pytest.skip("the batchml console script is not installed")
    project = tmp_path / "project"
    project.mkdir()
    write_loans(project / "loans.csv", rows=1500, seed=7)
    (project / "batchml.toml").write_text(PROJECT_TOML.format(source="loans.csv"))
    elsewhere = tmp_path / "elsewhere"  # outside the repository: flows come from the installed package
    elsewhere.mkdir()
    drop = ("BATCHML_", "PREFECT_", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    # The ephemeral API's longer startup timeout (flows/__init__.py) is what Prefect reads under `batchml
    # run`: the flows package is imported (to read a signature) before anything imports Prefect.
    check = (
        "from batchml.cli import _run; _run.read_signature('flows.pipeline:pipeline');"
        "from prefect.settings import get_current_settings as s;"
        "print(s().server.ephemeral.startup_timeout_seconds)"
    )
    timeout = subprocess.run(
        [sys.executable, "-c", check], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert timeout.stdout.strip() == "180", timeout.stderr
    assert timeout.stdout.strip() == "180"

    done = subprocess.run(
        [str(script), "run", "pipeline", "--config", str(project / "batchml.toml"), "--json"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    result = json.loads(done.stdout)
    (model,) = result["models"]
    assert (model["model"], model["dataset_rows"], model["published"]) == ("default_risk", 1500, "yes")
    assert result["database"] == str(project / "store" / "serving" / "batchml.duckdb")
    con = duckdb.connect(result["database"], read_only=True)
    try:
        published = con.execute("SELECT run_id, count(*) FROM predictions GROUP BY run_id").fetchall()
    finally:
        con.close()
    assert published == [(model["run_id"], 1500)]
