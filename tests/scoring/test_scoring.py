"""Streaming scoring: exact predictions, content-keyed runs, bound by name, nothing left on failure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

import batchml
from batchml.data import datasets
from batchml.errors import DataError, SchemaError
from batchml.models.features import encode
from batchml.models.registry import Registry
from batchml.scoring import runs
from batchml.scoring.receipts import input_hashes
from tests.conftest import PROJECT_TOML


def run_files(project: batchml.Project) -> list[Path]:
    return sorted(p for p in Path(project.storage.root, "runs").rglob("*") if p.is_file())


def test_scores_every_row_exactly_as_the_booster_does(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    run = batchml.score(project, "default_risk")
    version = datasets.get_version(project.storage, "loans@latest")
    assert run.rows == version.rows and not run.reused
    table = pq.ParquetDataset([str(Path(project.storage.root, f.path)) for f in run.files]).read()
    assert table.column_names == [
        "entity_id", "prediction", "predicted_class", "model", "model_version",
        "dataset_version", "code_version", "run_id", "scored_at", "input_hash", "reasons", "flags",
    ]  # fmt: skip
    source = datasets.read_frame(project.storage, version).to_arrow()
    booster = Registry(project.storage).load_booster(champion)
    expected = booster.predict(encode(source, champion.features))
    assert table.column("entity_id").to_pylist() == source.column("loan_id").to_pylist()
    assert np.array_equal(table.column("prediction").to_numpy(), expected)
    classes = np.where(expected >= 0.5, "1", "0")
    assert table.column("predicted_class").to_pylist() == classes.tolist()
    assert set(table.column("run_id").to_pylist()) == {run.run_id}
    assert set(table.column("dataset_version").to_pylist()) == {version.ref}
    assert table.column("input_hash").to_pylist() == input_hashes(encode(source, champion.features)).tolist()
    assert table.column("reasons").null_count == table.num_rows  # reason codes are off by default


def test_reason_codes_name_the_top_contributing_features(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    scoring = '\n[models.default_risk.scoring]\nreason_codes = 3\nreason_rows = "all"\n'
    project = make_project(PROJECT_TOML.format(source=loans_csv) + scoring)
    batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    run = batchml.score(project, "default_risk", alias=None, version=model.version)
    table = pq.ParquetDataset([str(Path(project.storage.root, f.path)) for f in run.files]).read()
    reasons = table.column("reasons").to_pylist()
    names = {f.name for f in model.features}
    assert all(len(r) == 3 and {c["feature"] for c in r} <= names for r in reasons)
    source = datasets.read_frame(project.storage, datasets.get_version(project.storage, "loans@latest"))
    matrix = encode(source.to_arrow().slice(0, 1), model.features)
    contrib = Registry(project.storage).load_booster(model).predict(matrix, pred_contrib=True)[0, :-1]
    top = np.argsort(-np.abs(contrib), kind="stable")[:3]
    assert reasons[0] == [{"feature": model.features[i].name, "contribution": contrib[i]} for i in top]
    assert run.manifest["key"]["params"]["reason_codes"] == 3


def test_same_work_twice_returns_the_first_run(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    first = batchml.score(project, "default_risk")
    files = run_files(project)
    again = batchml.score(project, "default_risk")
    assert again.reused and again.run_id == first.run_id
    assert run_files(project) == files


def test_scoring_streams_in_bounded_batches(
    project: batchml.Project, champion: batchml.ModelVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "BATCH_ROWS", 512)
    seen: list[int] = []
    original = lgb.Booster.predict

    def spy(self: lgb.Booster, data: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
        seen.append(len(data))
        return original(self, data, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lgb.Booster, "predict", spy)
    progress: list[int] = []
    run = batchml.score(project, "default_risk", progress=progress.append)
    assert max(seen) <= 512 and sum(seen) == run.rows == sum(progress)


def snapshot_variant(
    project: batchml.Project, loans_csv: Path, change: Callable[[pl.DataFrame], pl.DataFrame]
) -> str:
    variant = loans_csv.parent / f"variant-{id(change)}.parquet"
    change(pl.read_csv(loans_csv, try_parse_dates=True)).write_parquet(variant)
    return batchml.snapshot_dataset(project, "loans", str(variant)).ref


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda df: df.drop("credit_score"), r"'credit_score': missing"),
        (lambda df: df.rename({"amount": "Amount"}), r"'amount': missing"),
        (lambda df: df.with_columns(pl.col("amount").cast(pl.String) + "x"), r"'amount': expected numeric"),
        (lambda df: df.with_columns(region=pl.lit([1, 2])), r"'region': expected categorical"),
    ],
)
def test_input_that_does_not_match_the_model_fails_before_any_output(
    project: batchml.Project,
    champion: batchml.ModelVersion,
    loans_csv: Path,
    change: Callable[[pl.DataFrame], pl.DataFrame],
    expected: str,
) -> None:
    ref = snapshot_variant(project, loans_csv, change)
    with pytest.raises(SchemaError, match=expected):
        batchml.score(project, "default_risk", dataset=ref)
    assert run_files(project) == []


def test_many_null_entity_ids_fail_the_run(
    project: batchml.Project, champion: batchml.ModelVersion, loans_csv: Path
) -> None:
    ref = snapshot_variant(
        project,
        loans_csv,
        lambda df: df.with_columns(
            pl.when(pl.col("age") > 60).then(None).otherwise("loan_id").alias("loan_id")
        ),
    )  # a few null ids are quarantined (tests/checks/test_entity_ids.py); this many exceed the limit
    with pytest.raises(DataError, match=r"are quarantined, over max_quarantine_share .* loan_id null_id"):
        batchml.score(project, "default_risk", dataset=ref)
    assert run_files(project) == []


def test_unknown_alias_or_dataset_names_what_exists(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    with pytest.raises(batchml.NotFoundError, match="champion"):
        batchml.score(project, "default_risk", alias="staging")
    with pytest.raises(batchml.NotFoundError, match=r"000000000000.*available"):
        batchml.score(project, "default_risk", dataset="loans@000000000000")
