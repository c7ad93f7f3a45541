"""Partitioned scoring on a local Dask cluster gives the same run as sequential scoring."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import batchml
from batchml.api import scoring_inputs
from batchml.errors import DataError
from batchml.models.registry import Registry
from batchml.scoring.partitions import commit_partitions, new_scored_at, plan_partitions, score_partition
from batchml.scoring.run_checksum import files_checksum
from batchml.scoring.runs import get_run
from flows.score import score_and_publish_on_dask
from tests.checks.test_expectations import AGE, REGION, ROW, scoring_limit, snapshot_variant
from tests.conftest import PROJECT_TOML

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
    shutil.copytree(first.base_dir, first.base_dir.parent / "partitioned", symlinks=True)
    return first, batchml.Project.open(first.base_dir.parent / "partitioned" / "batchml.toml"), ref


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
