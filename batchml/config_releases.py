"""`[models.X.shadow]` and `[models.X.canary]`: versions scored beside the served one, and how far they may
differ from it."""

from __future__ import annotations

from typing import Literal

from msgspec import field

from batchml.config_base import AtLeastOne, NonNegative, Positive, PositiveShare, Share, Strict
from batchml.names import check_name


class DivergenceLimits(Strict, frozen=True):
    """How far a run may differ from the served (control) run of the same dataset version."""

    #: The top share of entities (by the served prediction) whose overlap is compared.
    top_share: PositiveShare = 0.01
    #: Limits; a comparison beyond any of them is a divergence (None: not checked).
    max_psi: Positive | None = 0.2
    max_ks: PositiveShare | None = 0.1
    max_flip_rate: Share | None = 0.05
    min_top_k_overlap: Share | None = None
    max_mean_abs_delta: NonNegative | None = None

    def limits(self) -> dict[str, float]:
        """The configured limits by name (`max_...` caps, `min_...` floors)."""
        values = {
            "max_psi": self.max_psi,
            "max_ks": self.max_ks,
            "max_flip_rate": self.max_flip_rate,
            "min_top_k_overlap": self.min_top_k_overlap,
            "max_mean_abs_delta": self.max_mean_abs_delta,
        }
        return {k: v for k, v in values.items() if v is not None}


class ShadowConfig(DivergenceLimits, frozen=True):
    """`[models.X.shadow]`: versions scored beside the served one on every run (one read), never served, and
    compared with it; a comparison beyond a limit is an alert (kind `shadow_divergence`)."""

    #: Aliases whose holders are scored in shadow (an alias nobody holds is skipped, with a log line).
    aliases: list[str] = field(default_factory=list)
    #: Model versions scored in shadow.
    versions: list[AtLeastOne] = field(default_factory=list)

    def __post_init__(self) -> None:
        for alias in self.aliases:
            check_name("alias", alias)

    @property
    def enabled(self) -> bool:
        """Whether any version is scored in shadow."""
        return bool(self.aliases or self.versions)


class CanaryConfig(DivergenceLimits, frozen=True):
    """`[models.X.canary]`: the holder of `alias` serves `shares[step]` of the entities (a stable salted hash
    of the entity id picks them); one step further per healthy run, rolled back on a breach."""

    alias: str = "canary"
    #: The ramp: the share served at each step, increasing, the last one held until promotion.
    shares: list[PositiveShare] = field(default_factory=lambda: [0.01, 0.1, 0.5, 1.0])
    #: Mixed into the entity hash; another salt draws another set of entities (default: the model's name).
    salt: str | None = None
    #: Labelled-performance breach: the canary arm worse than control on this metric by more than the
    #: margin, with at least `min_samples` labelled rows in each arm, rolls it back (the monitor checks).
    performance_metric: Literal["accuracy", "log_loss", "mae", "rmse"] | None = None
    max_performance_drop: NonNegative | None = None
    min_samples: AtLeastOne = 500

    def __post_init__(self) -> None:
        check_name("alias", self.alias)
        if (self.performance_metric is None) != (self.max_performance_drop is None):
            raise ValueError("canary performance_metric and max_performance_drop go together: set both")
        if self.alias == "champion":
            raise ValueError("canary alias must not be 'champion': the champion serves the control arm")
        if not self.shares or any(b <= a for a, b in zip(self.shares, self.shares[1:], strict=False)):
            raise ValueError(f"canary shares {self.shares} must be one or more increasing shares in (0, 1]")
