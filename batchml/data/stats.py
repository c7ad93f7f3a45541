"""Per-column summaries computed while streaming, for dataset manifests and diffs."""

from __future__ import annotations

import math
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


def population_stability_index(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """PSI of `actual` against `expected`, over `bins` quantile bins of `expected` (empty bins floored)."""
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        return 0.0
    inner = edges[1:-1]
    expected_share = np.bincount(np.searchsorted(inner, expected, side="right"), minlength=len(edges) - 1)
    actual_share = np.bincount(np.searchsorted(inner, actual, side="right"), minlength=len(edges) - 1)
    e = np.maximum(expected_share / max(len(expected), 1), 1e-6)
    a = np.maximum(actual_share / max(len(actual), 1), 1e-6)
    return float(np.sum((a - e) * np.log(a / e)))
