"""Drift of prediction runs against the training profile: statistics, verdicts, records, SQL and the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from typer.testing import CliRunner

import batchml
from batchml.cli import app
from batchml.config import DriftConfig
from batchml.errors import DataError
from batchml.models.registry import RegistryReader
from batchml.monitoring.drift import (
    RECORD,
    compute_run_drift,
    drift_between,
    load_drift,
    monitor_run,
    record_drift,
)
from batchml.monitoring.drift_stats import js_distance, ks_binned, psi
from batchml.testing import generate_loans
from tests.conftest import PROJECT_TOML

HASH_SPLIT = '\n[models.default_risk.split]\nmethod = "hash"\n'
NUMERIC = ["amount", "annual_income", "age", "credit_score", "debt_to_income", "open_accounts"]


@pytest.fixture
def hashed(make_project: Callable[..., batchml.Project], loans_csv: Path) -> batchml.Project:
    """A project whose model holds out a hash sample (so held-out predictions look like all predictions)."""
    project = make_project(PROJECT_TOML.format(source=loans_csv) + HASH_SPLIT)
    batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    batchml.promote(project, "default_risk", model.version, reason="test")
    return project


def shifted_run(project: batchml.Project, tmp_path: Path) -> batchml.PredictionRun:
    """Score a synthetic shift: 3x the amounts, 2x debt-to-income, 100 points less credit, all 'business'."""
    frame = generate_loans(3000, seed=11).with_columns(
        pl.col("amount") * 3,
        pl.col("debt_to_income") * 2,
        pl.col("credit_score") - 100,
        purpose=pl.lit("business"),
    )
    frame.write_parquet(tmp_path / "shifted.parquet")
    version = batchml.snapshot_dataset(project, "loans", str(tmp_path / "shifted.parquet"))
    return batchml.score(project, "default_risk", dataset=version.ref)


def test_statistics_are_zero_for_equal_shares_and_grow_with_the_gap() -> None:
    same = np.array([0.25, 0.25, 0.5])
    assert psi(same, same) == ks_binned(same, same) == js_distance(same, same) == 0.0
    moved = np.array([0.5, 0.25, 0.25])
    assert psi(same, moved) > 0.1 and ks_binned(same, moved) == pytest.approx(0.25)
    assert 0.0 < js_distance(same, moved) < js_distance(same, np.array([1.0, 0.0, 0.0])) <= 1.0


def test_scoring_the_training_data_shows_no_drift(hashed: batchml.Project) -> None:
    run = batchml.score(hashed, "default_risk")
    result = compute_run_drift(hashed.storage, "default_risk", run.run_id)
    summary = result.summary
    assert summary["verdict"] == "stable" and summary["drifted_features"] == 0 and summary["features"] == 10
    assert summary["prediction_drifted"] is False
    assert {r["statistic"] for r in result.metrics} == {"psi", "ks_binned", "js"}
    assert all(r["value"] < 0.05 for r in result.metrics if r["statistic"] == "psi")
    row = result.metrics[0]
    assert set(row) == {
        "model", "version", "run_id", "feature", "statistic", "value", "threshold", "drifted", "computed_at"
    }  # fmt: skip
    assert (row["model"], row["version"], row["run_id"]) == ("default_risk", 1, run.run_id)


def test_scoring_the_training_data_of_a_time_split_model_drifts_nothing(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    """The demo set-up (time split: the held-out rows are the latest, drifted ones) scores its own training
    data: the reference is like for like, so every statistic is zero, for every feature and the prediction."""
    model = RegistryReader(project.storage).get("default_risk", 1)
    assert published.manifest["dataset_version"] == model.card["dataset_version"]
    result = compute_run_drift(project.storage, "default_risk", published.run_id)
    summary = result.summary
    assert summary["prediction_drifted"] is False, [(r["statistic"], r["value"]) for r in result.metrics[-2:]]
    assert summary["verdict"] == "stable" and summary["drifted_columns"] == []
    assert {r["feature"] for r in result.metrics} == {f.name for f in model.features} | {"prediction"}
    assert [r for r in result.metrics if r["value"] != 0.0] == []


def test_a_shifted_dataset_drifts_with_its_predictions(hashed: batchml.Project, tmp_path: Path) -> None:
    run = shifted_run(hashed, tmp_path)
    result = compute_run_drift(hashed.storage, "default_risk", run.run_id)
    summary = result.summary
    assert summary["verdict"] == "drifted" and summary["drifted_share"] > summary["max_drifted_share"]
    assert {"amount", "credit_score", "purpose"} <= set(summary["drifted_columns"])
    assert not {"age", "region", "employment_type"} & set(summary["drifted_columns"])
    prediction = {r["statistic"]: r for r in result.metrics if r["feature"] == "prediction"}
    assert set(prediction) == {"psi", "ks_binned"} and summary["prediction_drifted"] is True
    assert prediction["psi"]["drifted"] and prediction["psi"]["threshold"] == 0.2


def test_the_time_shift_of_the_sample_data_is_detected(project: batchml.Project, tmp_path: Path) -> None:
    batchml.snapshot_dataset(project, "loans")
    batchml.train(project, "default_risk")
    late = generate_loans(24_000, seed=3).filter(pl.col("application_date") >= pl.date(2025, 12, 1))
    late.write_parquet(tmp_path / "late.parquet")  # the sample data's own drift: later months move
    version = batchml.snapshot_dataset(project, "loans", str(tmp_path / "late.parquet"))
    run = batchml.score(project, "default_risk", alias=None, dataset=version.ref)
    drifted = compute_run_drift(project.storage, "default_risk", run.run_id).summary["drifted_columns"]
    assert {"amount", "credit_score", "purpose"} <= set(drifted)


def test_per_feature_overrides_replace_the_default_thresholds(
    hashed: batchml.Project, tmp_path: Path
) -> None:
    run = shifted_run(hashed, tmp_path)
    config = DriftConfig(psi=0.25, features={"amount": {"psi": 1000.0, "ks": 1.0}, "prediction": {"psi": 50}})
    result = compute_run_drift(hashed.storage, "default_risk", run.run_id, config)
    rows = {(r["feature"], r["statistic"]): r for r in result.metrics}
    assert rows[("amount", "psi")]["threshold"] == 1000.0 and not rows[("amount", "psi")]["drifted"]
    assert rows[("amount", "ks_binned")]["threshold"] == 1.0 and not rows[("amount", "ks_binned")]["drifted"]
    assert (
        rows[("credit_score", "psi")]["threshold"] == 0.25 and rows[("prediction", "psi")]["threshold"] == 50
    )
    assert "amount" not in result.summary["drifted_columns"]
    assert "credit_score" in result.summary["drifted_columns"]


def test_monitor_run_records_once(project: batchml.Project, published: batchml.PredictionRun) -> None:
    storage, run_id = project.storage, published.run_id
    assert load_drift(storage, "default_risk", run_id) is None
    first = monitor_run(storage, "default_risk", run_id, DriftConfig())
    assert not first.reused
    path = f"monitoring/default_risk/{run_id}/{RECORD}"
    stored = storage.read_bytes(path)
    again = monitor_run(storage, "default_risk", run_id, DriftConfig(psi=0.01))  # a record is not recomputed
    assert again.reused and again.summary == first.summary and again.metrics == first.metrics
    other = compute_run_drift(storage, "default_risk", run_id, DriftConfig(psi=0.01))
    assert record_drift(storage, other) == path
    assert storage.read_bytes(path) == stored
    assert load_drift(storage, "default_risk", run_id) == first


def test_drift_tables_in_sql(project: batchml.Project, published: batchml.PredictionRun) -> None:
    result = monitor_run(project.storage, "default_risk", published.run_id)
    batchml.rebuild_catalog(project)
    with batchml.connect(project) as con:
        count, drifted = con.execute(
            "SELECT count(*), count(*) FILTER (drifted) FROM drift_metrics"
        ).fetchone()
        run = con.execute(
            "SELECT model, version, run_id, features, verdict, computed_at FROM drift_runs"
        ).fetchall()
    assert count == len(result.metrics) and drifted == sum(r["drifted"] for r in result.metrics)
    assert run[0][:5] == ("default_risk", 1, published.run_id, 10, result.summary["verdict"])


def test_cli_prints_the_table_and_the_verdict(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    runner = CliRunner()
    config = str(project.base_dir / "batchml.toml")
    done = runner.invoke(app, ["--config", config, "drift", "default_risk"])
    assert done.exit_code == 0, done.output
    assert "credit_score" in done.output and "ks_binned" in done.output and "verdict:" in done.output
    assert "reference: every row of loans@" in done.output and "(4,000 rows)" in done.output
    done = runner.invoke(
        app, ["--config", config, "drift", "default_risk", "--run", published.run_id, "--json"]
    )
    data = json.loads(done.stdout)
    assert data["run_id"] == published.run_id and data["reused"] is True and len(data["metrics"]) == 22
    with batchml.connect(project) as con:  # the first call refreshed the serving DB
        assert con.execute("SELECT count(*) FROM drift_runs").fetchone() == (1,)
    done = runner.invoke(app, ["--config", config, "drift", "default_risk", "--run", "nope"])
    assert done.exit_code == 1 and "not found" in done.output


def _booster(features: list[str]) -> lgb.Booster:
    frame = generate_loans(2000, seed=5).to_pandas()
    for name in features:
        if frame[name].dtype == object:
            frame[name] = frame[name].astype("category")
    data = lgb.Dataset(frame[features], frame["defaulted"], feature_name=features)
    return lgb.train({"objective": "binary", "num_iterations": 5, "verbosity": -1}, data)


def test_registered_model_without_profile(project: batchml.Project) -> None:
    dv = batchml.snapshot_dataset(project, "loans")
    booster = _booster(NUMERIC)
    bare = batchml.register_model(project, "bare", booster, entity_id="loan_id")
    run = batchml.score(project, "bare", alias=None, version=bare.version, dataset=dv.ref)
    with pytest.raises(DataError, match=r"no training profile .* no dataset version"):
        compute_run_drift(project.storage, "bare", run.run_id)

    # With its dataset, the reference is computed once from every row of it, scored: zero drift on those rows.
    booster = _booster([*NUMERIC, "region", "purpose"])
    lineage = batchml.register_model(project, "lineage", booster, entity_id="loan_id", dataset=dv.ref)
    run = batchml.score(project, "lineage", alias=None, version=lineage.version, dataset=dv.ref)
    result = compute_run_drift(project.storage, "lineage", run.run_id)
    assert result.summary["verdict"] == "stable" and result.summary["features"] == len(NUMERIC) + 2
    assert result.summary["prediction_drifted"] is False
    assert result.summary["reference"] == {"dataset_version": dv.ref, "rows": dv.rows}
    assert [r for r in result.metrics if r["value"] != 0.0] == []
    assert project.storage.exists("monitoring/lineage/reference/v000001-all-rows.json")


def test_drift_between_two_tables() -> None:
    rng = np.random.default_rng(0)
    n = 20_000

    def table(shift: float) -> pa.Table:
        return pa.table(
            {
                "x": rng.normal(shift, 1.0, n),
                "y": rng.normal(0.0, 1.0, n),
                "k": pa.array(rng.choice(["a", "b", "c"], n, p=[0.5 - shift / 2, 0.3, 0.2 + shift / 2])),
                "code": rng.integers(0, 4, n),
            }
        )

    reference, current = table(0.0), table(0.5)
    result = drift_between(reference.to_batches(4096), current.to_batches(4096), reference.column_names,
                           categorical=["code"])  # fmt: skip
    assert result.summary["drifted_columns"] == ["k", "x"]
    assert {r["statistic"] for r in result.metrics if r["feature"] == "code"} == {"psi", "js"}
    with pytest.raises(DataError, match="no batches"):
        drift_between([], current.to_batches(), ["x"])
