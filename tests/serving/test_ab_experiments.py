"""A/B experiments: stable salted assignment, one row per entity from its arm, results once labels arrive."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import batchml
from batchml import releases
from batchml.api import score_with_shadows
from batchml.arms import VARIANT, after_scoring, extra_arms
from batchml.data import labels
from batchml.errors import BatchMLError, ConflictError
from batchml.models.registry import RegistryReader
from batchml.serving import canary, experiment_results, experiments
from batchml.testing import write_loans
from tests.conftest import PROJECT_TOML, SAMPLE_ROWS
from tests.monitoring.test_performance import MONITORING as LABELS
from tests.serving.test_compat import LTS_VENV, lts_answers

SHARES = [0.3, 0.7]


def two_versions(
    make_project: Callable[..., batchml.Project], loans_csv: Path, extra: str = ""
) -> batchml.Project:
    """Champion v1 and a second version v2 (another model), labels configured."""
    project = make_project(PROJECT_TOML.format(source=loans_csv) + LABELS + extra)
    batchml.snapshot_dataset(project, "loans")
    batchml.promote(project, "default_risk", batchml.train(project, "default_risk").version, reason="first")
    batchml.train(project, "default_risk", params={"num_leaves": 4, "num_iterations": 10})
    return project


def start(project: batchml.Project, **options: object) -> dict[str, object]:
    given = [("control", "champion"), ("b", "2")]
    return releases.start_experiment(project, "default_risk", "pricing", given, SHARES, **options)  # type: ignore[arg-type]


def served(project: batchml.Project) -> pl.DataFrame:
    with batchml.connect(project) as con:
        rows = con.execute("SELECT entity_id, variant, model_version, run_id FROM predictions").fetchall()
    return pl.DataFrame(rows, schema=["entity_id", "variant", "model_version", "run_id"], orient="row")


def expected_variant(entity: str, salt: str = "default_risk:pricing") -> str:
    return "control" if canary.bucket(salt, entity) < SHARES[0] else "b"


def test_assignment_is_stable_and_matches_the_shares_within_sampling_error() -> None:
    variants = [{"name": "a", "share": 0.2}, {"name": "b", "share": 0.5}, {"name": "c", "share": 0.3}]
    ranges = experiments.bounds(variants)
    assert ranges[0] == (0.0, 0.2) and ranges[-1][1] == 1.0
    ids = [f"C-{i}" for i in range(50_000)]
    buckets = np.array([canary.bucket("m:x", e) for e in ids])
    for v, (low, high) in zip(variants, ranges, strict=True):
        n, p = len(ids), float(v["share"])  # type: ignore[arg-type]
        count = int(((buckets >= low) & (buckets < high)).sum())
        assert abs(count - n * p) < 5 * (n * p * (1 - p)) ** 0.5  # binomial, 5 sigma
    assert [canary.bucket("m:x", e) for e in ids[:100]] == list(buckets[:100])  # the same every time


def test_every_arm_scored_in_one_run_and_served_one_row_per_entity(
    make_project: Callable[..., batchml.Project], loans_csv: Path, tmp_path: Path
) -> None:
    project = two_versions(make_project, loans_csv)
    started = start(project, reason="does v2 lower defaults?")
    assert (started["experiment_version"], started["control"], started["metric"]) == (
        1,
        "control",
        "outcome_rate",
    )
    scored = score_with_shadows(project, "default_risk")
    arms = scored.experiment["runs"]
    assert arms["control"] == scored.served.run_id and arms["b"] != arms["control"]
    assert scored.shadows == []  # an arm is not a shadow: no comparison, never an alert
    batchml.publish(project, "default_risk", scored.served.run_id)
    rows = served(project)
    assert rows.height == rows["entity_id"].n_unique() == scored.served.rows
    assert all(expected_variant(e) == v for e, v in rows.select("entity_id", "variant").iter_rows())
    assert set(rows.filter(pl.col("variant") == "b")["model_version"]) == {2}
    assert set(rows.filter(pl.col("variant") == "control")["model_version"]) == {1}
    with batchml.connect(project) as con:
        assigned = con.execute(
            "SELECT entity_id, variant FROM experiment_assignments WHERE experiment = 'pricing' "
            "AND experiment_version = 1"
        ).fetchall()
        table = con.execute(
            "SELECT variant, model_version, share, status FROM experiments ORDER BY 1"
        ).fetchall()
    assert sorted(assigned) == sorted(rows.select("entity_id", "variant").iter_rows())
    assert table == [("b", 2, 0.7, "running"), ("control", 1, 0.3, "running")]
    # New data: same entities keep their arm; re-running the same run appends nothing.
    again = score_with_shadows(project, "default_risk")
    assert again.experiment["seq"] == scored.experiment["seq"]
    batchml.snapshot_dataset(project, "loans", str(write_loans(tmp_path / "new.csv", SAMPLE_ROWS, seed=8)))
    newer = score_with_shadows(project, "default_risk")
    batchml.publish(project, "default_risk", newer.served.run_id)
    moved = served(project)
    assert set(moved["run_id"]) == set(newer.experiment["runs"].values())
    assert all(expected_variant(e) == v for e, v in moved.select("entity_id", "variant").iter_rows())


def test_the_partitioned_path_scores_and_records_the_variants_through_the_same_arms(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    """The score flow's partitioned path learns its arms from `arms.extra_arms` and ends with
    `arms.after_scoring`: the variants are among the arms, and their runs make the experiment's arms event."""
    project = two_versions(make_project, loans_csv)
    start(project, reason="partitioned")
    champion = RegistryReader(project.storage).resolve("default_risk", alias="champion")
    planned = extra_arms(project, "default_risk", champion)
    assert [(a.version, a.roles) for a in planned] == [(2, (VARIANT,))]
    served_run = batchml.score(project, "default_risk", shadows=False)
    variant_run = batchml.score(project, "default_risk", version=2)
    recorded = after_scoring(project, "default_risk", served_run, planned, [variant_run]).experiment
    assert recorded["runs"] == {"control": served_run.run_id, "b": variant_run.run_id}
    assert score_with_shadows(project, "default_risk").experiment["seq"] == recorded["seq"]  # the same arms


def _labels_with_effect(
    project: batchml.Project, tmp_path: Path, rates: dict[str, float], seed: int = 3
) -> batchml.DatasetVersion:
    """Labels for every served entity: defaulted ~ Bernoulli(rate of its variant), known an hour from now."""
    rows = served(project)
    rng = np.random.default_rng(seed)
    p = np.array([rates[v] for v in rows["variant"]])
    frame = pl.DataFrame(
        {
            "loan_id": rows["entity_id"],
            "defaulted": (rng.random(rows.height) < p).astype(np.int64),
            "known_at": [datetime.now(UTC) + timedelta(hours=1)] * rows.height,
        }
    )
    frame.write_parquet(tmp_path / "labels.parquet")
    return labels.ingest(project, "loan_labels", str(tmp_path / "labels.parquet"))


def test_uplift_with_a_known_effect_is_recovered_within_its_interval(
    make_project: Callable[..., batchml.Project], loans_csv: Path, tmp_path: Path
) -> None:
    project = two_versions(make_project, loans_csv)
    start(project, goal="decrease", min_samples=200)
    batchml.publish(project, "default_risk", score_with_shadows(project, "default_risk").served.run_id)
    version = _labels_with_effect(project, tmp_path, {"control": 0.30, "b": 0.20})
    spec = project.config.model("default_risk")
    (result,) = experiment_results.experiment_results(project.storage, "default_risk", version, spec)
    b = next(r for r in result["rows"] if r["variant"] == "b" and r["metric"] == "outcome_rate")
    control = next(r for r in result["rows"] if r["variant"] == "control" and r["metric"] == "outcome_rate")
    assert b["rows"] + control["rows"] == SAMPLE_ROWS and abs(b["rows"] / SAMPLE_ROWS - 0.7) < 0.05
    assert b["ci_low"] < -0.10 < b["ci_high"] and b["ci_high"] < 0  # the true effect, inside; 0 outside
    assert (b["verdict"], result["verdict"], result["winner"], result["level"]) == (
        "better",
        "winner",
        "b",
        0.95,
    )
    assert {r["metric"] for r in result["rows"]} == {"outcome_rate", "accuracy", "log_loss"}
    again = experiment_results.experiment_results(project.storage, "default_risk", version, spec)
    assert again == [result]  # stored once per labels version x experiment version
    batchml.rebuild_catalog(project)
    with batchml.connect(project) as con:
        sql = ("SELECT variant, rows, uplift, verdict, winner FROM experiment_results "
               "WHERE is_decision_metric ORDER BY variant")  # fmt: skip
        assert con.execute(sql).fetchall() == [
            ("b", b["rows"], b["uplift"], "better", "b"),
            ("control", control["rows"], None, None, "b"),
        ]


def test_too_few_labels_give_no_verdict(
    make_project: Callable[..., batchml.Project], loans_csv: Path, tmp_path: Path
) -> None:
    project = two_versions(make_project, loans_csv)
    start(project, min_samples=5000)
    batchml.publish(project, "default_risk", score_with_shadows(project, "default_risk").served.run_id)
    version = _labels_with_effect(
        project, tmp_path, {"control": 0.5, "b": 0.0}
    )  # a huge effect, too few rows
    spec = project.config.model("default_risk")
    (result,) = experiment_results.experiment_results(project.storage, "default_risk", version, spec)
    assert (result["verdict"], result["winner"]) == ("insufficient_data", None)
    assert {r["verdict"] for r in result["rows"] if r["variant"] == "b"} == {"insufficient_data"}


def test_stop_and_conclude_are_events_and_the_winner_is_promoted(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    project = two_versions(make_project, loans_csv)
    start(project)
    revised = releases.start_experiment(
        project, "default_risk", "pricing", [("control", "1"), ("b", "2")], [0.5, 0.5], revise=True
    )
    assert revised["experiment_version"] == 2
    batchml.publish(project, "default_risk", score_with_shadows(project, "default_risk").served.run_id)
    concluded = releases.conclude_experiment(project, "default_risk", "pricing", "b", "b won")
    assert concluded["concluded"]["winner"] == "b" and concluded["promoted"]["to_version"] == 2
    assert RegistryReader(project.storage).aliases("default_risk")["champion"] == 2
    assert releases.conclude_experiment(project, "default_risk", "pricing", "b", "again")["promoted"] is None
    with pytest.raises(
        ConflictError, match="'pricing' of model 'default_risk' was concluded with winner 'b'"
    ):
        releases.conclude_experiment(project, "default_risk", "pricing", "control", "changed my mind")
    with batchml.connect(project) as con:
        states = con.execute("SELECT DISTINCT experiment_version, status, winner FROM experiments ORDER BY 1")
        assert states.fetchall() == [(1, "revised", None), (2, "concluded", "b")]
        assert con.execute("SELECT DISTINCT variant FROM predictions").fetchall() == [("control",)]
    releases.start_experiment(project, "default_risk", "next", [("a", "1"), ("b", "2")], [0.5, 0.5])
    stopped = releases.stop_experiment(project, "default_risk", "next", "by hand")
    assert (stopped["action"], stopped["reason"]) == ("stop", "by hand")
    assert experiments.running(experiments.event_log(project.storage, "default_risk").read()) is None
    with pytest.raises(ConflictError, match=r"'next' of model 'default_risk' was stopped at .*: it cannot"):
        releases.conclude_experiment(
            project, "default_risk", "next", "b", "a stopped experiment has no winner"
        )
    assert RegistryReader(project.storage).aliases("default_risk")["champion"] == 2  # nothing promoted


@pytest.mark.parametrize(
    ("given", "shares", "message"),
    [
        ([("control", "1"), ("b", "9")], [0.5, 0.5], "version of model 'default_risk' '9' not found"),
        ([("control", "1"), ("b", "nobody")], [0.5, 0.5], "for variant 'b' 'nobody' not found"),
        ([("control", "1"), ("b", "2")], [0.5, 0.6], r"must each lie in \(0, 1\] and sum to 1"),
        ([("control", "1"), ("b", "2")], [1.0], "1 shares"),
        ([("a", "1"), ("a", "2")], [0.5, 0.5], "repeat"),
        ([("Bad Name", "1"), ("b", "2")], [0.5, 0.5], "variant name 'Bad Name'"),
    ],
)
def test_bad_experiments_are_one_clear_line(
    make_project: Callable[..., batchml.Project],
    loans_csv: Path,
    given: list[tuple[str, str]],
    shares: list[float],
    message: str,
) -> None:
    project = two_versions(make_project, loans_csv)
    with pytest.raises(BatchMLError, match=message) as caught:
        releases.start_experiment(project, "default_risk", "pricing", given, shares)
    assert "\n" not in str(caught.value)


def test_one_split_at_a_time_and_names_are_not_reused(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    project = two_versions(make_project, loans_csv, "\n[models.default_risk.canary]\nshares = [0.1]\n")
    start(project)
    with pytest.raises(BatchMLError, match="already exists and is running: pass --revise"):
        start(project)
    with pytest.raises(BatchMLError, match="experiment 'pricing' is running on model 'default_risk'"):
        releases.start_canary(project, "default_risk", 2, "")
    releases.stop_experiment(project, "default_risk", "pricing", "done")
    with pytest.raises(BatchMLError, match="has ended: choose another name"):
        start(project)
    releases.start_canary(project, "default_risk", 2, "")
    with pytest.raises(BatchMLError, match="runs a canary"):
        releases.start_experiment(project, "default_risk", "other", [("a", "1"), ("b", "2")], [0.5, 0.5])


CANARY = """
[models.default_risk.canary]
shares = [0.2]
max_psi = 100.0
max_ks = 1.0
max_flip_rate = 1.0
performance_metric = "accuracy"
max_performance_drop = 0.05
min_samples = 100
"""


def test_a_canary_worse_on_labels_rolls_back_automatically(
    make_project: Callable[..., batchml.Project], loans_csv: Path, tmp_path: Path
) -> None:
    project = two_versions(make_project, loans_csv, CANARY)
    releases.start_canary(project, "default_risk", 2, "try v2")
    batchml.publish(project, "default_risk", score_with_shadows(project, "default_risk").served.run_id)
    with batchml.connect(project) as con:
        rows = con.execute("SELECT entity_id, variant, predicted_class FROM predictions").fetchall()
    # Labels: control's decisions all right, the canary's all wrong.
    frame = pl.DataFrame(rows, schema=["loan_id", "variant", "predicted"], orient="row").with_columns(
        pl.when(pl.col("variant") == "canary")
        .then(1 - pl.col("predicted").cast(pl.Int64))
        .otherwise(pl.col("predicted").cast(pl.Int64))
        .alias("defaulted"),
        pl.lit(datetime.now(UTC) + timedelta(hours=1)).alias("known_at"),
    )
    frame.select("loan_id", "defaulted", "known_at").write_parquet(tmp_path / "labels.parquet")
    version = labels.ingest(project, "loan_labels", str(tmp_path / "labels.parquet"))
    spec = project.config.model("default_risk")
    evaluated = experiment_results.evaluate(project.storage, "default_risk", spec, version)
    rollback = evaluated["canary_rollback"]
    assert rollback is not None and rollback["action"] == "rollback"
    event = RegistryReader(project.storage).events("default_risk")[-1]
    assert (event["action"], event["alias"], event["from_version"], event["automatic"]) == (
        "rollback",
        "canary",
        2,
        True,
    )
    assert (
        "labelled accuracy 0 vs control 1" in event["reason"]
        and "max_performance_drop 0.05" in event["reason"]
    )
    again = experiment_results.evaluate(project.storage, "default_risk", spec, version)
    assert again["canary_rollback"] is None  # no canary left to judge


@pytest.mark.slow
def test_experiment_views_answer_the_same_in_duckdb_lts(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    if not (LTS_VENV / ".installed-stamp").exists():
        pytest.skip(f"no DuckDB 1.4 virtualenv at {LTS_VENV}: `make test` builds it")
    project = two_versions(make_project, loans_csv)
    start(project)
    batchml.publish(project, "default_risk", score_with_shadows(project, "default_risk").served.run_id)
    queries = {
        "arms": "SELECT variant, model_version, count(*), count(DISTINCT entity_id) FROM predictions "
        "GROUP BY ALL ORDER BY ALL",
        "assigned": "SELECT variant, count(*) FROM experiment_assignments GROUP BY ALL ORDER BY ALL",
        "experiments": "SELECT experiment, variant, share, status FROM experiments ORDER BY ALL",
    }
    with batchml.connect(project) as con:
        expected = {
            k: [[str(v) for v in row] for row in con.execute(q).fetchall()] for k, q in queries.items()
        }
    lts = lts_answers(LTS_VENV, batchml.database_path(project).resolve(), queries)
    assert lts["version"].startswith("1.4.") and len(expected["arms"]) == 2
    assert {k: [[str(v) for v in row] for row in rows] for k, rows in lts["answers"].items()} == expected


@pytest.mark.slow
def test_the_monitor_flow_evaluates_experiments_and_leaves_an_artifact(
    prefect_api: None, make_project: Callable[..., batchml.Project], loans_csv: Path, tmp_path: Path
) -> None:
    from flows.monitor import monitor
    from tests.test_flows import _artifacts

    project = two_versions(make_project, loans_csv)
    start(project, goal="decrease", min_samples=200)
    batchml.publish(project, "default_risk", score_with_shadows(project, "default_risk").served.run_id)
    _labels_with_effect(project, tmp_path, {"control": 0.30, "b": 0.20})
    state = monitor("default_risk", config=str(project.base_dir / "batchml.toml"), return_state=True)
    assert state.is_completed(), state.message
    (result,) = state.result()["experiments"]["results"]
    assert (result["experiment"], result["verdict"], result["winner"]) == ("pricing", "winner", "b")
    artifacts = {a.key: str(a.data) for a in _artifacts(state)}
    assert "Experiment `pricing` v1" in artifacts["experiments-default-risk"]
    assert "**winner**, winner **b** on outcome_rate" in artifacts["experiments-default-risk"]
    with batchml.connect(project) as con:  # the monitor's catalog rebuild brought the result into SQL
        assert con.execute("SELECT DISTINCT winner FROM experiment_results").fetchall() == [("b",)]
