"""Partitioned scoring (on a local Dask cluster, or the flow's default task runner) gives the same runs as
sequential scoring: the champion's, and those of its shadows and canary."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import batchml
from batchml.api import score_with_shadows, scoring_inputs
from batchml.arms import Arm, after_scoring, arm_scorer, extra_arms
from batchml.errors import DataError
from batchml.models.registry import Registry
from batchml.monitoring import alerts
from batchml.scoring import partitions
from batchml.scoring.partitions import (
    commit_partitions,
    commit_partitions_together,
    new_scored_at,
    plan_partitions,
    score_partition,
    score_partition_together,
)
from batchml.scoring.run_checksum import files_checksum
from batchml.scoring.runs import get_run
from batchml.serving import canary
from flows.score import score_and_publish, score_and_publish_on_dask
from tests.checks.test_expectations import AGE, REGION, ROW, scoring_limit, snapshot_variant
from tests.conftest import PROJECT_TOML

MODEL = "default_risk"
WARN = '\n[models.default_risk.expectations.open_accounts]\nmax = 3\nseverity = "warn"\n'


def _variant(df: pl.DataFrame) -> pl.DataFrame:
    """Rows breaking hard rules spread over the whole dataset (so over every partition)."""
    return df.with_columns(
        age=pl.when(ROW % 301 == 0).then(12).otherwise("age"),
        region=pl.when(ROW % 499 == 7).then(pl.lit("atlantis")).otherwise("region"),
    )


def _rows(project: batchml.Project, run: batchml.PredictionRun) -> pa.Table:
    for entry in run.files:
        project.storage.verify(entry)  # every file the manifest lists hash-checks
    table = pa.concat_tables(pq.read_table(Path(project.storage.root, f.path)) for f in run.files)
    return table.sort_by("entity_id").select(
        ["entity_id", "prediction", "predicted_class", "input_hash", "reasons", "flags", "run_id"]
    )


@pytest.fixture
def twins(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> tuple[batchml.Project, batchml.Project, str]:
    """Two projects holding the same champion and the same dataset version (with some bad rows)."""
    # Reasons for the top fifth by score: a row's selection must not depend on its partition.
    reasons = 'reason_codes = 3\nreason_rows = "top"\nreason_share = 0.2\n'
    toml = PROJECT_TOML.format(source=loans_csv) + AGE + REGION + WARN + scoring_limit(0.05) + reasons
    first = make_project(toml, folder="sequential")
    batchml.snapshot_dataset(first, "loans")
    model = batchml.train(first, "default_risk")
    batchml.promote(first, "default_risk", model.version, reason="fixture")
    ref = snapshot_variant(first, loans_csv, _variant)
    return first, _copy(first), ref


def _copy(project: batchml.Project) -> batchml.Project:
    """A copy of `project` beside it, in folder `partitioned`."""
    shutil.copytree(project.base_dir, project.base_dir.parent / "partitioned", symlinks=True)
    return batchml.Project.open(project.base_dir.parent / "partitioned" / "batchml.toml")


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_partitioned_run_on_dask_equals_the_sequential_run(
    twins: tuple[batchml.Project, batchml.Project, str],
) -> None:
    first, second, ref = twins
    sequential = batchml.score(first, "default_risk", dataset=ref)
    result = score_and_publish_on_dask(
        model="default_risk", dataset=ref, config=str(second.base_dir / "batchml.toml"), partitions=3
    )
    partitioned = get_run(second.storage, "default_risk", result["run_id"])
    assert partitioned.run_id == sequential.run_id and not result["reused"]
    assert partitioned.manifest["partitions"] == 3 and len(partitioned.files) == 3
    assert partitioned.rows == sequential.rows == 4000 - sequential.summary["quarantined"]
    assert sequential.summary["quarantined"] > 3 and sequential.summary["warnings"]
    assert _rows(second, partitioned).equals(_rows(first, sequential))  # rows, scores, hashes, reasons, flags
    selected = pc.sum(pc.is_valid(_rows(first, sequential).column("reasons"))).as_py()
    assert 0 < selected < sequential.rows  # reasons on, for some rows only
    assert partitioned.summary == sequential.summary  # same quarantine totals, rules, warnings, flags
    assert partitioned.manifest["content_checksum"] == sequential.manifest["content_checksum"]  # any order
    made_by = [(r.manifest["flow_name"], bool(r.manifest["flow_run_id"])) for r in (sequential, partitioned)]
    assert made_by == [(None, False), ("score-and-publish", True)]  # the flow run that committed it
    quarantined = [
        pq.read_table(Path(p.storage.root, f.path))
        for p, r in ((first, sequential), (second, partitioned))
        for f in r.quarantine_files
    ]
    assert sum(t.num_rows for t in quarantined) == 2 * sequential.summary["quarantined"]
    assert result["published"]["changed"]
    assert batchml.connect(second).sql("select count(*) from predictions").fetchall() == [(partitioned.rows,)]


def test_partitions_over_the_quarantine_limit_commit_nothing(
    twins: tuple[batchml.Project, batchml.Project, str],
) -> None:
    project, _, ref = twins
    registry = Registry(project.storage)
    model = registry.resolve("default_risk", alias="champion")
    _, dataset, options = scoring_inputs(project, "default_risk", dataset=ref)
    plan = plan_partitions(project.storage, dataset, 4)
    assert [sum(r[3] - r[2] for r in p) for p in plan] == [1000] * 4
    strict = type(options)(expectations=options.expectations, max_quarantine_share=0.004)
    stamp = new_scored_at()
    booster = registry.load_booster(model)
    results = [  # each partition alone stays under 0.4% of all rows; together they are over it
        score_partition(project.storage, model, booster, dataset, p, index=i, scored_at=stamp, options=strict)
        for i, p in enumerate(plan)
    ]
    with pytest.raises(DataError, match=r"over max_quarantine_share 0\.004"):
        commit_partitions(project.storage, model, dataset, results, scored_at=stamp, options=strict)
    assert not [p for p in Path(project.storage.root, "runs").rglob("*") if p.is_file()]


def test_the_checksum_computed_while_writing_is_the_files_checksum(
    twins: tuple[batchml.Project, batchml.Project, str],
) -> None:
    """Scoring checksums each batch as it writes it; the manifest must hold what reading the files gives,
    for a whole run and for partitions combined (reasons, flags and quarantined rows included)."""
    first, second, ref = twins
    sequential = batchml.score(first, "default_risk", dataset=ref)
    assert sequential.manifest["content_checksum"] == files_checksum(first.storage, sequential.files)
    model, dataset, options = scoring_inputs(second, "default_risk", dataset=ref)
    booster, stamp = Registry(second.storage).load_booster(model), new_scored_at()
    results = [
        score_partition(second.storage, model, booster, dataset, p, index=i, scored_at=stamp, options=options)
        for i, p in enumerate(plan_partitions(second.storage, dataset, 3))
    ]
    assert all(r["checksum"]["rows"] > 0 for r in results)
    partitioned = commit_partitions(second.storage, model, dataset, results, scored_at=stamp, options=options)
    assert partitioned.manifest["content_checksum"] == files_checksum(second.storage, partitioned.files)
    assert partitioned.manifest["content_checksum"] == sequential.manifest["content_checksum"]


# -- every arm of a champion run: its shadows and its canary, partitioned as sequentially --------------------

ARMS = """
[models.default_risk.shadow]
aliases = ["challenger"]
versions = [4]
max_mean_abs_delta = 0.0

[models.default_risk.canary]
shares = [0.1, 0.5, 1.0]
max_psi = 100.0
max_ks = 1.0
max_flip_rate = 1.0
"""


@pytest.fixture
def arm_twins(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> tuple[batchml.Project, batchml.Project, str]:
    """Two projects holding the same models and dataset version (with some bad rows): champion v1, shadows
    v2 (the challenger, diverging beyond its limit) and v4 (needs a column the data lacks, so it fails),
    canary v3."""
    project = make_project(PROJECT_TOML.format(source=loans_csv) + AGE + REGION + ARMS, folder="sequential")
    batchml.snapshot_dataset(project, "loans")
    batchml.promote(project, "default_risk", batchml.train(project, "default_risk").version, reason="first")
    for alias, leaves in (("challenger", 4), ("canary", 7)):
        other = batchml.train(project, "default_risk", params={"num_leaves": leaves, "num_iterations": 10})
        batchml.promote(project, "default_risk", other.version, alias=alias, reason="try")
    rng = np.random.default_rng(1)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1},
        lgb.Dataset(rng.normal(size=(200, 2)), rng.integers(0, 2, 200)),
        3,
    )
    batchml.register_model(
        project, "default_risk", booster, entity_id="loan_id", feature_names=["amount", "nope"]
    )
    ref = snapshot_variant(project, loans_csv, _variant)
    return project, _copy(project), ref


def _run_dirs(project: batchml.Project) -> set[str]:
    """The run ids with files under `runs/<model>/` (a removed part may leave its folder, empty)."""
    runs = Path(project.storage.root, "runs", MODEL)
    return {p.relative_to(runs).parts[0] for p in runs.rglob("*") if p.is_file()} - {"manifests"}


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_partitioned_flow_scores_shadows_and_canary_as_sequential_scoring_does(
    arm_twins: tuple[batchml.Project, batchml.Project, str],
) -> None:
    first, second, ref = arm_twins
    sequential = score_with_shadows(first, MODEL, dataset=ref)
    result = score_and_publish(
        model=MODEL, dataset=ref, config=str(second.base_dir / "batchml.toml"), partitions=3
    )
    assert result["run_id"] == sequential.served.run_id and not result["reused"]
    # The shadow v2 and the canary v3: the same runs (ids, rows, scores), made of three partitions each.
    (shadow,) = sequential.shadows
    for run in (shadow, get_run(first.storage, "default_risk", sequential.canary["run_id"])):
        partitioned = get_run(second.storage, "default_risk", run.run_id)
        assert partitioned.manifest["partitions"] == 3 and partitioned.summary == run.summary
        assert _rows(second, partitioned).equals(_rows(first, run))
    # The comparison (recorded, beyond the shadow's limit: an alert), and v4's failure, as sequentially.
    (compared, failed) = result["shadows"]
    (expected,) = sequential.comparisons
    assert (compared["shadow_version"], compared["shadow_run_id"], compared["diverged"]) == (
        2,
        shadow.run_id,
        True,
    )
    assert compared["flip_rate"] == pytest.approx(expected["flip_rate"])
    assert compared["mean_abs_delta"] == pytest.approx(expected["mean_abs_delta"])
    assert failed["shadow_version"] == 4 and "nope" in failed["failed"] and list(sequential.failed) == [4]
    alerted = [
        [(a["kind"], a["version"], a["run_id"]) for a in alerts.list_alerts(p.storage)]
        for p in (first, second)
    ]
    assert alerted[0] == alerted[1] == [("shadow_divergence", 2, shadow.run_id)]
    # The canary took the same first step of its ramp, and the published table serves it.
    steps = [
        [(e["action"], e["share"], e["run_id"], e["control_run_id"]) for e in canary.events(p.storage, MODEL)]
        for p in (first, second)
    ]
    assert steps[0] == steps[1] == [("advance", 0.1, sequential.canary["run_id"], sequential.served.run_id)]
    assert result["canary"] == {k: sequential.canary[k] for k in ("action", "version", "share", "reason")}
    variants = batchml.connect(second).sql(
        "SELECT DISTINCT variant, model_version FROM predictions ORDER BY 1"
    )
    assert variants.fetchall() == [("canary", 3), ("control", 1)]
    # The failing shadow left nothing behind; only the three runs have files.
    assert (
        _run_dirs(second)
        == _run_dirs(first)
        == {sequential.served.run_id, shadow.run_id, sequential.canary["run_id"]}
    )


def test_a_shadow_failing_in_one_partition_is_reported_and_its_other_parts_removed(
    arm_twins: tuple[batchml.Project, batchml.Project, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project, _, ref = arm_twins
    reads: list[list[list[int]]] = []
    original = partitions._batches

    def spy(storage: Any, dataset: Any, ranges: list[list[int]], columns: list[str]) -> Iterator[Any]:
        reads.append(ranges)
        return original(storage, dataset, ranges, columns)

    monkeypatch.setattr(partitions, "_batches", spy)
    model, dataset, _ = scoring_inputs(project, "default_risk", dataset=ref)
    arms = extra_arms(project, "default_risk", model)
    assert [(a.version, a.roles) for a in arms] == [(2, ("shadow",)), (4, ("shadow",)), (3, ("canary",))]
    scorers = [arm_scorer(project, "default_risk", Arm(1, ()), ref)]
    scorers += [arm_scorer(project, "default_risk", arm, ref) for arm in arms]
    stamp = new_scored_at()
    plan = plan_partitions(project.storage, dataset, 3)
    results = [
        score_partition_together(project.storage, scorers, dataset, p, index=i, scored_at=stamp)
        for i, p in enumerate(plan)
    ]
    assert all(
        r[2] == {"index": r[0]["index"], "error": r[2]["error"]} and "nope" in r[2]["error"] for r in results
    )
    # v2 fails in the second partition only (as if its scoring broke there): its other parts must go.
    doomed = [entry["path"] for entry in results[1][1]["files"] + results[1][1]["quarantine_files"]]
    for path in doomed:
        Path(project.storage.root, path).unlink()
    results[1][1] = {"index": 1, "error": "broke in partition 1"}
    versions = [(s.model, s.options) for s in scorers]
    served, *runs = commit_partitions_together(project.storage, versions, dataset, results, scored_at=stamp)
    assert isinstance(served, batchml.PredictionRun) and served.manifest["partitions"] == 3
    assert [
        str(r) if not isinstance(r, batchml.PredictionRun) else r.manifest["model_version"] for r in runs
    ] == ["broke in partition 1", results[0][2]["error"], 3]
    assert _run_dirs(project) == {served.run_id, runs[2].run_id}  # v2's parts of partitions 0 and 2 removed
    scored = after_scoring(project, "default_risk", served, arms, runs)
    assert scored.failed == {2: "broke in partition 1", 4: results[0][2]["error"]} and not scored.shadows
    assert scored.canary["action"] == "advance" and served.summary["quarantined"] > 0
