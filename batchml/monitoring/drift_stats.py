"""Drift statistics against a stored profile, folded over record batches in bounded memory.

The reference side is a profile as `batchml.models.profiles` writes it (decile histogram edges and shares per
numeric feature, category shares per categorical one), so the training data is never reloaded. The current
side is counted batch by batch into the same bins:

    numeric      psi        over the reference decile bins (values outside the edges fall in the outer bins)
                 ks_binned  Kolmogorov-Smirnov distance evaluated at the decile edges (max |ΔCDF| there)
    categorical  psi        over the reference categories plus one bucket for other / unseen values
                 js         Jensen-Shannon distance (base 2, in [0, 1]) over the same buckets

Shares are over non-null values on both sides. `ProfileBuilder` builds a reference profile from a stream
(categories counted exactly; numeric deciles from a seeded uniform sample of at most `sample_rows` rows).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchml.models.features import Feature, encode, is_numeric_type
from batchml.models.profiles import MAX_PROFILE_CATEGORIES, numeric_profile

#: Shares are floored at this before PSI's logarithm, so an empty bin gives a large but finite value.
SHARE_FLOOR = 1e-4
SAMPLE_ROWS = 100_000
OTHER = "__other__"


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of `actual` shares against `expected` shares (same buckets)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), SHARE_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), SHARE_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_binned(expected: np.ndarray, actual: np.ndarray) -> float:
    """Largest gap between the two cumulative distributions at the bucket edges."""
    gap = np.cumsum(np.asarray(actual, dtype=np.float64)) - np.cumsum(np.asarray(expected, dtype=np.float64))
    return float(np.max(np.abs(gap))) if len(gap) else 0.0


def js_distance(expected: np.ndarray, actual: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2) between two share vectors; 0 when either side is empty."""
    if not np.sum(expected) or not np.sum(actual):
        return 0.0
    from scipy.spatial.distance import jensenshannon  # deferred: scipy costs half a second to import

    return float(jensenshannon(expected, actual, base=2))


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


class NumericCounter:
    """Counts of current values in a reference histogram's bins (`edges[i] <= x < edges[i+1]`)."""

    def __init__(self, histogram: dict[str, Any]) -> None:
        edges = np.asarray(histogram["edges"], dtype=np.float64)
        self.inner = edges[1:-1]
        self.expected = np.asarray(histogram["shares"], dtype=np.float64)
        self.counts = np.zeros(len(self.expected), dtype=np.int64)
        self.nulls = 0

    def add(self, values: np.ndarray) -> None:
        """Fold one batch of values (NaN counts as null; infinities, as in profiles, are not counted)."""
        finite = np.isfinite(values)
        present = values
        if not finite.all():
            self.nulls += int(np.count_nonzero(np.isnan(values)))
            present = values[finite]
        bins = np.searchsorted(self.inner, present, side="right")
        self.counts += np.bincount(bins, minlength=len(self.counts))

    def statistics(self) -> dict[str, float]:
        """PSI and binned KS of the values seen so far."""
        actual = _shares(self.counts)
        return {"psi": psi(self.expected, actual), "ks_binned": ks_binned(self.expected, actual)}


class CategoryCounter:
    """Counts of current values over a reference's categories, plus one other/unseen bucket."""

    def __init__(self, profile: dict[str, Any]) -> None:
        categories = profile.get("categories") or {}
        self.values = pa.array(list(categories), pa.string())
        self.expected = np.array([*categories.values(), profile.get("other_share") or 0.0], dtype=np.float64)
        self.counts = np.zeros(len(self.expected), dtype=np.int64)
        self.nulls = 0

    def add(self, column: pa.Array | pa.ChunkedArray) -> None:
        """Fold one batch of the column."""
        values = pc.cast(column, pa.string())
        nulls = values.null_count
        codes = pc.fill_null(pc.index_in(values, value_set=self.values), len(self.values))
        counts = np.bincount(np.asarray(codes, dtype=np.int64), minlength=len(self.counts))
        counts[-1] -= nulls  # nulls were filled into the other bucket: take them out again
        self.counts += counts
        self.nulls += nulls

    def statistics(self) -> dict[str, float]:
        """PSI and Jensen-Shannon distance of the values seen so far."""
        actual = _shares(self.counts)
        return {"psi": psi(self.expected, actual), "js": js_distance(self.expected, actual)}


Counter = NumericCounter | CategoryCounter


def counter_for(profile: dict[str, Any]) -> Counter | None:
    """The counter matching one feature profile (None when the reference had no values to compare)."""
    if profile.get("kind") == "categorical":
        return CategoryCounter(profile) if profile.get("categories") else None
    histogram = profile.get("histogram")
    return NumericCounter(histogram) if histogram and histogram.get("shares") else None


class BottomKSample:
    """A seeded uniform sample of at most `size` rows of a stream of matrices (the rows with the k lowest
    random keys), so deciles can be estimated in bounded memory whatever the order of the rows."""

    def __init__(self, size: int = SAMPLE_ROWS, seed: int = 0) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.keys = np.empty(0)
        self.rows: np.ndarray | None = None

    def add(self, matrix: np.ndarray) -> None:
        """Offer a batch of rows to the sample."""
        keys = self.rng.random(len(matrix))
        if len(self.keys) >= self.size:  # full: only rows whose key beats the largest kept one can enter
            entering = keys < self.keys.max()
            keys, matrix = keys[entering], matrix[entering]
        rows = matrix if self.rows is None else np.concatenate([self.rows, matrix])
        keys = np.concatenate([self.keys, keys])
        if len(keys) > self.size:
            keep = np.argpartition(keys, self.size)[: self.size]
            rows, keys = rows[keep], keys[keep]
        self.rows, self.keys = rows, keys

    def result(self, columns: int) -> np.ndarray:
        """The sampled rows (rows x columns)."""
        return self.rows if self.rows is not None else np.empty((0, columns))


class CategoryAccumulator:
    """Exact streaming category counts, shaped like `profiles.categorical_profile` at the end."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.total = 0
        self.nulls = 0

    def add(self, column: pa.Array | pa.ChunkedArray) -> None:
        """Fold one batch of the column."""
        values = pc.cast(column, pa.string())
        self.total += len(values)
        self.nulls += values.null_count
        counted = pc.value_counts(pc.drop_null(values))
        for value, count in zip(
            counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True
        ):
            self.counts[value] = self.counts.get(value, 0) + count

    def profile(self) -> dict[str, Any]:
        """count, nulls, null_rate, distinct, categories (top 1000 shares), other_share."""
        present = self.total - self.nulls
        pairs = sorted(self.counts.items(), key=lambda vc: (-vc[1], vc[0]))
        kept = pairs[:MAX_PROFILE_CATEGORIES]
        return {
            "count": self.total,
            "nulls": self.nulls,
            "null_rate": self.nulls / self.total if self.total else 0.0,
            "distinct": len(pairs),
            "categories": {value: count / present for value, count in kept},
            "other_share": sum(c for _, c in pairs[MAX_PROFILE_CATEGORIES:]) / present if present else 0.0,
        }


class ProfileBuilder:
    """A reference profile from a stream of batches: numeric columns as a matrix (model units, NaN = null),
    categorical columns as Arrow arrays. Numeric profiles come from a seeded sample of the rows, with exact
    counts and nulls; `sample()` keeps the sampled numeric rows (e.g. to score them)."""

    def __init__(self, numeric: list[str], categorical: list[str], sample_rows: int = SAMPLE_ROWS) -> None:
        self.numeric, self.categorical = numeric, categorical
        self.sampler = BottomKSample(sample_rows)
        self.categories = {name: CategoryAccumulator() for name in categorical}
        self.rows = 0
        self.nulls = np.zeros(len(numeric), dtype=np.int64)

    def add(self, matrix: np.ndarray, columns: dict[str, pa.Array | pa.ChunkedArray]) -> None:
        """Fold one batch: `matrix` holds the numeric columns in order, `columns` the categorical ones."""
        self.rows += len(matrix)
        self.nulls += np.count_nonzero(np.isnan(matrix), axis=0)
        self.sampler.add(matrix)
        for name in self.categorical:
            self.categories[name].add(columns[name])

    def sample(self) -> np.ndarray:
        """The sampled rows of the numeric matrix."""
        return self.sampler.result(len(self.numeric))

    def profiles(self) -> dict[str, dict[str, Any]]:
        """Per column: kind plus the numeric or categorical profile (the shape `profiles.py` writes)."""
        sample = self.sample()
        out: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(self.numeric):
            numeric = numeric_profile(sample[:, i])
            nulls = int(self.nulls[i])
            rate = nulls / self.rows if self.rows else 0.0
            numeric |= {"count": self.rows, "nulls": nulls, "null_rate": rate}
            out[name] = {"kind": "numeric", **numeric, "sampled_rows": len(sample)}
        for name in self.categorical:
            out[name] = {"kind": "categorical", **self.categories[name].profile()}
        return out


def counters_for(profiles: dict[str, dict[str, Any]], names: Iterable[str]) -> dict[str, Counter]:
    """A counter per named feature that has a comparable reference profile."""
    found = {name: counter_for(profiles[name]) for name in names if name in profiles}
    return {name: c for name, c in found.items() if c is not None}


def fold_batch(
    counters: dict[str, Counter], batch: pa.RecordBatch | pa.Table, features: list[Feature]
) -> None:
    """Count one batch into the counters (numeric features encoded in the model's units)."""
    numeric = [f for f in features if isinstance(counters.get(f.name), NumericCounter)]
    matrix = encode(batch, numeric)
    for i, feature in enumerate(numeric):
        counters[feature.name].add(matrix[:, i])
    for feature in features:
        counter = counters.get(feature.name)
        if isinstance(counter, CategoryCounter):
            counter.add(batch.column(feature.name))


def profile_stream(
    batches: Iterator[pa.RecordBatch], columns: list[str], categorical: set[str]
) -> tuple[list[Feature], dict[str, dict[str, Any]]]:
    """Features (kinds from the first batch's types) and their profiles, streaming `batches` once."""
    first = next(batches)
    features = []
    for name in columns:
        kind = first.schema.field(name).type
        numeric_kind = name not in categorical and is_numeric_type(kind)
        features.append(Feature(name, "numeric" if numeric_kind else "categorical", str(kind)))
    numeric = [f for f in features if f.kind == "numeric"]
    builder = ProfileBuilder([f.name for f in numeric], [f.name for f in features if f.kind != "numeric"])
    for batch in itertools.chain([first], batches):
        builder.add(encode(batch, numeric), {f.name: batch.column(f.name) for f in features})
    return features, builder.profiles()
