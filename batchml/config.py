"""Project configuration (`batchml.toml`): where storage lives and how each model is built.

Frozen msgspec structs that reject unknown fields, so a typo in the file is an error, not a silent default.
msgspec rather than pydantic because every CLI command reads the config: msgspec imports and validates in a
few milliseconds where pydantic cost ~0.17 s of CPU per command (`benchmarks/cli_startup.py`). Structs are
validated when converted from a mapping (`parse_config`, `ModelSpec.from_mapping`); building one in code
checks only the cross-field rules in `__post_init__`. The gates (`config_gates`) and the shadow and canary
sections (`config_releases`) have modules of their own, on `config_base`; their structs are re-exported here.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from msgspec import Meta, field

from batchml.config_base import AtLeastOne as AtLeastOne
from batchml.config_base import NonNegative as NonNegative
from batchml.config_base import Positive as Positive
from batchml.config_base import PositiveShare as PositiveShare
from batchml.config_base import Share as Share
from batchml.config_base import Strict
from batchml.config_gates import GatesConfig as GatesConfig
from batchml.config_releases import CanaryConfig as CanaryConfig
from batchml.config_releases import DivergenceLimits as DivergenceLimits
from batchml.config_releases import ShadowConfig as ShadowConfig
from batchml.errors import ConfigError
from batchml.names import check_name
from batchml.sizes import ALLOWED as SIZES
from batchml.sizes import size_bytes

Task = Literal["binary", "regression", "multiclass"]


class StorageConfig(Strict, frozen=True):
    """Where versions live. `root` is a path (relative to the config file) or a URL (`s3://b/prefix`)."""

    root: str = "data"
    #: Local folder for serving DuckDB files; defaults to `<root>/serving` for local roots, `.batchml/serving`
    #: beside the config file for remote ones (DuckDB files are opened from local disk).
    serving_dir: str | None = None
    #: Extra fsspec options (e.g. `endpoint_url` for S3-compatible servers). Never put credentials here.
    options: dict[str, Any] = field(default_factory=dict)


class ServingConfig(Strict, frozen=True):
    """`[serving]`: the caps of reader connections (`batchml.connect`, `batchml query`) on this host, and so
    how many rows the serving build indexes: only what a reader with `reader_memory_limit` can hold; and
    whether run tables get lookup files."""

    #: A DuckDB size ('2GB' = 2 x 10^9 bytes, '2GiB' = 2 x 2^30): each reader's memory, of which half may
    #: go to the indexes it loads and keeps (`batchml.serving.run_tables.index_fits`: 90 bytes per row).
    reader_memory_limit: str = "2GB"
    reader_threads: AtLeastOne = 2
    #: Write each run's lookup files beside the serving file (`batchml.serving.lookup_files`): point and
    #: batch lookups then read memory-mapped files instead of querying DuckDB. They take disk (about the
    #: run's uncompressed rows) and are written when a file is built or pulled.
    lookup_files: bool = True

    def __post_init__(self) -> None:
        if size_bytes(self.reader_memory_limit) is None:
            raise ValueError(f"reader_memory_limit {self.reader_memory_limit!r} is invalid: use {SIZES}")

    @property
    def reader_memory_bytes(self) -> int:
        """`reader_memory_limit` in bytes, as DuckDB reads it."""
        value = size_bytes(self.reader_memory_limit)
        assert value is not None  # checked in __post_init__
        return value


class DatasetConfig(Strict, frozen=True):
    """A dataset's default source, used when `datasets snapshot NAME` is given no SOURCE."""

    source: str | None = None
    format: Literal["csv", "parquet"] | None = None


class SplitConfig(Strict, frozen=True):
    """How rows are held out for evaluation: the latest `test_fraction` by time, or by hashed entity id."""

    method: Literal["time", "hash"] | None = None  # None: "time" when the spec has a timestamp, else "hash"
    test_fraction: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.2


class Expectation(Strict, frozen=True):
    """Rules for one column, checked on training data and on every scoring batch.

    Row rules (`min`, `max`, `in`, `not_null`) with severity "hard" send breaking rows to quarantine at
    scoring (and fail training); with "warn" they are only counted. `max_null_rate` holds per dataset/run.
    """

    min: float | None = None
    max: float | None = None
    in_: list[Any] | None = field(default=None, name="in")
    not_null: bool = False
    max_null_rate: Share | None = None
    severity: Literal["hard", "warn"] = "hard"

    def __post_init__(self) -> None:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is greater than max {self.max:g}: use min <= max")
        if self.in_ is not None and not self.in_:
            raise ValueError("`in` is an empty list: list the allowed values, or drop `in`")


class ScoringConfig(Strict, frozen=True):
    """How scoring treats bad rows and what it adds to each prediction."""

    #: A run whose quarantined share of rows exceeds this fails and publishes nothing.
    max_quarantine_share: Share = 0.01
    #: Store the top-k features by |contribution| (LightGBM pred_contrib), each with its signed
    #: contribution, per prediction; 0 = off.
    reason_codes: Annotated[int, Meta(ge=0, le=20)] = 0
    #: Which rows get reasons (the others get NULL): "top" - rows scoring at or above the model's fixed
    #: threshold for `reason_share` (see `batchml.scoring.reason_rows`), "flagged" - rows with input-check
    #: flags, "all" - every row. Contributions cost ~100x a prediction per row, so "all" is slow.
    reason_rows: Literal["top", "flagged", "all"] = "top"
    #: For "top": the share of the model's reference predictions that lie at or above the threshold.
    reason_share: PositiveShare = 0.005
    #: What computes predictions: "lightgbm" (its own predict), a compiled engine ("tl2cgen": C built with
    #: gcc, bit-exact; "lleaves": LLVM, last-bit differences), or "auto" - the fastest compiled engine that is
    #: installed and passed its exactness check at training, else lightgbm with a logged reason. Compiled
    #: engines need `pip install 'batchml[engines]'` (and gcc for tl2cgen).
    engine: Literal["lightgbm", "tl2cgen", "lleaves", "auto"] = "lightgbm"
    #: The largest |prediction - LightGBM's| on the held-out rows an engine may show and still be used.
    tolerance: NonNegative = 1e-9


class DriftConfig(Strict, frozen=True):
    """Drift thresholds against the model's training profile (numeric: PSI + KS; categorical: PSI + JS)."""

    psi: Positive = 0.2
    ks: PositiveShare = 0.1
    js: PositiveShare = 0.1
    #: Per-feature overrides, e.g. {"amount" = {psi = 0.3}}; the key "prediction" covers the predictions.
    features: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The run's dataset-level verdict is "drifted" when more than this share of features drifted.
    max_drifted_share: Share = 0.3


class LabelsConfig(Strict, frozen=True):
    """Where delayed labels come from: a dataset with entity id, label and the time the label became known."""

    dataset: str
    entity_id: str
    label: str
    label_time: str

    def __post_init__(self) -> None:
        check_name("dataset", self.dataset)


class PerformanceConfig(Strict, frozen=True):
    """Metrics of labelled predictions per period and slice; a drop over `max_drop` from validation alerts."""

    metric: str = "auc"
    max_drop: NonNegative = 0.05
    period: Literal["day", "week", "month"] = "month"
    slices: list[str] = field(default_factory=list)
    min_rows: AtLeastOne = 100


class RetrainConfig(Strict, frozen=True):
    """When the monitor flow retrains: on which breaches, and at most once per `debounce_hours`."""

    on_drift: bool = True
    on_performance: bool = True
    max_model_age_days: Positive | None = None
    debounce_hours: NonNegative = 24.0


class MonitoringConfig(Strict, frozen=True):
    """Drift, delayed-label performance, Evidently reports and the retraining loop."""

    drift: DriftConfig = field(default_factory=DriftConfig)
    labels: LabelsConfig | None = None
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    #: Rows per side in Evidently reports (a seeded sample when the data is larger; the report says so).
    report_sample_rows: Annotated[int, Meta(ge=100)] = 50_000


class ModelSpec(Strict, frozen=True):
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
    exclude: list[str] = field(default_factory=list)
    #: Numeric columns to treat as categorical (string columns always are).
    categorical: list[str] = field(default_factory=list)
    #: Per categorical column, the most frequent training values kept as categories; the rest of the
    #: training values become one "other" category (reported at training, flagged `other:<col>` at scoring).
    max_categories: AtLeastOne = 1000
    params: dict[str, Any] = field(default_factory=dict)
    split: SplitConfig = field(default_factory=SplitConfig)
    expectations: dict[str, Expectation] = field(default_factory=dict)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    gates: GatesConfig = field(default_factory=GatesConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    canary: CanaryConfig | None = None

    @classmethod
    def prepare(cls, data: Any) -> Any:
        """A class label written as a number or boolean in TOML is the text of that class."""
        label = data.get("positive_class") if isinstance(data, dict) else None
        if isinstance(label, bool):  # a boolean target's classes are "0" and "1"
            return {**data, "positive_class": str(int(label))}
        if isinstance(label, int):
            return {**data, "positive_class": str(label)}
        return data

    def __post_init__(self) -> None:
        check_name("dataset", self.dataset)
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

    @property
    def split_method(self) -> str:
        """The effective split method."""
        return self.split.method or ("time" if self.timestamp else "hash")


class Config(Strict, frozen=True):
    """The whole `batchml.toml`."""

    storage: StorageConfig = field(default_factory=StorageConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)
    models: dict[str, ModelSpec] = field(default_factory=dict)

    @classmethod
    def prepare(cls, data: Any) -> Any:
        """Check dataset and model names first, so an error names the bad one (see `ModelSpec.prepare`)."""
        if not isinstance(data, dict):
            return data
        for kind, key in (("dataset", "datasets"), ("model", "models")):
            section = data.get(key)
            for name in section if isinstance(section, dict) else ():
                check_name(kind, name)
        models = data.get("models")
        if isinstance(models, dict):
            data = {**data, "models": {n: ModelSpec.prepare(m) for n, m in models.items()}}
        return data

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


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a config mapping (as read from TOML)."""
    return Config.from_mapping(data, source)
