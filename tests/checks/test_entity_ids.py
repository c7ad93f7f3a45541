"""One row per (model, entity): duplicated and null entity ids are quarantined, wherever the copies are.

Duplicates are found by one pass over the entity id column of the whole dataset version before scoring, so
copies in different batches, files and partitions are all caught.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from typer.testing import CliRunner

import batchml
from batchml.api import scoring_inputs
from batchml.checks import entity_ids
from batchml.cli import app
from batchml.data import datasets
from batchml.data.datasets import DatasetVersion
from batchml.errors import DataError, IntegrityError
from batchml.models.registry import Registry
from batchml.scoring import runs
from batchml.scoring.partitions import commit_partitions, new_scored_at, plan_partitions, score_partition
from batchml.store.storage import Storage
from tests.checks.test_expectations import ROW, run_files, scoring_limit, snapshot_variant
from tests.conftest import PROJECT_TOML

FIRST, SECOND = "L000000001", "L000000100"


def _duplicated(df: pl.DataFrame) -> pl.DataFrame:
    """Row 3000 repeats the first row's id; rows 1500 and 3999 repeat the 100th row's id (far apart)."""
    return df.with_columns(
        loan_id=pl.when(ROW == 3000)
        .then(pl.lit(FIRST))
        .when(ROW.is_in([1500, 3999]))
        .then(pl.lit(SECOND))
        .otherwise("loan_id")
    )


def test_duplicate_ids_are_quarantined_with_every_copy(
    project: batchml.Project,
    champion: batchml.ModelVersion,
    loans_csv: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runs, "BATCH_ROWS", 512)  # the copies are in different batches
    ref = snapshot_variant(project, loans_csv, _duplicated)
    run = batchml.score(project, "default_risk", dataset=ref)
    summary = run.summary
    assert (summary["rows_in"], summary["quarantined"], summary["scored"]) == (4000, 5, 3995)
    assert summary["quarantine"] == [{"column": "loan_id", "rule": "duplicate_id", "rows": 5}]
    assert summary["duplicate_ids"] == 2
    assert run.rows == 3995

    batchml.publish(project, "default_risk", run.run_id)
    con = batchml.connect(project)
    lookup = "SELECT count(*) FROM predictions WHERE model = 'default_risk' AND entity_id = ?"
    assert con.execute(lookup, [FIRST]).fetchone() == (0,)
    assert con.execute(lookup, [SECOND]).fetchone() == (0,)
    per_entity = "SELECT max(n) FROM (SELECT count(*) AS n FROM predictions GROUP BY model, entity_id)"
    assert con.execute(per_entity).fetchone() == (1,)
    quarantined = con.execute(
        "SELECT entity_id, column_name, rule, value FROM quarantine ORDER BY entity_id"
    ).fetchall()
    copy = [(i, "loan_id", "duplicate_id", i) for i in (FIRST, SECOND)]
    assert quarantined == [copy[0]] * 2 + [copy[1]] * 3

    out = CliRunner().invoke(app, ["--config", str(project.base_dir / "batchml.toml"), "score",
                                   "default_risk", "--dataset", ref, "--no-publish"])  # fmt: skip
    assert out.exit_code == 0, out.stdout
    assert "loan_id duplicate_id (5 rows, 2 ids)" in out.stdout


def test_duplicates_over_the_quarantine_limit_fail_before_any_output(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    project = make_project(PROJECT_TOML.format(source=loans_csv) + scoring_limit(0.001))
    batchml.snapshot_dataset(project, "loans")
    batchml.promote(project, "default_risk", batchml.train(project, "default_risk").version, reason="t")
    ten_copies = pl.when(ROW < 10).then(pl.lit(FIRST)).otherwise("loan_id")
    ref = snapshot_variant(project, loans_csv, lambda df: df.with_columns(loan_id=ten_copies))
    limit = r"10 of 4,000 rows \(0\.25%\) share 1 entity id.*over max_quarantine_share 0\.001"
    with pytest.raises(DataError, match=limit):
        batchml.score(project, "default_risk", dataset=ref)
    assert run_files(project) == []


def test_null_ids_are_quarantined(
    project: batchml.Project, champion: batchml.ModelVersion, loans_csv: Path
) -> None:
    two_nulls = pl.when(ROW.is_in([3, 2500])).then(None).otherwise("loan_id")
    ref = snapshot_variant(project, loans_csv, lambda df: df.with_columns(loan_id=two_nulls))
    run = batchml.score(project, "default_risk", dataset=ref)
    assert run.summary["quarantine"] == [{"column": "loan_id", "rule": "null_id", "rows": 2}]
    assert run.rows == 3998


def test_duplicates_across_partitions_are_caught_in_each(
    project: batchml.Project, champion: batchml.ModelVersion, loans_csv: Path
) -> None:
    ref = snapshot_variant(project, loans_csv, _duplicated)
    sequential = batchml.score(project, "default_risk", dataset=ref)
    registry = Registry(project.storage)
    model = registry.resolve("default_risk", alias="champion")
    _, dataset, options = scoring_inputs(project, "default_risk", dataset=ref)
    plan = plan_partitions(project.storage, dataset, 4)  # rows 0, 1500, 3000 and 3999 in different ones
    stamp = new_scored_at()
    booster = registry.load_booster(model)
    # A different quarantine limit gives a different run id, so the partitioned run is new work.
    other = type(options)(expectations=options.expectations, max_quarantine_share=0.02)
    results = [
        score_partition(project.storage, model, booster, dataset, p, index=i, scored_at=stamp, options=other)
        for i, p in enumerate(plan)
    ]
    run = commit_partitions(project.storage, model, dataset, results, scored_at=stamp, options=other)
    assert run.run_id != sequential.run_id and run.rows == sequential.rows == 3995
    assert run.summary["quarantine"] == sequential.summary["quarantine"]
    assert run.summary["duplicate_ids"] == sequential.summary["duplicate_ids"] == 2


# -- finding the repeated ids -----------------------------------------------------------------------------
def _version(storage: Storage, tmp_path: Path, ids: list[object], per_file: int = 1000) -> DatasetVersion:
    """A version of dataset `ids` with an `id` column holding `ids`, `per_file` rows per source file."""
    folder = tmp_path / f"ids-{len(datasets.list_versions(storage, 'ids'))}"
    folder.mkdir()
    for start in range(0, len(ids), per_file):
        chunk = ids[start : start + per_file]
        frame = pl.DataFrame({"id": chunk, "x": range(start, start + len(chunk))})
        frame.write_parquet(folder / f"part-{start:06d}.parquet")
    return datasets.snapshot(storage, "ids", str(folder))


def test_copies_in_different_files_found_in_several_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage(str(tmp_path / "store"))
    monkeypatch.setattr(datasets, "ROWS_PER_FILE", 1000)
    monkeypatch.setattr(entity_ids, "MAX_HASHES_PER_PASS", 700)  # 5 passes over 3,500 rows
    ids: list[object] = list(range(3500))
    ids[2999], ids[3499], ids[10], ids[11] = 5, 5, None, None  # copies in files 1, 3 and 4; nulls are no id
    version = _version(storage, tmp_path, ids)
    assert len(version.files) == 4
    found = entity_ids.find_duplicates(storage, version, "id")
    assert (sorted(found.ids.to_pylist()), found.rows) == ([5], 3)
    assert found.ids.type == pa.int64()
    assert found.broken(pa.array([5, 6, None])).tolist() == [True, False, False]


def test_colliding_hashes_never_quarantine_a_unique_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage(str(tmp_path / "store"))
    monkeypatch.setattr(entity_ids, "_hashes", lambda ids: np.zeros(len(ids), np.uint64))  # all collide
    version = _version(storage, tmp_path, ["a", "b", "c", "b", "d"])
    found = entity_ids.find_duplicates(storage, version, "id")
    assert (found.ids.to_pylist(), found.rows) == (["b"], 2)
    unique = _version(storage, tmp_path, ["a", "b", "c"])
    assert entity_ids.find_duplicates(storage, unique, "id").rows == 0


def test_a_damaged_file_reads_as_an_integrity_error(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "store"))
    version = _version(storage, tmp_path, ["a", "b", "c"])
    Path(storage.root, version.files[0].path).write_bytes(b"not parquet")
    with pytest.raises(IntegrityError, match="sha256"):
        entity_ids.find_duplicates(storage, version, "id")
