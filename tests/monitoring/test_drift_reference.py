"""The drift reference: every row profiled exactly (edges from a sample), so the same rows drift nothing."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from batchml.models.features import Feature
from batchml.monitoring.drift_reference import profile_rows
from batchml.monitoring.drift_stats import counters_for, fold_batch

FEATURES = [Feature("x", "numeric", "double"), Feature("k", "categorical", "string", ("a", "b", "c"))]


def _table(rows: int = 5000) -> pa.Table:
    rng = np.random.default_rng(3)
    x = rng.lognormal(0.0, 1.0, rows)
    x[::50] = np.nan
    return pa.table({"x": x, "k": pa.array(rng.choice(["a", "b", "c", "d"], rows, p=[0.5, 0.3, 0.15, 0.05]))})


def _predict(matrix: np.ndarray) -> np.ndarray:
    return np.nan_to_num(matrix[:, 0] / 10 + matrix[:, 1])  # a model predicts a number for every row


def test_edges_come_from_a_sample_and_counts_from_every_row() -> None:
    table = _table()
    profile = profile_rows(lambda: table.to_batches(700), FEATURES, _predict, sample_rows=500)
    x = profile["features"]["x"]
    assert profile["rows"] == x["count"] == 5000 and x["nulls"] == 100 and x["sampled_rows"] == 500
    assert sum(x["histogram"]["counts"]) == 4900  # every non-null row, not the 500 sampled
    assert np.isclose(sum(x["histogram"]["shares"]), 1.0)
    assert (
        profile["features"]["k"]["categories"]["d"] == np.count_nonzero(table["k"].to_numpy() == "d") / 5000
    )
    assert sum(profile["predictions"]["histogram"]["counts"]) == profile["predictions"]["count"] == 5000


def test_the_same_rows_counted_again_drift_exactly_zero() -> None:
    table = _table()
    profile = profile_rows(lambda: table.to_batches(700), FEATURES, _predict, sample_rows=500)
    counters = counters_for(profile["features"], ["x", "k"])
    for batch in table.to_batches(1234):  # other batch boundaries than the reference's
        fold_batch(counters, batch, FEATURES)
    statistics = [v for c in counters.values() for v in c.statistics().values()]
    assert len(statistics) == 4 and statistics == [0.0] * 4


def test_without_a_predictor_there_is_no_prediction_profile() -> None:
    profile = profile_rows(lambda: _table(100).to_batches(), FEATURES, None)
    assert "predictions" not in profile and profile["features"]["x"]["sampled_rows"] == 100
