"""Per-column summaries computed while streaming, for dataset manifests and diffs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class ColumnSummary(TypedDict, total=False):
    """What a manifest records of one column."""

    type: str
    count: int
    nulls: int
    min: Any
    max: Any
    mean: float | None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


class SummaryAccumulator:
    """Folds record batches into per-column count, nulls, min, max and (numeric/bool) mean."""

    def __init__(self) -> None:
        self._state: dict[str, dict[str, Any]] = {}

    def update(self, batch: pa.RecordBatch) -> None:
        """Add one batch."""
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            state = self._state.setdefault(
                name, {"type": str(column.type), "count": 0, "nulls": 0, "min": None, "max": None, "sum": 0.0}
            )
            state["count"] += len(column)
            state["nulls"] += column.null_count
            kind = column.type
            if pa.types.is_boolean(kind):
                state["sum"] += pc.sum(column.cast(pa.int64())).as_py() or 0
                continue
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_temporal(kind)):
                continue
            bounds = pc.min_max(column)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            if low is not None:
                state["min"] = low if state["min"] is None else min(state["min"], low)
                state["max"] = high if state["max"] is None else max(state["max"], high)
            if not pa.types.is_temporal(kind):
                state["sum"] += pc.sum(column.cast(pa.float64())).as_py() or 0.0

    def result(self) -> dict[str, ColumnSummary]:
        """The summaries, JSON-ready."""
        out: dict[str, ColumnSummary] = {}
        for name, s in self._state.items():
            present = s["count"] - s["nulls"]
            numeric = not s["type"].startswith(
                ("string", "large_string", "date", "timestamp", "time", "dict")
            )
            summary: ColumnSummary = {"type": s["type"], "count": s["count"], "nulls": s["nulls"]}
            if s["min"] is not None:
                summary["min"] = _jsonable(s["min"])
                summary["max"] = _jsonable(s["max"])
            if numeric:
                summary["mean"] = _jsonable(s["sum"] / present) if present else None
            out[name] = summary
        return out


def psi_bin_edges(expected: np.ndarray, bins: int = 10) -> np.ndarray:
    """The distinct edges of `bins` quantile bins of `expected` (`np.quantile`, linear), as PSI bins it."""
    return np.unique(np.quantile(expected, _psi_quantiles(bins)))


def _psi_quantiles(bins: int) -> np.ndarray:
    return np.linspace(0, 1, bins + 1)


def psi_bin_edges_sorted(
    rows: int, values_at: Callable[[np.ndarray], np.ndarray], bins: int = 10
) -> np.ndarray:
    """`psi_bin_edges` of `rows` values (none NaN) that are not in memory: `values_at(ranks)` gives the
    values at those 0-based ranks of their ascending order. The same floats `np.quantile` computes (its
    linear method step by step: the same virtual indexes, neighbours, weights and interpolation), so the
    same bins; `tests/data/test_stats.py` holds it to `np.quantile` at many sizes."""
    if rows == 0:
        return psi_bin_edges(np.empty(0), bins)  # raises as np.quantile does on no values
    virtual = (rows - 1) * _psi_quantiles(bins)
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= rows - 1  # np.quantile takes the last value there (index -1)
    previous[above], following[above] = -1, -1
    gamma = virtual - previous  # with the -1 in place, as np.quantile's weights are
    ranks = np.unique(np.concatenate([previous, following]).astype(np.int64) % rows)
    found = dict(zip(ranks.tolist(), values_at(ranks).tolist(), strict=True))
    low = np.array([found[int(i) % rows] for i in previous])
    high = np.array([found[int(i) % rows] for i in following])
    diff = high - low  # np.quantile's _lerp: from the nearer neighbour
    edges = np.where(gamma >= 0.5, high - diff * (1 - gamma), low + diff * gamma)
    return np.unique(edges)


def psi_bin_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """How many of `values` fall in each bin between `edges` (the outer bins open-ended; NaN in the last)."""
    return np.bincount(np.searchsorted(edges[1:-1], values, side="right"), minlength=len(edges) - 1)


def psi_from_counts(expected: np.ndarray, expected_rows: int, actual: np.ndarray, actual_rows: int) -> float:
    """PSI from each side's rows per bin (`psi_bin_counts`; empty bins floored)."""
    e = np.maximum(expected / max(expected_rows, 1), 1e-6)
    a = np.maximum(actual / max(actual_rows, 1), 1e-6)
    return float(np.sum((a - e) * np.log(a / e)))


def population_stability_index(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """PSI of `actual` against `expected`, over `bins` quantile bins of `expected` (empty bins floored)."""
    edges = psi_bin_edges(expected, bins)
    if len(edges) < 2:
        return 0.0
    expected_counts, actual_counts = psi_bin_counts(edges, expected), psi_bin_counts(edges, actual)
    return psi_from_counts(expected_counts, len(expected), actual_counts, len(actual))
