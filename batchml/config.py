"""Project configuration (`batchml.toml`): where storage lives and how each model is built.

Frozen pydantic models that reject unknown fields, so a typo in the file is an error, not a silent default.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchml.errors import ConfigError
from batchml.names import check_name

Task = Literal["binary", "regression", "multiclass"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class StorageConfig(_Strict):
    """Where versions live. `root` is a path (relative to the config file) or a URL (`s3://b/prefix`)."""

    root: str = "data"
    #: Local folder for serving DuckDB files; defaults to `<root>/serving` for local roots, `.batchml/serving`
    #: beside the config file for remote ones (DuckDB files are opened from local disk).
    serving_dir: str | None = None
    #: Extra fsspec options (e.g. `endpoint_url` for S3-compatible servers). Never put credentials here.
    options: dict[str, Any] = Field(default_factory=dict)


class DatasetConfig(_Strict):
    """A dataset's default source, used when `datasets snapshot NAME` is given no SOURCE."""

    source: str | None = None
    format: Literal["csv", "parquet"] | None = None


class SplitConfig(_Strict):
    """How rows are held out for evaluation: the latest `test_fraction` by time, or by hashed entity id."""

    method: Literal["time", "hash"] | None = None  # None: "time" when the spec has a timestamp, else "hash"
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)


class Expectation(_Strict):
    """Rules for one column, checked on training data and on every scoring batch.

    Row rules (`min`, `max`, `in`, `not_null`) with severity "hard" send breaking rows to quarantine at
    scoring (and fail training); with "warn" they are only counted. `max_null_rate` holds per dataset/run.
    """

    min: float | None = None
    max: float | None = None
    in_: list[Any] | None = Field(default=None, alias="in")
    not_null: bool = False
    max_null_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    severity: Literal["hard", "warn"] = "hard"

    @model_validator(mode="after")
    def _consistent(self) -> Expectation:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is greater than max {self.max:g}: use min <= max")
        if self.in_ is not None and not self.in_:
            raise ValueError("`in` is an empty list: list the allowed values, or drop `in`")
        return self


class ScoringConfig(_Strict):
    """How scoring treats bad rows and what it adds to each prediction."""

    #: A run whose quarantined share of rows exceeds this fails and publishes nothing.
    max_quarantine_share: float = Field(default=0.01, ge=0.0, le=1.0)
    #: Store the top-k features by |contribution| (LightGBM pred_contrib), each with its signed
    #: contribution, per prediction; 0 = off.
    reason_codes: int = Field(default=0, ge=0, le=20)
    #: Which rows get reasons (the others get NULL): "top" - rows scoring at or above the model's fixed
    #: threshold for `reason_share` (see `batchml.scoring.reason_rows`), "flagged" - rows with input-check
    #: flags, "all" - every row. Contributions cost ~100x a prediction per row, so "all" is slow.
    reason_rows: Literal["top", "flagged", "all"] = "top"
    #: For "top": the share of the model's reference predictions that lie at or above the threshold.
    reason_share: float = Field(default=0.005, gt=0.0, le=1.0)


class MetricGate(_Strict):
    """A threshold on a held-out metric."""

    min: float | None = None
    max: float | None = None


class SliceGate(_Strict):
    """Metric per slice: category values of `columns`, numeric bins of `bins`."""

    columns: list[str] = Field(default_factory=list)
    bins: dict[str, list[float]] = Field(default_factory=dict)
    metric: str = "auc"
    min_metric: float | None = None
    max_gap: float | None = None
    min_rows: int = Field(default=50, ge=1)


class ChampionGate(_Strict):
    """The challenger may be worse than the current champion on the same held-out rows by at most `margin`."""

    metric: str = "auc"
    margin: float = Field(default=0.0, ge=0.0)
    alias: str = "champion"


class InvarianceGate(_Strict):
    """Shuffling a feature declared irrelevant moves predictions by less than `epsilon` (mean |change|)."""

    features: list[str]
    epsilon: float = Field(default=0.01, gt=0.0)


class DirectionGate(_Strict):
    """Features declared monotone move predictions the declared way on held-out rows."""

    increasing: list[str] = Field(default_factory=list)
    decreasing: list[str] = Field(default_factory=list)
    #: Share of rows allowed to move the wrong way (trees are piecewise constant; ties do not count).
    max_violation_share: float = Field(default=0.0, ge=0.0, le=1.0)


class FairnessGate(_Strict):
    """Gaps across groups of a sensitive column: positive rate, and true positive rate with labels."""

    column: str
    max_positive_rate_gap: float | None = None
    max_tpr_gap: float | None = None
    min_rows: int = Field(default=50, ge=1)


class FlipRateGate(_Strict):
    """The share of held-out entities whose decision changes versus the champion stays under `max`."""

    max: float = Field(ge=0.0, le=1.0)
    alias: str = "champion"


class GatesConfig(_Strict):
    """Promotion gates; a version reaches `champion` only when all configured gates pass."""

    #: The train flow promotes a new version automatically only if every gate passed.
    auto_promote: bool = True
    metrics: dict[str, MetricGate] = Field(default_factory=dict)
    slices: SliceGate | None = None
    champion: ChampionGate | None = None
    invariance: InvarianceGate | None = None
    direction: DirectionGate | None = None
    fairness: FairnessGate | None = None
    flip_rate: FlipRateGate | None = None


class DriftConfig(_Strict):
    """Drift thresholds against the model's training profile (numeric: PSI + KS; categorical: PSI + JS)."""

    psi: float = Field(default=0.2, gt=0.0)
    ks: float = Field(default=0.1, gt=0.0, le=1.0)
    js: float = Field(default=0.1, gt=0.0, le=1.0)
    #: Per-feature overrides, e.g. {"amount" = {psi = 0.3}}; the key "prediction" covers the predictions.
    features: dict[str, dict[str, float]] = Field(default_factory=dict)
    #: The run's dataset-level verdict is "drifted" when more than this share of features drifted.
    max_drifted_share: float = Field(default=0.3, ge=0.0, le=1.0)


class LabelsConfig(_Strict):
    """Where delayed labels come from: a dataset with entity id, label and the time the label became known."""

    dataset: str
    entity_id: str
    label: str
    label_time: str

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, value: str) -> str:
        return check_name("dataset", value)


class PerformanceConfig(_Strict):
    """Metrics of labelled predictions per period and slice; a drop over `max_drop` from validation alerts."""

    metric: str = "auc"
    max_drop: float = Field(default=0.05, ge=0.0)
    period: Literal["day", "week", "month"] = "month"
    slices: list[str] = Field(default_factory=list)
    min_rows: int = Field(default=100, ge=1)


class RetrainConfig(_Strict):
    """When the monitor flow retrains: on which breaches, and at most once per `debounce_hours`."""

    on_drift: bool = True
    on_performance: bool = True
    max_model_age_days: float | None = Field(default=None, gt=0.0)
    debounce_hours: float = Field(default=24.0, ge=0.0)


class MonitoringConfig(_Strict):
    """Drift, delayed-label performance, Evidently reports and the retraining loop."""

    drift: DriftConfig = Field(default_factory=DriftConfig)
    labels: LabelsConfig | None = None
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    #: Rows per side in Evidently reports (a seeded sample when the data is larger; the report says so).
    report_sample_rows: int = Field(default=50_000, ge=100)


class ModelSpec(_Strict):
    """What to train: which dataset, which columns play which role, the task and LightGBM parameters."""

    dataset: str
    entity_id: str
    target: str
    task: Task = "binary"
    #: Binary only: the class `prediction` is the probability of. Without it, the classes are sorted
    #: (numbers numerically, false before true, text alphabetically) and the second one is positive:
    #: 1 of 0/1, true of booleans, "good" of bad/good. Booleans are the classes 0 and 1.
    positive_class: str | None = None
    timestamp: str | None = None
    #: How a text timestamp column is written, in strftime codes (e.g. "%b-%Y" for "Mar-2018"); ISO-8601 dates
    #: and datetimes need none.
    timestamp_format: str | None = None
    #: Explicit feature list; None means every column except entity id, timestamp, target and `exclude`.
    features: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    #: Numeric columns to treat as categorical (string columns always are).
    categorical: list[str] = Field(default_factory=list)
    #: Per categorical column, the most frequent training values kept as categories; the rest of the
    #: training values become one "other" category (reported at training, flagged `other:<col>` at scoring).
    max_categories: int = Field(default=1000, ge=1)
    params: dict[str, Any] = Field(default_factory=dict)
    split: SplitConfig = Field(default_factory=SplitConfig)
    expectations: dict[str, Expectation] = Field(default_factory=dict)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, value: str) -> str:
        return check_name("dataset", value)

    @field_validator("positive_class", mode="before")
    @classmethod
    def _class_label(cls, value: Any) -> Any:
        if isinstance(value, bool):  # a boolean target's classes are "0" and "1"
            return str(int(value))
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _roles_distinct(self) -> ModelSpec:
        roles = [self.entity_id, self.target] + ([self.timestamp] if self.timestamp else [])
        if len(set(roles)) != len(roles):
            raise ValueError(f"entity_id, target and timestamp must be different columns, got {roles}")
        if self.features is not None and set(self.features) & set(roles):
            raise ValueError(f"features must not include entity_id/target/timestamp: {sorted(set(roles))}")
        if self.timestamp_format is not None and (self.timestamp is None or "%" not in self.timestamp_format):
            raise ValueError(
                f"timestamp_format {self.timestamp_format!r} needs a timestamp column and strftime codes "
                "(e.g. \"%b-%Y\" for 'Mar-2018')"
            )
        if self.positive_class is not None and self.task != "binary":
            raise ValueError(f"positive_class applies to binary models only; the task is {self.task!r}")
        return self

    @property
    def split_method(self) -> str:
        """The effective split method."""
        return self.split.method or ("time" if self.timestamp else "hash")


class Config(_Strict):
    """The whole `batchml.toml`."""

    storage: StorageConfig = Field(default_factory=StorageConfig)
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)
    models: dict[str, ModelSpec] = Field(default_factory=dict)

    @field_validator("datasets", "models")
    @classmethod
    def _names(cls, value: dict[str, Any], info: Any) -> dict[str, Any]:
        kind = "dataset" if info.field_name == "datasets" else "model"
        for name in value:
            check_name(kind, name)
        return value

    def model(self, name: str) -> ModelSpec:
        """The spec of model `name`, or a ConfigError listing the configured models."""
        if name not in self.models:
            known = ", ".join(sorted(self.models)) or "none"
            raise ConfigError(f"model {name!r} is not configured; configured models: {known}")
        return self.models[name]


def load_config(path: Path) -> Config:
    """Parse and validate a `batchml.toml`, with errors that name the file and the field."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    return parse_config(data, source=str(path))


def _problem(err: Any) -> str:
    """One validation error as `field: what is allowed (got value)`; containers are not echoed."""
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    value = err.get("input")
    got = "" if err["type"] == "missing" or isinstance(value, dict | list) else f" (got {value!r})"
    return f"{where}: {err['msg']}{got}"


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a config mapping (as read from TOML)."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise ConfigError(f"invalid config {source!r}: {problems}") from None
