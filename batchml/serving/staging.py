"""Staging: score a candidate beside the published table, compare the two, then promote and publish at once.

A staged run is recorded on the `staging` channel of the publication log and served as the
`predictions_staging` table. `compare` reads both runs' Parquet files (hash-checked; see
`batchml.monitoring.run_compare`); `promote_staged` moves the alias to the staged run's model version (gates
apply), publishes that run and clears staging, so the published table and the champion change together.
"""

from __future__ import annotations

from typing import Any

from batchml.errors import NotFoundError
from batchml.monitoring.run_compare import compare_runs
from batchml.scoring.publications import PublicationLog
from batchml.scoring.runs import PredictionRun, get_run
from batchml.store.storage import Storage


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


def compare(storage: Storage, model: str, top: int | None = None) -> dict[str, Any]:
    """How the staged run differs from the published one: distribution shift, flip rate, top-k overlap."""
    report = compare_runs(storage, staged_run(storage, model), published_run(storage, model), top=top)
    new, old = report.pop("new"), report.pop("old")
    means = report.pop("mean_prediction")
    return {
        "model": model,
        "staged": new,
        "published": old,
        **report,
        "mean_prediction": {"staged": means["new"], "published": means["old"]},
    }
