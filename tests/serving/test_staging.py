"""Staging: a candidate run served beside the published one, compared, promoted and published at once."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import batchml
from batchml.cli import app
from batchml.errors import NotFoundError
from batchml.models.registry import RegistryReader
from batchml.serving import staging


def stage_challenger(project: batchml.Project) -> batchml.PredictionRun:
    challenger = batchml.train(project, "default_risk", params={"num_leaves": 4, "num_iterations": 10})
    batchml.promote(project, "default_risk", challenger.version, alias="challenger")
    run = batchml.score(project, "default_risk", alias="challenger")
    batchml.api.stage(project, "default_risk", run.run_id, reason="try v2")
    return run


def test_staged_run_is_served_beside_the_published_one(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    staged = stage_challenger(project)
    con = batchml.connect(project)
    assert con.execute("SELECT DISTINCT run_id FROM predictions").fetchall() == [(published.run_id,)]
    assert con.execute("SELECT DISTINCT run_id, model_version FROM predictions_staging").fetchall() == [
        (staged.run_id, 2)
    ]


def test_compare_reports_shift_flips_and_top_k_overlap(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    stage_challenger(project)
    report = staging.compare(project.storage, "default_risk", top=100)
    assert report["common_entities"] == published.rows
    assert report["staged"]["model_version"] == 2 and report["published"]["model_version"] == 1
    assert 0.0 <= report["flip_rate"] <= 1.0 and 0.0 <= report["top_k_overlap"] <= 1.0
    assert report["psi"] > 0.0 and 0.0 < report["ks_statistic"] <= 1.0
    batchml.api.stage(project, "default_risk", published.run_id)  # the same run on both sides
    same = staging.compare(project.storage, "default_risk", top=100)
    assert (same["flip_rate"], same["top_k_overlap"], same["ks_statistic"]) == (0.0, 1.0, 0.0)
    assert same["psi"] == pytest.approx(0.0)


def test_promote_staged_moves_the_alias_and_publishes_in_one_step(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    staged = stage_challenger(project)
    result = batchml.api.promote_staged(project, "default_risk", reason="v2 looks right")
    assert result["model_version"] == 2 and result["run_id"] == staged.run_id
    assert RegistryReader(project.storage).aliases("default_risk")["champion"] == 2
    con = batchml.connect(project)
    assert con.execute("SELECT DISTINCT run_id FROM predictions").fetchall() == [(staged.run_id,)]
    assert con.execute("SELECT count(*) FROM predictions_staging").fetchone() == (0,)
    with pytest.raises(NotFoundError, match="staged run"):
        staging.compare(project.storage, "default_risk")


def test_nothing_staged_or_published_says_so(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    with pytest.raises(NotFoundError, match="staged run"):
        staging.compare(project.storage, "default_risk")
    with pytest.raises(NotFoundError, match="staged run"):
        batchml.api.promote_staged(project, "default_risk")


def test_stage_compare_promote_from_the_cli(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    config = ["--config", str(project.base_dir / "batchml.toml")]
    runner = CliRunner()
    challenger = batchml.train(project, "default_risk", params={"num_leaves": 4, "num_iterations": 10})
    batchml.promote(project, "default_risk", challenger.version, alias="challenger")
    out = runner.invoke(app, [*config, "score", "default_risk", "--alias", "challenger", "--stage", "--json"])
    assert out.exit_code == 0, out.output
    staged = json.loads(out.stdout)
    assert staged["staged"] and not staged["published"]
    out = runner.invoke(app, [*config, "predictions", "compare", "default_risk", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["staged"]["run_id"] == staged["run_id"]
    out = runner.invoke(
        app, [*config, "predictions", "promote", "default_risk", "--reason", "better", "--json"]
    )
    assert out.exit_code == 0, out.output
    con = batchml.connect(project)
    assert con.execute("SELECT DISTINCT run_id FROM predictions").fetchall() == [(staged["run_id"],)]
    assert RegistryReader(project.storage).aliases("default_risk")["champion"] == challenger.version
