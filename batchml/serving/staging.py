"""Staging: score a candidate beside the published table, compare the two, then promote and publish at once.

A staged run is recorded on the `staging` channel of the publication log and served as the
`predictions_staging` table. `compare` reads both runs' Parquet files (hash-checked) through an in-memory
DuckDB; `promote_staged` moves the alias to the staged run's model version (gates apply), publishes that run
and clears staging, so the published table and the champion change together.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
from scipy import stats

from batchml.data.stats import population_stability_index
from batchml.errors import NotFoundError
from batchml.scoring.publications import PublicationLog
from batchml.scoring.runs import PredictionRun, get_run
from batchml.store.storage import Storage

DEFAULT_TOP_SHARE = 0.01


def staged_run(storage: Storage, model: str) -> PredictionRun:
    """The run currently staged for `model`."""
    run_id = PublicationLog(storage, "staging").current(model)
    if run_id is None:
        raise NotFoundError(
            f"staged run of model {model!r}",
            model,
            ["none: stage one with `batchml score MODEL --alias ALIAS --stage`"],
        )
    return get_run(storage, model, run_id)


def published_run(storage: Storage, model: str) -> PredictionRun:
    """The run currently published for `model`."""
    run_id = PublicationLog(storage).current(model)
    if run_id is None:
        raise NotFoundError(f"published run of model {model!r}", model, ["none: publish a run first"])
    return get_run(storage, model, run_id)


def _relation(con: duckdb.DuckDBPyConnection, storage: Storage, run: PredictionRun) -> str:
    uris = []
    for entry in run.files:
        storage.verify(entry)
        uris.append("'" + storage.uri(entry.path).replace("'", "''") + "'")
    return f"read_parquet([{', '.join(uris)}])"


def _describe(run: PredictionRun, rows: int) -> dict[str, Any]:
    return {"run_id": run.run_id, "model_version": run.manifest["model_version"], "rows": rows}


def compare(storage: Storage, model: str, top: int | None = None) -> dict[str, Any]:
    """How the staged run differs from the published one: distribution shift, flip rate, top-k overlap."""
    staged, published = staged_run(storage, model), published_run(storage, model)
    con = duckdb.connect()
    try:
        if not storage.is_local:
            con.register_filesystem(storage.fs)
        new, old = _relation(con, storage, staged), _relation(con, storage, published)
        new_values = con.sql(f"SELECT prediction FROM {new}").fetchnumpy()["prediction"]
        old_values = con.sql(f"SELECT prediction FROM {old}").fetchnumpy()["prediction"]
        row = con.execute(
            f"SELECT count(*), avg(CAST(n.predicted_class IS DISTINCT FROM o.predicted_class AS DOUBLE)) "
            f"FROM {new} n JOIN {old} o USING (entity_id)"
        ).fetchone()
        common, flip_rate = row if row else (0, None)
        k = top or max(1, round(DEFAULT_TOP_SHARE * len(old_values)))
        ranked = "SELECT entity_id FROM {} ORDER BY prediction DESC, entity_id LIMIT {}"
        overlap = con.execute(
            f"SELECT count(*) FROM ({ranked.format(new, k)}) JOIN ({ranked.format(old, k)}) USING (entity_id)"
        ).fetchone()
    finally:
        con.close()
    return {
        "model": model,
        "staged": _describe(staged, len(new_values)),
        "published": _describe(published, len(old_values)),
        "common_entities": common,
        "mean_prediction": {"staged": float(np.mean(new_values)), "published": float(np.mean(old_values))},
        "psi": population_stability_index(old_values, new_values),
        "ks_statistic": float(stats.ks_2samp(old_values, new_values).statistic),
        "flip_rate": flip_rate,
        "top_k": k,
        "top_k_overlap": (overlap[0] if overlap else 0) / k,
    }
