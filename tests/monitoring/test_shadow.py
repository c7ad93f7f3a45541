"""Shadow scoring: shadow versions scored from the champion's read, compared, alerted on, never served."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from scipy import stats

import batchml
from batchml import provenance
from batchml.errors import ConfigError
from batchml.monitoring import alerts, run_compare, shadow
from batchml.scoring import runs, together
from tests.conftest import PROJECT_TOML

SHADOW = '\n[models.default_risk.shadow]\naliases = ["challenger"]\n'


def shadow_project(make_project: Callable[..., batchml.Project], loans_csv: Path, extra: str) -> Any:
    """A project whose champion is v1 and challenger v2 (a different model), shadowing the challenger."""
    project = make_project(PROJECT_TOML.format(source=loans_csv) + SHADOW + extra)
    batchml.snapshot_dataset(project, "loans")
    champion = batchml.train(project, "default_risk")
    batchml.promote(project, "default_risk", champion.version, reason="first")
    challenger = batchml.train(project, "default_risk", params={"num_leaves": 4, "num_iterations": 10})
    batchml.promote(project, "default_risk", challenger.version, alias="challenger")
    return project


def frame(project: batchml.Project, run: batchml.PredictionRun) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(project.storage.full_path(f.path)) for f in run.files])


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The dataset versions whose rows scoring streams (one entry per full read)."""
    seen: list[str] = []
    for module in (together, runs):
        original = module.iter_batches

        def spy(
            storage: Any, version: Any, *args: Any, _original: Any = original, **kw: Any
        ) -> Iterator[Any]:
            seen.append(version.ref)
            return _original(storage, version, *args, **kw)

        monkeypatch.setattr(module, "iter_batches", spy)
    return seen


def test_shadow_is_scored_from_the_same_read_equals_scoring_alone_and_is_never_served(
    make_project: Callable[..., batchml.Project], loans_csv: Path, reads: list[str]
) -> None:
    project = shadow_project(make_project, loans_csv, "")
    result = batchml.api.score_with_shadows(project, "default_risk")
    assert len(reads) == 1  # champion and shadow from one read of the data
    assert result.served.manifest["model_version"] == 1 and not result.failed
    (shadow_run,) = result.shadows
    assert shadow_run.manifest["model_version"] == 2
    assert shadow_run.manifest["dataset_version"] == result.served.manifest["dataset_version"]
    # The shadow run is the run scoring v2 alone makes: same content key, same content.
    alone = batchml.score(project, "default_risk", version=2)
    assert alone.reused and alone.run_id == shadow_run.run_id
    assert frame(project, shadow_run).drop("scored_at").equals(frame(project, alone).drop("scored_at"))
    batchml.publish(project, "default_risk", result.served.run_id)
    con = batchml.connect(project)
    assert con.execute("SELECT DISTINCT model_version, run_id FROM predictions").fetchall() == [
        (1, result.served.run_id)
    ]
    assert con.execute("SELECT count(*) FROM predictions").fetchone() == (result.served.rows,)
    # Scoring again reuses both runs and the comparison: nothing new is written.
    again = batchml.api.score_with_shadows(project, "default_risk")
    assert again.served.reused and again.shadows[0].reused
    assert again.comparisons == result.comparisons


def test_comparison_is_recorded_in_sql_and_matches_the_runs(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    project = shadow_project(make_project, loans_csv, "top_share = 0.05\n")
    result = batchml.api.score_with_shadows(project, "default_risk")
    (record,) = result.comparisons
    served, shadowed = frame(project, result.served), frame(project, result.shadows[0])
    both = served.join(shadowed, on="entity_id", suffix="_s")
    assert record["common_entities"] == both.height == served.height
    flips = (both["predicted_class"] != both["predicted_class_s"]).mean()
    assert record["flip_rate"] == pytest.approx(flips)
    delta = (both["prediction"] - both["prediction_s"]).abs().mean()
    assert record["mean_abs_delta"] == pytest.approx(delta)
    ks = stats.ks_2samp(served["prediction"].to_numpy(), shadowed["prediction"].to_numpy()).statistic
    assert record["ks_statistic"] == pytest.approx(ks)
    k = round(0.05 * served.height)
    top = [set(f.sort(["prediction", "entity_id"], descending=[True, False])["entity_id"][:k]) for f in
           (served, shadowed)]  # fmt: skip
    assert (record["top_k"], record["top_k_overlap"]) == (k, pytest.approx(len(top[0] & top[1]) / k))
    batchml.publish(project, "default_risk", result.served.run_id)
    row = (
        batchml.connect(project)
        .execute(
            "SELECT served_version, shadow_version, shadow_run_id, flip_rate, diverged "
            "FROM shadow_comparisons"
        )
        .fetchall()
    )
    assert row == [(1, 2, result.shadows[0].run_id, pytest.approx(flips), record["diverged"])]


def test_a_run_compared_with_itself_does_not_diverge(champion: batchml.ModelVersion, project: Any) -> None:
    run = batchml.score(project, "default_risk")
    record = shadow.compare_shadow(project.storage, run, run, project.config.model("default_risk").shadow)
    assert (record["flip_rate"], record["mean_abs_delta"], record["ks_statistic"]) == (0.0, 0.0, 0.0)
    assert record["top_k_overlap"] == 1.0 and record["psi"] == pytest.approx(0.0)
    assert not record["diverged"] and alerts.list_alerts(project.storage) == []


def test_divergence_beyond_a_limit_is_one_alert(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    project = shadow_project(
        make_project,
        loans_csv,
        "max_mean_abs_delta = 0.0\nmax_psi = 100.0\nmax_ks = 1.0\nmax_flip_rate = 1.0\n",
    )
    with provenance.flow_run("flow-run-7"):  # compared on a pool thread: the alert still names the flow run
        result = batchml.api.score_with_shadows(project, "default_risk")
    (record,) = result.comparisons
    (divergence,) = record["divergences"]  # only the limit it is beyond
    assert (
        record["diverged"]
        and divergence.startswith("mean_abs_delta ")
        and "> max_mean_abs_delta 0" in divergence
    )
    batchml.api.score_with_shadows(project, "default_risk")  # the same breach again: recorded once
    (alert,) = alerts.list_alerts(project.storage, "default_risk")
    assert alert["kind"] == "shadow_divergence" and alert["version"] == 2
    assert alert["run_id"] == result.shadows[0].run_id and "diverges from served v1" in alert["detail"]
    assert alert["flow_run_id"] == "flow-run-7"


def test_shadow_limits_are_checked_by_the_config(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    with pytest.raises(ConfigError, match="max_flip_rate"):
        make_project(PROJECT_TOML.format(source=loans_csv) + SHADOW + "max_flip_rate = 2\n")
    with pytest.raises(ConfigError, match="alias"):
        make_project(
            PROJECT_TOML.format(source=loans_csv) + '\n[models.default_risk.shadow]\naliases = ["../x"]\n'
        )


def test_divergences_name_value_and_limit() -> None:
    found = shadow.divergences(
        {"psi": 0.31, "ks_statistic": 0.05, "top_k_overlap": 0.4, "flip_rate": None},
        {"max_psi": 0.2, "max_ks": 0.1, "min_top_k_overlap": 0.5, "max_flip_rate": 0.0},
    )
    assert found == ["psi 0.31 > max_psi 0.2", "top_k_overlap 0.4 < min_top_k_overlap 0.5"]


def test_a_failing_shadow_does_not_stop_the_champion(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    project = make_project(
        PROJECT_TOML.format(source=loans_csv) + "\n[models.default_risk.shadow]\nversions = [2]\n"
    )
    batchml.snapshot_dataset(project, "loans")
    batchml.promote(project, "default_risk", batchml.train(project, "default_risk").version, reason="first")
    # v2 needs a column the dataset does not have: its scoring fails before reading a row.
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(200, 2))
    booster = lgb.train(
        {"objective": "binary", "verbose": -1}, lgb.Dataset(matrix, rng.integers(0, 2, 200)), 3
    )
    batchml.register_model(
        project, "default_risk", booster, entity_id="loan_id", feature_names=["amount", "nope"]
    )
    result = batchml.api.score_with_shadows(project, "default_risk")
    assert result.served.manifest["model_version"] == 1 and result.served.rows > 0
    assert list(result.failed) == [2] and "nope" in result.failed[2]
    assert result.shadows == [] and result.comparisons == []


def test_ks_statistic_is_scipys_with_ties_and_unequal_sizes() -> None:
    rng = np.random.default_rng(3)
    for a, b in [
        (rng.normal(size=1000), rng.normal(0.1, size=1500)),
        (rng.integers(0, 5, 100).astype(float), rng.integers(0, 6, 80).astype(float)),
    ]:
        assert run_compare.ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic)


def test_top_ids_break_ties_by_entity_id_as_sql_does() -> None:
    import duckdb
    import pyarrow as pa

    rng = np.random.default_rng(5)
    values = rng.integers(0, 20, 500).astype(float) / 10  # many ties at every value
    ids = [f"L{i:04d}" for i in rng.permutation(500)]
    runs_table = pa.table({"entity_id": ids, "prediction": values, "predicted_class": ["x"] * 500})
    for k in (1, 7, 60, 499, 500, 900):
        want = duckdb.sql(f"SELECT entity_id FROM runs_table ORDER BY prediction DESC, entity_id LIMIT {k}")
        assert sorted(run_compare.top_ids(runs_table, k).to_pylist()) == sorted(r[0] for r in want.fetchall())


def test_per_entity_measures_join_runs_of_other_rows_or_order() -> None:
    import pyarrow as pa

    old = pa.table({"entity_id": ["a", "b", "c"], "prediction": [0.1, 0.6, 0.9],
                    "predicted_class": ["no", "yes", "yes"]})  # fmt: skip
    same = run_compare._per_entity(old, old)
    assert same == (3, 0.0, 0.0)
    shuffled = old.take([2, 0, 1])
    assert run_compare._per_entity(shuffled, old) == same  # joined by entity id, not by position
    fewer = pa.table({"entity_id": ["c", "a", "z"], "prediction": [0.4, 0.1, 0.5],
                      "predicted_class": ["no", None, "yes"]})  # fmt: skip
    common, flips, delta = run_compare._per_entity(fewer, old)
    assert (common, flips, delta) == (2, pytest.approx(1.0), pytest.approx(0.25))
    aligned = run_compare._per_entity(fewer.take([1, 0]), old.take([0, 2]))  # same rows, same order
    assert aligned == (2, pytest.approx(1.0), pytest.approx(0.25))


def test_several_shadows_are_compared_side_by_side_each_with_its_own_record(
    make_project: Callable[..., batchml.Project], loans_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(
        PROJECT_TOML.format(source=loans_csv) + "\n[models.default_risk.shadow]\nversions = [3, 2]\n"
    )
    batchml.snapshot_dataset(project, "loans")
    batchml.promote(project, "default_risk", batchml.train(project, "default_risk").version, reason="first")
    for leaves in (4, 8):
        batchml.train(project, "default_risk", params={"num_leaves": leaves, "num_iterations": 10})
    served_reads: list[str] = []
    original = run_compare.read_run

    def counted(storage: Any, run: batchml.PredictionRun) -> Any:
        served_reads.append(run.run_id)
        return original(storage, run)

    monkeypatch.setattr("batchml.arms.read_run", counted)
    result = batchml.api.score_with_shadows(project, "default_risk")
    assert [r.manifest["model_version"] for r in result.shadows] == [3, 2]
    assert [c["shadow_run_id"] for c in result.comparisons] == [r.run_id for r in result.shadows]
    assert served_reads == [result.served.run_id]  # the served run is read once for both comparisons
    for shadow_run, record in zip(result.shadows, result.comparisons, strict=True):
        share = project.config.models["default_risk"].shadow.top_share
        alone = run_compare.compare_runs(project.storage, shadow_run, result.served, top_share=share)
        assert record["psi"] == alone["psi"] and record["top_k_overlap"] == alone["top_k_overlap"]
