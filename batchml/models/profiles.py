"""Data profiles for the model card: what the data the model was fit on looked like.

A profile describes each feature as the model saw it (after encoding, so numbers are in the model's units):

    numeric      dtype, kind, count, nulls, null_rate, min, max, mean, std,
                 quantiles {p1, p5, p25, p50, p75, p95, p99},
                 histogram {edges, counts, shares}
    categorical  dtype, kind, count, nulls, null_rate, distinct, categories {value: share}, other_share

Histogram edges are training quantiles (deciles, duplicates dropped); bin i holds edges[i] <= x < edges[i+1]
and the last bin also holds its right edge (numpy's convention). Shares are over the non-null values, so a
later drift check can compare another sample's shares bin by bin (values outside the edges belong in the
outer bins). NaN counts as null. Every number is finite or None, so the card stays strict JSON.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchml.models.features import Feature, encode

if TYPE_CHECKING:
    from batchml.models.training import TrainResult

QUANTILES: dict[str, float] = {
    "p1": 0.01,
    "p5": 0.05,
    "p25": 0.25,
    "p50": 0.50,
    "p75": 0.75,
    "p95": 0.95,
    "p99": 0.99,
}
HISTOGRAM_BINS = 10
MAX_PROFILE_CATEGORIES = 1000


def _number(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def _shares(counts: np.ndarray, total: int) -> list[float]:
    return [float(c) / total for c in counts] if total else [0.0 for _ in counts]


def histogram(values: np.ndarray) -> dict[str, list[Any]]:
    """Bins with edges at the deciles of `values` (finite, non-empty): edges, counts and shares."""
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)))
    if len(edges) == 1:  # a constant column: one bin holding everything
        counts = np.array([len(values)])
        edges = np.array([edges[0], edges[0]])
    else:
        counts, _ = np.histogram(values, bins=edges)
    return {
        "edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
        "shares": _shares(counts, len(values)),
    }


def numeric_profile(values: np.ndarray) -> dict[str, Any]:
    """Count, nulls (None or NaN), min/max, mean, std, quantiles and a quantile histogram of `values`."""
    values = np.asarray(values, dtype=np.float64)
    present = values[np.isfinite(values)]  # infinities are neither null nor summarised
    nulls = int(np.count_nonzero(np.isnan(values)))
    profile: dict[str, Any] = {
        "count": len(values),
        "nulls": nulls,
        "null_rate": nulls / len(values) if len(values) else 0.0,
    }
    if len(present) == 0:
        return {**profile, "min": None, "max": None, "mean": None, "std": None, "quantiles": {}}
    points = np.quantile(present, list(QUANTILES.values()))
    return {
        **profile,
        "min": _number(present.min()),
        "max": _number(present.max()),
        "mean": _number(present.mean()),
        "std": _number(present.std()),
        "quantiles": {name: _number(p) for name, p in zip(QUANTILES, points, strict=True)},
        "histogram": histogram(present),
    }


def categorical_profile(column: pa.ChunkedArray | pa.Array) -> dict[str, Any]:
    """Count, nulls, and the share of each category (most frequent first, at most 1000 kept)."""
    values = pc.cast(column, pa.string())
    total, nulls = len(values), values.null_count
    present = total - nulls
    counted = pc.value_counts(pc.drop_null(values))
    pairs = sorted(
        zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True),
        key=lambda vc: (-vc[1], vc[0]),
    )
    kept = pairs[:MAX_PROFILE_CATEGORIES]
    return {
        "count": total,
        "nulls": nulls,
        "null_rate": nulls / total if total else 0.0,
        "distinct": len(pairs),
        "categories": {value: count / present for value, count in kept},
        "other_share": sum(c for _, c in pairs[MAX_PROFILE_CATEGORIES:]) / present if present else 0.0,
    }


def feature_profile(table: pa.Table, features: list[Feature]) -> dict[str, dict[str, Any]]:
    """Per feature: dtype, kind and the numeric or categorical profile of `table`'s rows."""
    matrix = encode(table, features)
    profiles: dict[str, dict[str, Any]] = {}
    for i, feature in enumerate(features):
        head = {"dtype": feature.dtype, "kind": feature.kind}
        if feature.kind == "numeric":
            profiles[feature.name] = {**head, **numeric_profile(matrix[:, i])}
        else:
            profiles[feature.name] = {**head, **categorical_profile(table.column(feature.name))}
    return profiles


def training_profile(result: TrainResult) -> dict[str, Any]:
    """The card's profile of the rows the model was fit on (the drift reference is added beside it, as
    `reference`, by `batchml.monitoring.drift_reference`: every row of the dataset version, with
    predictions)."""
    if result.holdout is None:
        return {}
    train_rows = result.holdout.train_table
    return {
        "rows": train_rows.num_rows,
        "split": "train",
        "features": feature_profile(train_rows, result.features),
    }


def numeric_ranges(profile: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Training (min, max) of each numeric feature with values, in the model's units."""
    ranges = {}
    for name, column in profile.get("features", {}).items():
        if column.get("kind") == "numeric" and column.get("min") is not None:
            ranges[name] = (float(column["min"]), float(column["max"]))
    return ranges
