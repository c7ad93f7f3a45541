"""How one prediction run differs from another: distribution shift, decisions, ranking, per-entity values.

Both runs' Parquet files are hash-checked and read through an in-memory DuckDB. Used by staging (`batchml
predictions compare`) and by shadow scoring (each shadow run against the served run).
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np

from batchml.data.stats import population_stability_index
from batchml.scoring.runs import PredictionRun
from batchml.store.storage import Storage

DEFAULT_TOP_SHARE = 0.01


def _describe(run: PredictionRun, rows: int) -> dict[str, Any]:
    return {"run_id": run.run_id, "model_version": run.manifest["model_version"], "rows": rows}


def ks_statistic(expected: np.ndarray, actual: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic (largest gap between the two empirical CDFs), as
    `scipy.stats.ks_2samp(...).statistic`, without its p-value (which costs more than the statistic)."""
    if not len(expected) or not len(actual):
        return 0.0
    a, b = np.sort(expected), np.sort(actual)
    points = np.concatenate([a, b])
    below_a = np.searchsorted(a, points, side="right") / len(a)
    below_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(below_a - below_b)))


def compare_runs(
    storage: Storage,
    new: PredictionRun,
    old: PredictionRun,
    *,
    top: int | None = None,
    top_share: float = 0.0,
) -> dict[str, Any]:
    """`new` against `old`: PSI and KS of the predictions, flip rate of the predicted class and mean
    |difference| over the entities both scored, and the overlap of their top-k entities (k = `top`, else
    `top_share` of `old`'s rows, else 1%; ties broken by entity id)."""
    con = duckdb.connect()
    try:
        if not storage.is_local:
            con.register_filesystem(storage.fs)
        # Each run's files are read once, into memory; the queries below scan those tables.
        for name, run in (("n_run", new), ("o_run", old)):
            con.execute(
                f"CREATE TEMP TABLE {name} AS "
                f"SELECT entity_id, prediction, predicted_class FROM {storage.verified_parquet(run.files)}"
            )
        n, o = "n_run", "o_run"
        new_values = con.sql(f"SELECT prediction FROM {n}").fetchnumpy()["prediction"]
        old_values = con.sql(f"SELECT prediction FROM {o}").fetchnumpy()["prediction"]
        row = con.execute(
            "SELECT count(*), avg(CAST(n.predicted_class IS DISTINCT FROM o.predicted_class AS DOUBLE)), "
            f"avg(abs(n.prediction - o.prediction)) FROM {n} n JOIN {o} o USING (entity_id)"
        ).fetchone()
        common, flip_rate, mean_abs_delta = row if row else (0, None, None)
        k = top or max(1, round((top_share or DEFAULT_TOP_SHARE) * len(old_values)))
        ranked = "SELECT entity_id FROM {} ORDER BY prediction DESC, entity_id LIMIT {}"
        overlap = con.execute(
            f"SELECT count(*) FROM ({ranked.format(n, k)}) JOIN ({ranked.format(o, k)}) USING (entity_id)"
        ).fetchone()
    finally:
        con.close()
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
        "top_k_overlap": (overlap[0] if overlap else 0) / k,
    }
