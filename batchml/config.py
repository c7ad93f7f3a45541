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
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class ModelSpec(_Strict):
    """What to train: which dataset, which columns play which role, the task and LightGBM parameters."""

    dataset: str
    entity_id: str
    target: str
    task: Task = "binary"
    timestamp: str | None = None
    #: Explicit feature list; None means every column except entity id, timestamp, target and `exclude`.
    features: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    #: Numeric columns to treat as categorical (string columns always are).
    categorical: list[str] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    split: SplitConfig = Field(default_factory=SplitConfig)

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, value: str) -> str:
        return check_name("dataset", value)

    @model_validator(mode="after")
    def _roles_distinct(self) -> ModelSpec:
        roles = [self.entity_id, self.target] + ([self.timestamp] if self.timestamp else [])
        if len(set(roles)) != len(roles):
            raise ValueError(f"entity_id, target and timestamp must be different columns, got {roles}")
        if self.features is not None and set(self.features) & set(roles):
            raise ValueError(f"features must not include entity_id/target/timestamp: {sorted(set(roles))}")
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


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a config mapping (as read from TOML)."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid config {source!r}: {problems}") from None
