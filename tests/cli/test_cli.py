"""The `batchml` command: in-process through typer's CliRunner, and one run of the installed script."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import typer
from typer.testing import CliRunner, Result

import batchml
from batchml.cli import _datasets, _serving, app
from batchml.names import NAME_PATTERN
from batchml.testing import write_loans

runner = CliRunner()


def config_of(project: batchml.Project) -> Path:
    return project.base_dir / "batchml.toml"


def cli(project: batchml.Project | None, *args: str, code: int = 0) -> Result:
    """Run `batchml [--config <project>] ARGS` in-process and check the exit code."""
    prefix = ["--config", str(config_of(project))] if project else []
    result = runner.invoke(app, [*prefix, *args], env={"BATCHML_CONFIG": None, "BATCHML_STORAGE": None})
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def cli_json(project: batchml.Project | None, *args: str) -> Any:
    """Run a command with --json: stdout must be exactly one JSON document."""
    return json.loads(cli(project, *args, "--json").stdout)


def cli_error(project: batchml.Project | None, *args: str) -> str:
    """Run a command that must fail cleanly: exit 1, one `error:` line on stderr, nothing on stdout."""
    result = cli(project, *args, code=1)
    assert isinstance(result.exception, SystemExit), result.exception  # not an unexpected crash
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    return result.stderr


def stored(project: batchml.Project) -> list[tuple[str, int]]:
    """Every file under the storage root with its size: what 'nothing changed' compares."""
    root = Path(project.storage.root)
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())


def command_paths(command: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        paths += command_paths(sub, (*prefix, name))
    return paths


@pytest.mark.parametrize("path", command_paths(typer.main.get_command(app)), ids=" ".join)
def test_every_command_and_group_has_help(path: tuple[str, ...]) -> None:
    result = cli(None, *path, "--help")
    assert "Usage: " in result.stdout
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    first_line = (command.help or "").splitlines()[0]
    assert first_line and first_line[:40] in " ".join(result.stdout.split())


def test_usage_errors_keep_exit_code_2(project: batchml.Project) -> None:
    cli(project, "datasets", "show", code=2)
    cli(project, "no-such-command", code=2)
    cli(project, "score", "default_risk", "--publish-typo", code=2)


def test_version_and_info(project: batchml.Project, tmp_path: Path) -> None:
    assert cli(None, "--version").stdout.strip() == f"batchml {batchml.__version__}"
    info = cli_json(project, "info")
    assert info["config"] == str(config_of(project))
    assert info["storage"] == project.storage.url
    assert info["serving_db"] == str(batchml.database_path(project))
    assert info["serving_db_exists"] is False
    assert info["models"]["default_risk"]["entity_id"] == "loan_id"
    other = cli_json(project, "--storage", str(tmp_path / "elsewhere"), "info")
    assert other["storage"] == str(tmp_path / "elsewhere")
    assert "default_risk" in cli(project, "info").stdout
    assert "not found" in cli_error(None, "--config", str(tmp_path / "missing.toml"), "info")


def test_sample_data(tmp_path: Path) -> None:
    out = cli_json(None, "sample-data", str(tmp_path / "loans.parquet"), "--rows", "50", "--seed", "3")
    assert out == {"path": str(tmp_path / "loans.parquet"), "rows": 50, "seed": 3, "format": "parquet"}
    assert pl.read_parquet(tmp_path / "loans.parquet").height == 50
    assert "x.txt'" in cli_error(None, "sample-data", str(tmp_path / "x.txt"))


def test_datasets_snapshot_list_show_diff(project: batchml.Project, tmp_path: Path) -> None:
    first = cli_json(project, "datasets", "snapshot", "loans")
    assert (first["rows"], first["files"], first["reused"]) == (4000, 1, False)
    assert cli_json(project, "datasets", "snapshot", "loans")["reused"] is True
    smaller = write_loans(tmp_path / "later.csv", rows=300, seed=8)
    second = cli_json(project, "datasets", "snapshot", "loans", str(smaller))
    assert (second["rows"], second["reused"], second["parent"]) == (300, False, first["version"])
    assert second["source"] == str(smaller)

    listing = cli_json(project, "datasets", "list")["datasets"]
    assert listing == [
        {
            "name": "loans",
            "versions": 2,
            "latest": second["version"],
            "rows": 300,
            "created_at": second["created_at"],
        }
    ]
    versions = cli_json(project, "datasets", "list", "loans")["versions"]
    assert [v["version"] for v in versions] == [second["version"], first["version"]]

    shown = cli_json(project, "datasets", "show", f"loans@{first['version'][:6]}")
    assert shown["ref"] == first["ref"] and shown["rows"] == 4000
    assert {c["name"] for c in shown["schema"]} >= {"loan_id", "defaulted", "credit_score"}
    assert len(shown["files"][0]["sha256"]) == 64 and shown["files"][0]["size"] > 0
    assert shown["summary"]["credit_score"]["count"] == 4000
    table = cli(project, "datasets", "show", "loans@latest").stdout
    assert "credit_score" in table and second["version"] in table

    diff = cli_json(project, "datasets", "diff", first["ref"], "loans@latest")
    assert diff["rows"] == {"old": 4000, "new": 300, "change": -3700}
    assert diff["added_columns"] == [] and diff["removed_columns"] == []
    assert "-3,700" in cli(project, "datasets", "diff", first["ref"], second["ref"]).stdout
    assert "loans" in cli(project, "datasets", "list").stdout

    # Back to the first source: its version is the latest again, and training uses it.
    back = cli_json(project, "datasets", "snapshot", "loans")
    assert back["reused"] is True and back["version"] == first["version"]
    assert cli_json(project, "datasets", "list")["datasets"][0]["latest"] == first["version"]
    assert cli_json(project, "datasets", "show", "loans@latest")["version"] == first["version"]
    assert cli_json(project, "train", "default_risk")["dataset_version"] == first["ref"]


def test_snapshot_of_an_invalid_name_stores_nothing(project: batchml.Project, loans_csv: Path) -> None:
    batchml.snapshot_dataset(project, "loans")
    before = stored(project)
    message = cli_error(project, "datasets", "snapshot", "../x", str(loans_csv))
    assert "'../x'" in message and NAME_PATTERN in message
    assert stored(project) == before


def test_unknown_dataset_version_lists_the_existing_ones(project: batchml.Project) -> None:
    version = batchml.snapshot_dataset(project, "loans")
    message = cli_error(project, "datasets", "show", "loans@ffffffff")
    assert "'ffffffff'" in message and version.version in message
    assert "'nope'" in cli_error(project, "datasets", "list", "nope")


def test_train_with_params_and_bad_params(project: batchml.Project) -> None:
    batchml.snapshot_dataset(project, "loans")
    before = stored(project)
    message = cli_error(project, "train", "default_risk", "--param", "num_leaves")
    assert "--param 'num_leaves'" in message and "KEY=VALUE" in message
    assert "'=3'" in cli_error(project, "train", "default_risk", "--param", "=3")
    assert "configured models: default_risk" in cli_error(project, "train", "nope")
    assert stored(project) == before

    args = ["train", "default_risk", "--param", "num_leaves=7", "--param", "boosting=gbdt"]
    trained = cli_json(project, *args)
    assert (trained["version"], trained["reused"]) == (1, False)
    assert trained["dataset_version"] == batchml.snapshot_dataset(project, "loans").ref
    assert 0.5 < trained["metrics"]["auc"] <= 1
    assert trained["top_features"][0]["importance"] >= trained["top_features"][-1]["importance"]
    params = cli_json(project, "models", "show", "default_risk@1")["card"]["params"]
    assert (params["num_leaves"], params["boosting"]) == (7, "gbdt")  # JSON when it parses, else string
    assert cli_json(project, *args)["reused"] is True


def test_models_list_and_show(project: batchml.Project, champion: batchml.ModelVersion) -> None:
    models = cli_json(project, "models", "list")["models"]
    assert models == [
        {"model": "default_risk", "versions": 1, "latest": 1, "aliases": {"champion": 1}, "configured": True}
    ]
    card = cli_json(project, "models", "show", "default_risk")
    assert (card["ref"], card["aliases"]) == ("default_risk@1", ["champion"])
    features = {f["name"]: f for f in card["card"]["features"]}
    assert features["region"]["kind"] == "categorical" and features["credit_score"]["dtype"]
    assert {"git", "packages", "metrics", "importance", "dataset_version"} <= set(card["card"])
    text = cli(project, "models", "show", "default_risk@1").stdout
    assert "credit_score" in text and "lightgbm" in text
    assert "'nope'" in cli_error(project, "models", "show", "nope")
    assert "available: 1" in cli_error(project, "models", "show", "default_risk@9")
    assert "default_risk" in cli(project, "models", "list").stdout


def test_history_at_a_time_between_two_promotions(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    second = batchml.train(project, "default_risk", params={"num_leaves": 7})
    time.sleep(0.01)
    between = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    event = cli_json(project, "models", "promote", "default_risk", str(second.version), "--reason", "better")
    assert (event["from_version"], event["to_version"], event["reason"]) == (1, 2, "better")

    then = cli_json(project, "models", "history", "default_risk", "--at", between)
    assert then["aliases"] == {"champion": 1}
    now = cli_json(project, "models", "history", "default_risk", "--alias", "champion")
    assert now["aliases"] == {"champion": 2}
    assert [e["to_version"] for e in now["events"]] == [1, 2]
    assert "champion" in cli(project, "models", "history", "default_risk", "--at", between).stdout

    back = cli_json(project, "models", "rollback", "default_risk", "--reason", "oops")
    assert (back["action"], back["from_version"], back["to_version"]) == ("rollback", 2, 1)
    assert cli_json(project, "models", "history", "default_risk")["aliases"] == {"champion": 1}
    assert "ISO-8601" in cli_error(project, "models", "history", "default_risk", "--at", "yesterday")
    assert "timezone" in cli_error(project, "models", "history", "default_risk", "--at", "2026-01-01T00:00")


def test_score_publish_list_and_query(project: batchml.Project, champion: batchml.ModelVersion) -> None:
    run = cli_json(project, "score", "default_risk")
    assert (run["rows"], run["model_version"], run["published"], run["reused"]) == (4000, 1, True, False)
    assert Path(run["serving_db"]).exists()
    assert cli_json(project, "score", "default_risk", "--version", "1", "--no-publish")["reused"] is True
    runs = cli_json(project, "predictions", "list", "default_risk")["runs"]
    assert [(r["run_id"], r["rows"], r["published"]) for r in runs] == [(run["run_id"], 4000, True)]
    assert "'nope'" in cli_error(project, "predictions", "list", "nope")

    sql = "SELECT entity_id, prediction, scored_at FROM predictions WHERE entity_id = 'L000000042'"
    rows = cli_json(project, "query", sql)["rows"]
    assert len(rows) == 1 and rows[0]["entity_id"] == "L000000042" and 0 <= rows[0]["prediction"] <= 1
    assert datetime.fromisoformat(rows[0]["scored_at"]).tzinfo is not None
    assert "L000000042" in cli(project, "query", sql).stdout

    before = stored(project)
    assert "SELECT" in cli_error(project, "query", "DELETE FROM predictions")
    assert "SELECT" in cli_error(project, "query", "SELECT 1; DROP TABLE predictions")
    assert stored(project) == before
    assert cli_json(project, "query", "SELECT count(*) AS n FROM predictions")["rows"] == [{"n": 4000}]
    assert "give --alias or --version" in cli_error(
        project, "score", "default_risk", "--alias", "a", "--version", "1"
    )


def test_query_output_is_json_safe(project: batchml.Project) -> None:
    batchml.rebuild_catalog(project)
    sql = (
        "SELECT 1.50::DECIMAL(10, 2) AS d, TIMESTAMPTZ '2026-01-02 03:04:05+00' AS t, "
        "DATE '2026-01-02' AS day, 'nan'::DOUBLE AS n, INTERVAL 90 SECOND AS i, NULL AS nothing, "
        "[1, 2] AS l, {'a': 1} AS s"
    )
    out = cli_json(project, "query", sql)
    assert out["columns"] == ["d", "t", "day", "n", "i", "nothing", "l", "s"]
    row = out["rows"][0]
    assert row["d"] == "1.50" and datetime.fromisoformat(row["t"]) == datetime(
        2026, 1, 2, 3, 4, 5, tzinfo=UTC
    )
    assert (row["day"], row["n"], row["i"], row["nothing"], row["l"], row["s"]) == (
        "2026-01-02",
        None,
        90.0,
        None,
        [1, 2],
        {"a": 1},
    )


def test_predictions_publish_and_rollback(
    project: batchml.Project, published: batchml.PredictionRun, tmp_path: Path
) -> None:
    assert "'previous'" in cli_error(project, "predictions", "rollback", "default_risk")
    batchml.snapshot_dataset(project, "loans", str(write_loans(tmp_path / "new.csv", rows=200, seed=9)))
    newer = cli_json(project, "score", "default_risk")
    assert newer["rows"] == 200 and newer["run_id"] != published.run_id
    runs = {r["run_id"]: r["published"] for r in cli_json(project, "predictions", "list")["runs"]}
    assert runs == {published.run_id: False, newer["run_id"]: True}

    back = cli_json(project, "predictions", "rollback", "default_risk")
    assert back["run_id"] == published.run_id
    count = "SELECT count(*) AS n, any_value(run_id) AS run FROM predictions"
    assert cli_json(project, "query", count)["rows"] == [{"n": 4000, "run": published.run_id}]

    again = cli_json(project, "predictions", "publish", "default_risk", newer["run_id"])
    assert again["run_id"] == newer["run_id"]
    assert cli_json(project, "query", count)["rows"] == [{"n": 200, "run": newer["run_id"]}]
    assert published.run_id in cli_error(project, "predictions", "publish", "default_risk", "feedbeef")

    rebuilt = cli_json(project, "catalog", "rebuild")
    assert Path(rebuilt["file"]).exists() and Path(rebuilt["serving_db"]).resolve() == Path(rebuilt["file"])
    assert cli_json(project, "query", count)["rows"] == [{"n": 200, "run": newer["run_id"]}]


def test_progress_reports_rows_to_the_bar(
    project: batchml.Project, champion: batchml.ModelVersion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bars: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def fake_bar(description: str, total: int | None, as_json: bool) -> Iterator[Callable[[int], None]]:
        bar: dict[str, Any] = {"description": description, "total": total, "rows": 0}
        bars.append(bar)
        yield lambda rows: bar.update(rows=bar["rows"] + rows)

    monkeypatch.setattr(_datasets, "progress_bar", fake_bar)
    monkeypatch.setattr(_serving, "progress_bar", fake_bar)
    cli(project, "datasets", "snapshot", "loans", str(write_loans(tmp_path / "new.csv", rows=300, seed=5)))
    cli(project, "score", "default_risk", "--no-publish")
    assert bars == [
        {"description": "snapshotting loans", "total": None, "rows": 300},
        {"description": "scoring default_risk", "total": 300, "rows": 300},
    ]


def _batchml_script() -> str:
    beside = Path(sys.executable).parent / "batchml"
    found = str(beside) if beside.exists() else shutil.which("batchml")
    if found is None:
        pytest.skip("the batchml console script is not installed")
    return found


@pytest.mark.slow  # six fresh processes: each pays the import of lightgbm/sklearn (seconds)
def test_installed_command_end_to_end(tmp_path: Path, make_project: Callable[..., batchml.Project]) -> None:
    script = _batchml_script()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHML_")}
    (tmp_path / "batchml.toml").write_text(
        """
[storage]
root = "store"

[datasets.loans]
source = "loans.csv"

[models.default_risk]
dataset = "loans"
entity_id = "loan_id"
timestamp = "application_date"
target = "defaulted"

[models.default_risk.params]
num_iterations = 20
"""
    )

    def run(*args: str) -> Any:
        done = subprocess.run(
            [script, *args, "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert run("sample-data", "loans.csv", "--rows", "2000")["rows"] == 2000
    dataset = run("datasets", "snapshot", "loans")
    assert (dataset["rows"], dataset["reused"]) == (2000, False)
    model = run("train", "default_risk")
    assert (model["version"], model["dataset_version"]) == (1, dataset["ref"])
    assert run("models", "promote", "default_risk", "1")["to_version"] == 1
    scored = run("score", "default_risk")
    assert (scored["rows"], scored["published"]) == (2000, True)

    rows = run("query", "SELECT * FROM predictions WHERE entity_id = 'L000000042'")["rows"]
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["model_version"], row["run_id"]) == ("default_risk", 1, scored["run_id"])
    assert (row["dataset_version"], row["predicted_class"]) == (
        dataset["ref"],
        "0" if row["prediction"] < 0.5 else "1",
    )
    assert 0.0 <= row["prediction"] <= 1.0


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if not hasattr(group, "list_commands"):
        return
    ctx = typer.Context(group)
    for name in group.list_commands(ctx):  # the root group builds its commands when asked for them
        command = group.get_command(ctx, name)
        yield (*path, name), command
        yield from _commands(command, (*path, name))


def test_every_help_text_shows_what_its_docstring_says() -> None:
    """Rich markup would swallow `[models.MODEL...]`: every bracketed part of a command's help is printed."""
    import typer.main

    commands = list(_commands(typer.main.get_command(app)))
    assert len(commands) > 30
    for path, command in commands:
        shown = " ".join(runner.invoke(app, [*path, "--help"]).stdout.replace("│", " ").split())
        texts = [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]
        for bracketed in re.findall(r"\[[^\]\n]*\]", "\n".join(texts).replace("\\[", "[")):
            assert " ".join(bracketed.split()) in shown, f"`batchml {' '.join(path)} --help` lost {bracketed}"
