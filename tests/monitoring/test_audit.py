"""Receipts re-derive: explain a published prediction, reproduce a model version bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import batchml
from batchml.cli import app
from batchml.errors import DataError, NotFoundError
from batchml.models.registry import Registry
from batchml.monitoring import audit
from batchml.store.records import RECORD_HASH, seal


def test_explain_rederives_the_published_prediction(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    result = audit.explain(project.storage, "default_risk", "L000000042", top=5)
    receipt = result["receipt"]
    assert receipt["run_id"] == published.run_id and receipt["model_version"] == 1
    assert result["rederived"]["matches"] is True
    assert result["rederived"]["prediction"] == receipt["prediction"]
    assert result["rederived"]["input_hash"] == receipt["input_hash"]
    assert len(result["contributions"]) == 5
    magnitudes = [abs(c["contribution"]) for c in result["contributions"]]
    assert magnitudes == sorted(magnitudes, reverse=True)


def test_explain_from_the_cli(project: batchml.Project, published: batchml.PredictionRun) -> None:
    config = str(Path(project.base_dir) / "batchml.toml")
    out = CliRunner().invoke(
        app, ["--config", config, "predictions", "explain", "default_risk", "L000000007", "--json"]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["rederived"]["matches"] is True


def test_explain_names_missing_entities_and_runs(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    with pytest.raises(NotFoundError, match="publish a run first"):
        audit.explain(project.storage, "default_risk", "L000000042")
    run = batchml.score(project, "default_risk")
    batchml.publish(project, "default_risk", run.run_id)
    with pytest.raises(NotFoundError, match="'nobody'"):
        audit.explain(project.storage, "default_risk", "nobody")


def test_a_trained_version_reproduces_identically(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    result = audit.reproduce(project.storage, "default_risk", champion.version)
    assert result["identical"] is True
    assert result["reproduced_sha256"] == champion.model_file.sha256
    assert result["metrics_reproduced"] == result["metrics_recorded"]


def test_reproduce_detects_a_different_recipe(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    card_path = Path(project.storage.root, "models/default_risk/versions/000001.json")
    card = json.loads(card_path.read_text())
    del card[RECORD_HASH]
    card["params"]["num_leaves"] = 7  # a card that does not describe how its model was made, sealed as
    card_path.write_text(json.dumps(seal(card)))  # a buggy writer would (a hand edit fails its hash)
    assert audit.reproduce(project.storage, "default_risk", 1)["identical"] is False


def test_models_from_outside_cannot_be_reproduced(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    booster = Registry(project.storage).load_booster(champion)
    outside = batchml.register_model(project, "notebook", booster, entity_id="loan_id")
    with pytest.raises(DataError, match="register_model"):
        audit.reproduce(project.storage, "notebook", outside.version)
