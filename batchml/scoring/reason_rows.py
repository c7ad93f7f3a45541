"""Which rows of a run get reason codes: every row, the top share by score, or the flagged rows.

Contributions (LightGBM `pred_contrib`, TreeSHAP) cost one to several hundred predictions per row, so a run
computes them only for the rows that need them. The choice for a row depends on that row alone (its score,
its flags) and on constants of the run, never on the other rows of its batch or partition: a partitioned
run stores the same reasons as the sequential one.

"top" is a fixed score threshold, not a rank within a batch: the (1 - share) quantile of the model's
reference predictions (its training dataset version as scoring sees it, `batchml.monitoring.drift_reference`),
linearly interpolated between the percentiles that profile records (min, p1, p5, p25, p50, p75, p95, p99,
max). It is derived from stored artifacts, so the same model and share always give the same threshold; the
share of a run's rows above it follows the run's scores (it grows when scores drift up).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchml.errors import ConfigError
from batchml.models.profiles import QUANTILES

ReasonRows = Literal["top", "flagged", "all"]
MODES: tuple[str, ...] = ("top", "flagged", "all")


def top_threshold(predictions: dict[str, Any] | None, share: float, model: str) -> float:
    """The score at or above which a row is in the top `share` of `model`'s reference `predictions`
    (a numeric profile); for share 1 the lowest float, below every score (and still strict JSON)."""
    if not 0.0 < share <= 1.0:
        raise ConfigError(f"reason_share {share!r} is invalid: use a number in (0, 1]")
    if share >= 1.0:
        return -sys.float_info.max
    known = (predictions or {}).get("quantiles") or {}
    if not known or (predictions or {}).get("min") is None:
        raise ConfigError(
            f"reason_rows 'top' needs the reference predictions of model {model}, and it has none: "
            "use reason_rows 'flagged' or 'all'"
        )
    assert predictions is not None
    points = sorted(
        [(0.0, predictions["min"]), (1.0, predictions["max"])]
        + [(QUANTILES[name], value) for name, value in known.items() if value is not None]
    )
    return float(np.interp(1.0 - share, [p for p, _ in points], [v for _, v in points]))


@dataclass(frozen=True)
class ReasonPlan:
    """How many reasons each selected row gets and how rows are selected (the run's constants)."""

    top: int = 0  # reasons per row; 0 = off
    rows: ReasonRows = "top"
    threshold: float | None = None  # for "top"

    def __post_init__(self) -> None:
        if self.rows not in MODES:
            raise ConfigError(f"reason_rows {self.rows!r} is invalid: use one of {', '.join(MODES)}")
        if self.top and self.rows == "top" and self.threshold is None:
            raise ConfigError("reason_rows 'top' needs a score threshold (see batchml.scoring.reason_rows)")

    def selected(self, values: np.ndarray, flags: pa.Array) -> np.ndarray:
        """Which rows of a batch get reasons, from each row's prediction value and flags."""
        if self.rows == "all":
            return np.ones(len(values), dtype=bool)
        if self.rows == "flagged":
            lengths = pc.fill_null(pc.list_value_length(flags), 0)
            return np.asarray(lengths.to_numpy(zero_copy_only=False) > 0)
        assert self.threshold is not None
        return np.asarray(values >= self.threshold)
