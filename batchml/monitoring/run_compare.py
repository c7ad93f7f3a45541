"""How one prediction run differs from another: distribution shift, decisions, ranking, per-entity values.

Both runs' Parquet files are hash-checked and read (entity id, prediction, predicted class) into Arrow
tables. Used by staging (`batchml predictions compare`) and by shadow scoring (each shadow run against the
served run). Runs of more than `IN_MEMORY_ROWS` rows together are compared from their files instead, in
bounded memory, with the same numbers (`run_compare_files`).

Runs scored from one read of one dataset version (a shadow and its served run) hold the same entity ids in
the same order, so the per-entity measures are computed row by row; otherwise the two tables are joined by
entity id in DuckDB. The top-k sets are found with a partial sort rather than ordering every row.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchml.data.stats import population_stability_index
from batchml.monitoring.run_compare_files import PER_ENTITY_SQL, RunFiles, ks_statistic_sorted
from batchml.scoring.runs import PredictionRun
from batchml.store.storage import Storage

DEFAULT_TOP_SHARE = 0.01
_COLUMNS = ["entity_id", "prediction", "predicted_class"]
#: Both runs' rows together up to which they are compared in memory (above: from their files, bounded).
#: In memory, a comparison adds ~125 B per row of both runs when their rows align (the Arrow columns ~30 B,
#: plus the copies the measures make: sorted values and searchsorted counts and shares for KS, partial sorts
#: for PSI and top-k, |delta|; and pyarrow's read buffers) and ~150 B when DuckDB joins them: measured by
#: `benchmarks/compare.py`, 238 MiB (aligned) and 284 MiB (joined) added at 1M + 1M rows, 1,269 MiB at
#: 10M + 10M. 2M rows x ~125 B = ~250 MB, the most a comparison should add to a scoring run (~600 MiB flat).
IN_MEMORY_ROWS = 2_000_000


def _describe(run: PredictionRun, rows: int) -> dict[str, Any]:
    return {"run_id": run.run_id, "model_version": run.manifest["model_version"], "rows": rows}


def ks_statistic(expected: np.ndarray, actual: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic (largest gap between the two empirical CDFs), as
    `scipy.stats.ks_2samp(...).statistic`, without its p-value (which costs more than the statistic)."""
    if not len(expected) or not len(actual):
        return 0.0
    a, b = np.sort(expected), np.sort(actual)
    gap = 0.0
    for points in (a, b):  # the gap is largest at a sample point; sorted needles keep the searches local
        below_a = np.searchsorted(a, points, side="right") / len(a)
        below_b = np.searchsorted(b, points, side="right") / len(b)
        gap = max(gap, float(np.max(np.abs(below_a - below_b))))
    return gap


def read_run(storage: Storage, run: PredictionRun) -> pa.Table:
    """Entity id, prediction and predicted class of every row of `run`, in file order, each file checked
    against its recorded hash first."""
    tables = []
    for entry in run.files:
        storage.verify(entry)
        with storage.open_read(entry.path) as f:
            tables.append(pq.read_table(f, columns=_COLUMNS))
    return pa.concat_tables(tables, promote_options="permissive").combine_chunks()


def _per_entity(new: pa.Table, old: pa.Table) -> tuple[int, float | None, float | None]:
    """(entities both scored, flip rate of the predicted class, mean |difference|) over those entities."""
    n_ids, o_ids = new.column("entity_id"), old.column("entity_id")
    if len(n_ids) and n_ids.type == o_ids.type and n_ids.equals(o_ids):  # same rows, same order: no join
        n_class, o_class = new.column("predicted_class"), old.column("predicted_class")
        both_null = pc.and_(pc.is_null(n_class), pc.is_null(o_class))
        distinct = pc.if_else(both_null, False, pc.fill_null(pc.not_equal(n_class, o_class), True))
        rows = len(n_ids)
        delta = new.column("prediction").to_numpy() - old.column("prediction").to_numpy()
        return rows, pc.sum(distinct).as_py() / rows, float(np.mean(np.abs(delta)))
    con = duckdb.connect()
    try:
        con.register("n_run", new)
        con.register("o_run", old)
        row = con.execute(PER_ENTITY_SQL).fetchone()
    finally:
        con.close()
    return row if row else (0, None, None)


def top_ids(table: pa.Table, k: int) -> pa.Array:
    """The entity ids of the `k` highest predictions, ties broken by entity id (smallest first), as
    `ORDER BY prediction DESC, entity_id LIMIT k` gives them (a NaN prediction counts as +inf)."""
    ids = table.column("entity_id").combine_chunks()
    values = table.column("prediction").to_numpy()
    if k >= len(values):
        return ids
    ranked = np.where(np.isnan(values), np.inf, values)
    kth = np.partition(ranked, len(ranked) - k)[len(ranked) - k]  # the k-th highest value
    above = ranked > kth
    tied = ids.filter(pa.array(ranked == kth))
    chosen = tied.take(pc.sort_indices(tied).slice(0, k - int(above.sum())))
    return pa.concat_arrays([ids.filter(pa.array(above)), chosen])


def _overlap(a: pa.Array, b: pa.Array) -> int:
    """How many ids of `a` are in `b` (ids are unique in a run); ids of other types compare as text."""
    if a.type != b.type:
        a, b = a.cast(pa.string()), b.cast(pa.string())
    return int(pc.sum(pc.is_in(a, value_set=b)).as_py() or 0)


def top_k(old_rows: int, top: int | None, top_share: float) -> int:
    """k of the top-k overlap: `top`, else `top_share` of the old run's rows, else 1% (at least 1)."""
    return top or max(1, round((top_share or DEFAULT_TOP_SHARE) * old_rows))


def compare_runs(
    storage: Storage,
    new: PredictionRun,
    old: PredictionRun,
    *,
    top: int | None = None,
    top_share: float = 0.0,
    old_table: pa.Table | None = None,
    in_memory_rows: int | None = None,
) -> dict[str, Any]:
    """`new` against `old`: PSI and KS of the predictions, flip rate of the predicted class and mean
    |difference| over the entities both scored, and the overlap of their top-k entities (k = `top`, else
    `top_share` of `old`'s rows, else 1%; ties broken by entity id). `old_table`: `old` as `read_run`
    gave it (several runs compared with one). Runs of more than `in_memory_rows` (default
    `IN_MEMORY_ROWS`) rows together are compared from their files in bounded memory (`old_table` unused)."""
    if not fits_in_memory(new, old, in_memory_rows):
        return _compare_files(storage, new, old, top, top_share)
    n_table = read_run(storage, new)
    o_table = old_table if old_table is not None else read_run(storage, old)
    new_values = n_table.column("prediction").to_numpy()
    old_values = o_table.column("prediction").to_numpy()
    common, flip_rate, mean_abs_delta = _per_entity(n_table, o_table)
    k = top_k(len(old_values), top, top_share)
    overlap = _overlap(top_ids(n_table, k), top_ids(o_table, k))
    return {
        "new": _describe(new, len(new_values)),
        "old": _describe(old, len(old_values)),
        "common_entities": common,
        "mean_prediction": {"new": float(np.mean(new_values)), "old": float(np.mean(old_values))},
        "psi": population_stability_index(old_values, new_values),
        "ks_statistic": ks_statistic(old_values, new_values),
        "flip_rate": flip_rate,
        "mean_abs_delta": mean_abs_delta,
        "top_k": k,
        "top_k_overlap": overlap / k,
    }


def fits_in_memory(new: PredictionRun, old: PredictionRun, in_memory_rows: int | None = None) -> bool:
    """Whether `compare_runs` compares these runs in memory (else from their files, bounded)."""
    return new.rows + old.rows <= (IN_MEMORY_ROWS if in_memory_rows is None else in_memory_rows)


def _compare_files(
    storage: Storage, new: PredictionRun, old: PredictionRun, top: int | None, top_share: float
) -> dict[str, Any]:
    """`compare_runs` from the run files, in bounded memory (`run_compare_files`)."""
    with RunFiles(storage, new, old) as files:
        common, flip_rate, mean_abs_delta = files.per_entity()
        n_dist, o_dist = files.distribution("n_run"), files.distribution("o_run")
        k = top_k(o_dist.rows, top, top_share)
        overlap = files.top_overlap(k, n_dist, o_dist)
        psi, ks = files.psi(o_dist, n_dist), ks_statistic_sorted(o_dist, n_dist)
    return {
        "new": _describe(new, n_dist.rows),
        "old": _describe(old, o_dist.rows),
        "common_entities": common,
        "mean_prediction": {"new": n_dist.mean, "old": o_dist.mean},
        "psi": psi,
        "ks_statistic": ks,
        "flip_rate": flip_rate,
        "mean_abs_delta": mean_abs_delta,
        "top_k": k,
        "top_k_overlap": overlap / k,
    }
