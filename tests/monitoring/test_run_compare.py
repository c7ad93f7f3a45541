"""Comparing runs from their files (bounded memory) gives the numbers the in-memory path gives."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchml.monitoring import run_compare, run_compare_files
from batchml.scoring.runs import PredictionRun
from batchml.store.storage import Storage
from tests.s3_server import MotoS3

ROWS = 6_000


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Storage:
    # Small batches, so the streamed measures cross many batch and file boundaries on small runs.
    monkeypatch.setattr(run_compare_files, "BATCH_ROWS", 700)
    return Storage(f"file://{tmp_path}/store")


def write_run(storage: Storage, name: str, table: pa.Table, parts: int = 3) -> PredictionRun:
    """`table` as a run of `parts` files (row groups of 500 rows), as `compare_runs` reads runs."""
    files = []
    for i, chunk in enumerate(np.array_split(np.arange(table.num_rows), parts)):
        sink = io.BytesIO()
        pq.write_table(table.take(pa.array(chunk, pa.int64())), sink, row_group_size=500)
        files.append(storage.write_new(f"runs/{name}/part-{i}.parquet", sink.getvalue()).to_dict())
    return PredictionRun({"run_id": name, "model_version": 1, "files": files, "rows": table.num_rows})


def binary(ids: list[Any], values: np.ndarray) -> pa.Table:
    classes = np.where(values >= 0.5, "yes", "no")
    return pa.table({"entity_id": ids, "prediction": values, "predicted_class": classes})


def assert_same(memory: dict[str, Any], bounded: dict[str, Any]) -> None:
    """Counts and overlaps exactly equal, floats within 1e-12 relative (NaN equals NaN)."""
    assert memory.keys() == bounded.keys()
    for key, want in memory.items():
        got = bounded[key]
        if isinstance(want, dict):
            assert_same(want, got)
        elif isinstance(want, float) and math.isnan(want):
            assert isinstance(got, float) and math.isnan(got), key
        elif isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-12, abs=0.0 if want else 1e-300), key
        else:
            assert got == want, key


def both_paths(storage: Storage, new: PredictionRun, old: PredictionRun, **kw: Any) -> dict[str, Any]:
    memory = run_compare.compare_runs(storage, new, old, **kw)
    bounded = run_compare.compare_runs(storage, new, old, in_memory_rows=0, **kw)
    assert_same(memory, bounded)
    return bounded


def test_aligned_runs_give_the_same_numbers_with_ties_at_the_kth_prediction(storage: Storage) -> None:
    rng = np.random.default_rng(1)
    ids = [f"L{i:05d}" for i in rng.permutation(ROWS)]
    old_values = np.round(rng.beta(2, 5, ROWS), 2)  # ~100 distinct values: ties everywhere, the k-th too
    new_values = np.clip(np.round(old_values + rng.normal(0, 0.05, ROWS), 2), 0, 1)
    old = write_run(storage, "old", binary(ids, old_values), parts=2)
    new = write_run(storage, "new", binary(ids, new_values), parts=3)  # other file boundaries
    for kw in ({}, {"top_share": 0.07}, {"top": 1}, {"top": ROWS + 5}):
        report = both_paths(storage, new, old, **kw)
        assert report["common_entities"] == ROWS and 0 < report["flip_rate"] < 1
        assert report["psi"] > 0 and 0 < report["ks_statistic"] < 1
    assert both_paths(storage, old, old)["ks_statistic"] == 0.0


def test_runs_of_other_order_or_partly_other_ids_are_joined(storage: Storage) -> None:
    rng = np.random.default_rng(2)
    ids = [f"L{i:05d}" for i in range(ROWS)]
    values = rng.random(ROWS)
    old = write_run(storage, "old", binary(ids, values))
    order = rng.permutation(ROWS)
    shuffled = write_run(storage, "shuffled", binary([ids[i] for i in order], values[order] * 0.9))
    report = both_paths(storage, shuffled, old)
    assert report["common_entities"] == ROWS and report["mean_abs_delta"] > 0
    some = order[: ROWS // 2]
    other = [ids[i] for i in some] + [f"X{i:05d}" for i in range(ROWS // 3)]
    partly = write_run(storage, "partly", binary(other, rng.random(len(other))))
    assert both_paths(storage, partly, old)["common_entities"] == ROWS // 2
    differ_late = write_run(storage, "late", binary([*ids[:-1], "Z"], values))  # ids differ in the last row
    assert both_paths(storage, differ_late, old)["common_entities"] == ROWS - 1


def test_nan_predictions_and_missing_classes_give_the_same_numbers(storage: Storage) -> None:
    rng = np.random.default_rng(3)
    ids = [f"L{i:05d}" for i in range(ROWS)]
    values = rng.random(ROWS)
    with_nan = values.copy()
    with_nan[rng.choice(ROWS, 40, replace=False)] = np.nan
    table = binary(ids, with_nan)
    classes = table.column("predicted_class").to_pylist()
    for i in rng.choice(ROWS, 300, replace=False):
        classes[i] = None
    nan_run = write_run(
        storage, "nan", table.set_column(2, "predicted_class", pa.array(classes, pa.string()))
    )
    plain = write_run(storage, "plain", binary(ids, values))
    forward = both_paths(storage, nan_run, plain, top_share=0.05)  # NaN in the new run: last bin, top as +inf
    assert math.isnan(forward["mean_abs_delta"]) and forward["psi"] > 0
    backward = both_paths(storage, plain, nan_run)  # NaN in the old run: every edge NaN, PSI 0
    assert backward["psi"] == 0.0 and math.isnan(backward["mean_prediction"]["old"])
    all_nan = write_run(storage, "all_nan", binary(ids, np.full(ROWS, np.nan)))
    for new, old in ((all_nan, plain), (plain, all_nan)):
        assert both_paths(storage, new, old)["common_entities"] == ROWS


def test_regression_runs_without_a_class_and_one_value_across_batches(storage: Storage) -> None:
    rng = np.random.default_rng(4)
    ids = list(range(ROWS))  # integer ids
    no_class = pa.nulls(ROWS, pa.string())
    old_values = np.where(rng.random(ROWS) < 0.6, 3.25, rng.normal(3, 2, ROWS))  # one value in 60% of rows
    old = write_run(storage, "old", pa.table({"entity_id": ids, "prediction": old_values,
                                              "predicted_class": no_class}))  # fmt: skip
    new_values = old_values + rng.normal(0, 0.5, ROWS)
    new = write_run(storage, "new", pa.table({"entity_id": ids, "prediction": new_values,
                                              "predicted_class": no_class}))  # fmt: skip
    report = both_paths(storage, new, old, top_share=0.1)
    assert report["flip_rate"] == 0.0 and report["ks_statistic"] > 0
    as_text = write_run(storage, "text", binary([str(i) for i in ids], new_values))  # ids compare as text
    assert both_paths(storage, as_text, old)["top_k_overlap"] > 0


def test_ks_from_sorted_files_is_exactly_the_in_memory_statistic(storage: Storage) -> None:
    rng = np.random.default_rng(5)
    for a, b in [
        (rng.normal(size=3000), rng.normal(0.1, size=4500)),
        (rng.integers(0, 5, 2000).astype(float), rng.integers(0, 6, 1700).astype(float)),
        (np.full(2500, 0.5), np.concatenate([np.full(1000, 0.5), rng.random(900)])),
    ]:
        runs = [
            write_run(storage, f"ks{len(x)}-{i}", binary(list(range(len(x))), x))
            for i, x in enumerate((a, b))
        ]
        report = run_compare.compare_runs(storage, runs[1], runs[0], in_memory_rows=0)
        assert report["ks_statistic"] == run_compare.ks_statistic(a, b)


def test_large_shadow_runs_are_compared_from_files_without_reading_the_served_run(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchml.config import DivergenceLimits
    from batchml.monitoring import shadow

    ids = [f"L{i:05d}" for i in range(ROWS)]
    values = np.random.default_rng(6).random(ROWS)
    served = write_run(storage, "served", binary(ids, values))
    served.manifest.update(model="m", dataset_version="d@1")
    shadowed = write_run(storage, "shadowed", binary(ids, values[::-1].copy()))
    shadowed.manifest.update(model="m", dataset_version="d@1")
    monkeypatch.setattr(run_compare, "IN_MEMORY_ROWS", ROWS)  # both runs together are above it

    def whole(*_: Any) -> pa.Table:
        raise AssertionError("the served run was read whole")

    record = shadow.compare_shadow(storage, served, shadowed, DivergenceLimits(), whole)
    memory = run_compare.compare_runs(storage, shadowed, served, in_memory_rows=2 * ROWS)
    assert record["psi"] == pytest.approx(memory["psi"], rel=1e-12) and record["diverged"]
    assert (record["common_entities"], record["top_k"]) == (ROWS, memory["top_k"])


@pytest.mark.usefixtures("no_cached_s3fs")
def test_runs_on_s3_are_compared_from_their_files(moto: MotoS3, bucket: str) -> None:
    storage = Storage(f"s3://{bucket}/p", endpoint_url=moto.endpoint)
    rng = np.random.default_rng(7)
    ids = [f"L{i:04d}" for i in range(2000)]
    old = write_run(storage, "old", binary(ids, rng.random(2000)))
    new = write_run(storage, "new", binary(ids[::-1], rng.random(2000)))
    assert both_paths(storage, new, old)["common_entities"] == 2000
