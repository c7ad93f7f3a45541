"""Per-prediction receipts: a stable hash of the model's input row, and signed top-k reason codes.

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


#: One reason: a feature and its signed contribution to the raw score (log-odds for binary, the predicted
#: class's raw score for multiclass, the prediction itself for regression). Positive raises the score.
REASON = pa.struct([("feature", pa.string()), ("contribution", pa.float64())])
REASONS = pa.list_(REASON)


def reason_codes(contrib: np.ndarray, names: list[str], top: int, selected: np.ndarray) -> pa.Array:
    """Per row, the `top` features by |contribution| (largest first, ties by feature order) with their
    signed contributions; NULL for rows not `selected`.

    `contrib` holds the feature contributions (no bias column) of the selected rows only, in row order;
    `selected` is a boolean mask over every row of the batch.
    """
    top = min(top, contrib.shape[1])
    order = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :top]
    features = pa.array(names, pa.string()).take(pa.array(order.ravel()))
    values = pa.array(np.take_along_axis(contrib, order, axis=1).ravel(), pa.float64())
    items = pa.StructArray.from_arrays([features, values], fields=list(REASON))
    offsets = np.zeros(len(selected) + 1, dtype=np.int32)
    np.cumsum(np.where(selected, top, 0), out=offsets[1:])
    return pa.ListArray.from_arrays(
        pa.array(offsets), items, type=REASONS, mask=pa.array(~np.asarray(selected, dtype=bool))
    )
