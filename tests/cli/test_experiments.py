"""`batchml experiments`: start a canary, see it ramp, stop it or conclude it (the winner promoted)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import batchml
from batchml.models.registry import RegistryReader
from tests.cli.test_cli import cli, cli_error, cli_json
from tests.conftest import PROJECT_TOML
from tests.monitoring.test_performance import MONITORING
from tests.monitoring.test_performance import _labels as write_labels

CANARY = (
    "\n[models.default_risk.canary]\nshares = [0.1, 1.0]\n"
    + "max_psi = 100.0\nmax_ks = 1.0\nmax_flip_rate = 1.0\n"
)


def trained(make_project: Callable[..., batchml.Project], loans_csv: Path, extra: str) -> batchml.Project:
    project = make_project(PROJECT_TOML.format(source=loans_csv) + extra)
    batchml.snapshot_dataset(project, "loans")
    batchml.promote(project, "default_risk", batchml.train(project, "default_risk").version, reason="first")
    batchml.train(project, "default_risk", params={"num_leaves": 4, "num_iterations": 10})
    return project


def test_start_score_show_and_conclude_a_canary(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    project = trained(make_project, loans_csv, CANARY)
    started = cli_json(project, "experiments", "start", "default_risk", "2", "--reason", "try v2")
    assert (started["alias"], started["to_version"], started["reason"]) == ("canary", 2, "try v2")
    scored = cli_json(project, "score", "default_risk")
    assert (scored["canary"]["action"], scored["canary"]["share"]) == ("advance", 0.1)
    (row,) = cli_json(project, "experiments", "list")["experiments"]
    assert (row["champion"], row["canary_version"], row["last_step"]["share"]) == (1, 2, 0.1)
    shown = cli_json(project, "experiments", "show", "default_risk")
    assert [e["action"] for e in shown["canary"]] == ["advance"]
    assert [c["shadow_version"] for c in shown["shadow_comparisons"]] == [2]  # the canary's comparison
    with batchml.connect(project) as con:
        arms = dict(con.execute("SELECT variant, count(*) FROM predictions GROUP BY ALL").fetchall())
    assert set(arms) == {"control", "canary"} and sum(arms.values()) == scored["rows"]
    concluded = cli_json(project, "experiments", "conclude", "default_risk", "--reason", "v2 won")
    assert concluded["promoted"]["to_version"] == 2 and not concluded["withdrawn"]["automatic"]
    assert RegistryReader(project.storage).aliases("default_risk") == {"champion": 2}
    assert "canary of model 'default_risk'" in cli_error(project, "experiments", "stop", "default_risk")
    assert "v2 won" in cli(project, "models", "history", "default_risk").stdout


def test_stop_ends_the_canary_by_hand(make_project: Callable[..., batchml.Project], loans_csv: Path) -> None:
    project = trained(make_project, loans_csv, CANARY)
    cli(project, "experiments", "start", "default_risk", "2")
    stopped = cli_json(project, "experiments", "stop", "default_risk", "--reason", "support tickets")
    assert (stopped["action"], stopped["from_version"], stopped["reason"]) == (
        "rollback",
        2,
        "support tickets",
    )
    assert "canary" not in RegistryReader(project.storage).aliases("default_risk")


def test_a_model_without_a_canary_section_is_one_line(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    project = trained(make_project, loans_csv, "")
    error = cli_error(project, "experiments", "start", "default_risk", "2")
    assert "has no [models.default_risk.canary] section" in error and error.count("\n") == 1


def test_an_ab_experiment_from_the_command_line(
    make_project: Callable[..., batchml.Project], loans_csv: Path, tmp_path: Path
) -> None:
    project = trained(make_project, loans_csv, MONITORING)
    args = ["experiments", "start", "default_risk", "pricing", "--variant", "control=champion"]
    started = cli_json(
        project,
        *args,
        "--variant",
        "b=2",
        "--shares",
        "0.5,0.5",
        "--reason",
        "v2 vs v1",
        "--min-samples",
        "5000",
    )
    assert [(v["name"], v["model_version"]) for v in started["variants"]] == [("control", 1), ("b", 2)]
    second = cli_error(
        project, *args[:3], "other", "--variant", "a=1", "--variant", "b=2", "--shares", "0.5,0.5"
    )
    assert "experiment 'pricing' is running" in second and second.count("\n") == 1
    scored = cli_json(project, "score", "default_risk")
    assert scored["experiment"]["runs"]["control"] == scored["run_id"] and "b" in scored["experiment"]["runs"]
    with batchml.connect(project) as con:
        arms = dict(con.execute("SELECT variant, count(*) FROM predictions GROUP BY ALL").fetchall())
    assert set(arms) == {"control", "b"} and sum(arms.values()) == scored["rows"]
    (row,) = cli_json(project, "experiments", "list")["experiments"]
    assert row["experiment"] == "pricing v1"
    shown = cli_json(project, "experiments", "show", "default_risk")
    assert [(e["experiment"], e["status"]) for e in shown["experiments"]] == [("pricing", "running")]
    assert shown["experiment_results"] == []  # no labels yet
    write_labels(loans_csv, [datetime.now(UTC) + timedelta(hours=1)] * 1000, tmp_path / "labels.parquet")
    cli(project, "labels", "ingest", "loan_labels", str(tmp_path / "labels.parquet"))
    (result,) = cli_json(project, "experiments", "show", "default_risk")["experiment_results"]
    assert result["verdict"] == "insufficient_data" and {r["variant"] for r in result["rows"]} == {
        "control",
        "b",
    }
    assert sum(r["rows"] for r in result["rows"] if r["metric"] == "outcome_rate") == 1000
    assert "needs --winner" in cli_error(project, "experiments", "conclude", "default_risk", "pricing")
    assert "variant of experiment 'pricing' 'c' not found" in cli_error(
        project, "experiments", "conclude", "default_risk", "pricing", "--winner", "c"
    )
    done = cli_json(project, "experiments", "conclude", "default_risk", "pricing", "--winner", "b")
    assert done["concluded"]["winner"] == "b"
    assert RegistryReader(project.storage).aliases("default_risk") == {"champion": 2}


def test_bad_experiment_options_are_one_line(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    project = trained(make_project, loans_csv, "")
    start = ["experiments", "start", "default_risk", "pricing"]
    for extra, message in [
        (
            ["--variant", "control", "--variant", "b=2", "--shares", "0.5,0.5"],
            "--variant 'control' is invalid",
        ),
        (
            ["--variant", "a=1", "--variant", "b=2", "--shares", "half,half"],
            "--shares 'half,half' is invalid",
        ),
        (["--variant", "a=1", "--variant", "b=2", "--shares", "0.6,0.6"], "sum to 1"),
        (["--variant", "a=1", "--variant", "b=7", "--shares", "0.5,0.5"], "'7' not found"),
    ]:
        error = cli_error(project, *start, *extra)
        assert message in error and error.count("\n") == 1, error
