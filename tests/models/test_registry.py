"""Model registry: immutable versions with lineage cards, aliases as an append-only event log."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

import batchml
from batchml.errors import DataError, IntegrityError, NotFoundError, SchemaError
from batchml.models.registry import Registry, RegistryReader


def test_train_records_a_complete_card(project: batchml.Project, champion: batchml.ModelVersion) -> None:
    card = champion.card
    assert champion.version == 1 and champion.ref == "default_risk@1"
    assert card["dataset_version"].startswith("loans@")
    assert set(card["metrics"]) == {"auc", "logloss", "accuracy"}
    assert {"git", "packages", "user", "host", "started_at", "finished_at", "params", "importance"} <= set(
        card
    )
    assert card["params"]["deterministic"] is True and card["num_trees"] == 30
    assert {f["name"] for f in card["features"]} >= {"amount", "region"}
    assert card["packages"]["lightgbm"] == lgb.__version__
    assert Path(project.storage.root, card["model_file"]["path"]).read_text().startswith("tree")


def test_training_the_same_thing_twice_reuses_the_version(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    again = batchml.train(project, "default_risk")
    assert again.reused and again.version == champion.version
    changed = batchml.train(project, "default_risk", params={"num_leaves": 7})
    assert not changed.reused and changed.version == 2
    assert changed.card["params"]["num_leaves"] == 7


def test_promote_rollback_and_alias_history(project: batchml.Project, champion: batchml.ModelVersion) -> None:
    registry = Registry(project.storage)
    second = batchml.train(project, "default_risk", params={"num_leaves": 7})
    between = datetime.now(UTC)
    batchml.promote(project, "default_risk", second.version, reason="better")
    assert registry.aliases("default_risk") == {"champion": 2}
    assert registry.aliases("default_risk", at=between) == {"champion": 1}
    event = batchml.rollback_model(project, "default_risk", reason="bad")
    assert (event["from_version"], event["to_version"], event["action"]) == (2, 1, "rollback")
    assert registry.aliases("default_risk") == {"champion": 1}
    moves = [
        (e["action"], e["from_version"], e["to_version"], e["reason"])
        for e in registry.events("default_risk")
    ]
    assert moves == [
        ("promote", None, 1, "fixture"),
        ("promote", 1, 2, "better"),
        ("rollback", 2, 1, "bad"),
    ]
    with pytest.raises(NotFoundError, match="previous holder"):
        batchml.rollback_model(project, "default_risk")
    with pytest.raises(DataError, match="no timezone"):
        registry.aliases("default_risk", at="2026-01-01T00:00:00")


def test_unknown_models_versions_and_aliases_list_what_exists(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    registry = Registry(project.storage)
    with pytest.raises(NotFoundError, match="available: default_risk"):
        registry.get("nope")
    with pytest.raises(NotFoundError, match="available: 1"):
        batchml.promote(project, "default_risk", 7)
    with pytest.raises(NotFoundError, match=r"champion \(v1\)"):
        registry.resolve("default_risk", alias="staging")
    with pytest.raises(batchml.InvalidNameError, match="'Champion!'"):
        batchml.promote(project, "default_risk", 1, alias="Champion!")
    assert registry.aliases("default_risk") == {"champion": 1}


def test_tampered_model_file_is_refused(project: batchml.Project, champion: batchml.ModelVersion) -> None:
    path = Path(project.storage.root, champion.model_file.path)
    path.write_text(path.read_text().replace("tree", "tre3", 1))
    with pytest.raises(IntegrityError, match=champion.model_file.path):
        Registry(project.storage).load_booster(champion)


def test_register_a_notebook_model_with_pandas_categoricals(project: batchml.Project) -> None:
    batchml.snapshot_dataset(project, "loans")
    frame = batchml.data.datasets.read_frame(
        project.storage, batchml.data.datasets.get_version(project.storage, "loans@latest")
    ).to_pandas()
    features = ["amount", "employment_type", "credit_score", "region"]
    as_categories = {"region": "category", "employment_type": "category"}
    # employment_type is constant in the training rows: LightGBM then omits it from feature_infos
    subset = frame[frame["employment_type"] == frame["employment_type"].mode()[0]]
    booster = lgb.train(
        {"objective": "binary", "num_iterations": 10, "verbosity": -1},
        lgb.Dataset(subset[features].astype(as_categories), subset["defaulted"]),
    )
    model = batchml.register_model(project, "notebook", booster, entity_id="loan_id", dataset="loans@latest")
    assert model.task == "binary" and model.card["origin"] == "register_model"
    kinds = {f.name: f.kind for f in model.features}
    assert kinds == {
        "amount": "numeric",
        "employment_type": "categorical",
        "credit_score": "numeric",
        "region": "categorical",
    }
    assert model.features[3].categories == tuple(sorted(subset["region"].unique()))
    run = batchml.score(project, "notebook", alias=None, version=model.version)
    published = pd.read_parquet([Path(project.storage.root, f.path) for f in run.files])
    expected = booster.predict(frame[features].astype(as_categories))  # remaps to the training categories
    order = published["entity_id"].map({k: i for i, k in enumerate(frame["loan_id"])})
    assert np.allclose(published["prediction"].to_numpy(), expected[order.to_numpy()])


def test_a_booster_trained_on_a_matrix_binds_through_feature_names(project: batchml.Project) -> None:
    batchml.snapshot_dataset(project, "loans")
    dataset = batchml.data.datasets.get_version(project.storage, "loans@latest")
    frame = batchml.data.datasets.read_frame(project.storage, dataset).to_pandas()
    columns = ["amount", "credit_score", "age"]
    booster = lgb.train(  # a bare numpy matrix: the booster only knows Column_0..Column_2
        {"objective": "binary", "num_iterations": 10, "verbosity": -1},
        lgb.Dataset(frame[columns].to_numpy(), frame["defaulted"].to_numpy()),
    )
    assert booster.feature_name() == ["Column_0", "Column_1", "Column_2"]
    with pytest.raises(SchemaError, match=r"trained on a matrix: map each position to a column") as caught:
        batchml.register_model(project, "matrix", booster, entity_id="loan_id", dataset=dataset.ref)
    assert "feature 'Column_0': no such column" in str(caught.value)
    for names, message in [
        (["amount", "credit_score"], "feature_names has 2 names but the booster has 3 features"),
        (["amount", "amount", "age"], "repeated: 'amount'"),
        (["amount", "credit_score", "agee"], "feature 'agee': no such column"),
    ]:
        with pytest.raises(SchemaError, match=message):
            batchml.register_model(
                project, "matrix", booster, entity_id="loan_id", dataset=dataset.ref, feature_names=names
            )
    assert RegistryReader(project.storage).list_versions("matrix") == []  # nothing registered

    model = batchml.register_model(
        project, "matrix", booster, entity_id="loan_id", dataset=dataset.ref, feature_names=columns
    )
    assert [f.name for f in model.features] == columns
    run = batchml.score(project, "matrix", alias=None, version=model.version)
    scored = pd.read_parquet([Path(project.storage.root, f.path) for f in run.files]).set_index("entity_id")
    expected = pd.Series(booster.predict(frame[columns].to_numpy()), index=frame["loan_id"])
    assert np.array_equal(scored["prediction"].to_numpy(), expected[scored.index].to_numpy())
