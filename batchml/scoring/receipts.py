"""Per-prediction receipts: a stable hash of the model's input row, and top-k reason codes.

The input hash is a 64-bit FNV-1a-style fold over the float64 bits of the encoded feature row (NaN made
canonical), vectorised with numpy so it costs a few passes over the batch. It depends only on the values
the model saw, so re-encoding the stored dataset row later gives the same hash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    import lightgbm as lgb

_OFFSET = np.uint64(0xCBF29CE484222325)
_PRIME = np.uint64(0x100000001B3)


def input_hashes(matrix: np.ndarray) -> np.ndarray:
    """One uint64 per row of the encoded input matrix."""
    canonical = np.where(np.isnan(matrix), np.nan, matrix)  # every NaN payload hashes alike
    bits = np.ascontiguousarray(canonical, dtype=np.float64).view(np.uint64)
    hashes = np.full(matrix.shape[0], _OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in range(bits.shape[1]):
            hashes ^= bits[:, column]
            hashes *= _PRIME
            hashes ^= hashes >> np.uint64(29)
    return hashes


def contributions(booster: lgb.Booster, matrix: np.ndarray, num_class: int, threads: int = 0) -> np.ndarray:
    """Feature contributions, rows x (features + bias last); for multiclass, of each row's predicted class.

    `threads` is LightGBM's `num_threads` for this call (0: its default).
    """
    raw = np.asarray(booster.predict(matrix, pred_contrib=True, num_threads=threads))
    width = matrix.shape[1] + 1
    if num_class <= 2:
        return raw
    per_class = raw.reshape(len(matrix), num_class, width)
    scores = per_class.sum(axis=2)
    return per_class[np.arange(len(matrix)), scores.argmax(axis=1), :]


def reason_codes(contrib: np.ndarray, names: list[str], top: int) -> pa.Array:
    """For each row, the `top` feature names ordered by |contribution|, largest first."""
    top = min(top, contrib.shape[1])
    order = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :top]
    labels = np.asarray(names, dtype=object)[order]
    offsets = pa.array(np.arange(0, labels.size + 1, top, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(labels.ravel(), pa.string()))
