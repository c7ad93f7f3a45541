"""`[models.X.gates]`: the promotion gates a model version must pass to become champion."""

from __future__ import annotations

from msgspec import field

from batchml.config_base import AtLeastOne, NonNegative, Positive, Share, Strict


class MetricGate(Strict, frozen=True):
    """A threshold on a held-out metric."""

    min: float | None = None
    max: float | None = None


class SliceGate(Strict, frozen=True):
    """Metric per slice: category values of `columns`, numeric bins of `bins`."""

    columns: list[str] = field(default_factory=list)
    bins: dict[str, list[float]] = field(default_factory=dict)
    metric: str = "auc"
    min_metric: float | None = None
    max_gap: float | None = None
    min_rows: AtLeastOne = 50


class ChampionGate(Strict, frozen=True):
    """The challenger may be worse than the current champion on the same held-out rows by at most `margin`."""

    metric: str = "auc"
    margin: NonNegative = 0.0
    alias: str = "champion"


class InvarianceGate(Strict, frozen=True):
    """Shuffling a feature declared irrelevant moves predictions by less than `epsilon` (mean |change|)."""

    features: list[str]
    epsilon: Positive = 0.01


class DirectionGate(Strict, frozen=True):
    """Features declared monotone move predictions the declared way on held-out rows."""

    increasing: list[str] = field(default_factory=list)
    decreasing: list[str] = field(default_factory=list)
    #: Share of rows allowed to move the wrong way (trees are piecewise constant; ties do not count).
    max_violation_share: Share = 0.0


class FairnessGate(Strict, frozen=True):
    """Gaps across groups of a sensitive column: positive rate, and true positive rate with labels."""

    column: str
    max_positive_rate_gap: float | None = None
    max_tpr_gap: float | None = None
    min_rows: AtLeastOne = 50


class FlipRateGate(Strict, frozen=True):
    """The share of held-out entities whose decision changes versus the champion stays under `max`."""

    max: Share
    alias: str = "champion"


class BudgetGate(Strict, frozen=True):
    """What the machine it runs on allows: measured at training with the model's scoring engine."""

    #: Size of the stored model text.
    max_model_bytes: AtLeastOne | None = None
    #: p99 of single-row predict, milliseconds.
    max_row_latency_ms: Positive | None = None
    #: Batch predict throughput, rows per second.
    min_rows_per_s: Positive | None = None


class GatesConfig(Strict, frozen=True):
    """Promotion gates; a version reaches `champion` only when all configured gates pass."""

    #: The train flow promotes a new version automatically only if every gate passed.
    auto_promote: bool = True
    metrics: dict[str, MetricGate] = field(default_factory=dict)
    slices: SliceGate | None = None
    champion: ChampionGate | None = None
    invariance: InvarianceGate | None = None
    direction: DirectionGate | None = None
    fairness: FairnessGate | None = None
    flip_rate: FlipRateGate | None = None
    budget: BudgetGate | None = None
