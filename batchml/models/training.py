"""Deterministic LightGBM training: a table and a model spec in, a booster with its metrics out."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn import metrics as skm

from batchml.config import ModelSpec, Task
from batchml.errors import DataError, SchemaError
from batchml.models.features import Feature, encode, infer_features, lightgbm_names, select_feature_columns
from batchml.models.timestamps import timestamp_micros

log = logging.getLogger(__name__)

_OBJECTIVES: dict[str, str] = {"binary": "binary", "regression": "regression", "multiclass": "multiclass"}
DEFAULT_PARAMS: dict[str, Any] = {
    "num_iterations": 200,
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "seed": 42,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 2,
    "verbosity": -1,
}


@dataclass(frozen=True)
class HeldOut:
    """The labelled rows a model was fit and evaluated on, for checks that re-score the held-out split."""

    rows: pa.Table  # every labelled row (train and held-out), in dataset order
    mask: np.ndarray  # True for held-out rows
    y: np.ndarray  # encoded target of the held-out rows
    raw: np.ndarray  # the model's predictions for the held-out rows

    @property
    def table(self) -> pa.Table:
        """The held-out rows."""
        return self.rows.filter(pa.array(self.mask))

    @property
    def train_table(self) -> pa.Table:
        """The rows the model was fit on."""
        return self.rows.filter(pa.array(~self.mask))


@dataclass(frozen=True)
class TrainResult:
    """A trained booster and everything the model card records about how it was made."""

    booster: lgb.Booster
    features: list[Feature]
    classes: list[str]
    params: dict[str, Any]
    metrics: dict[str, float | None]
    importance: dict[str, float]
    split: dict[str, Any]
    holdout: HeldOut | None = None
    #: Categorical columns with more distinct training values than `max_categories` (see `capped_categories`).
    capped_categories: list[dict[str, Any]] = field(default_factory=list)


def effective_params(task: Task, overrides: dict[str, Any], num_class: int = 0) -> dict[str, Any]:
    """Defaults, then the spec's and the caller's overrides, with the objective fixed by the task."""
    params = {**DEFAULT_PARAMS, **overrides, "objective": _OBJECTIVES[task]}
    if task == "multiclass":
        params["num_class"] = num_class
    return params


def encode_target(
    column: pa.ChunkedArray, task: Task, positive_class: str | None = None, name: str = "target"
) -> tuple[np.ndarray, list[str]]:
    """Target as floats for LightGBM, plus the class labels (as strings) in index order.

    Classes are sorted (numbers numerically, booleans as 0 and 1, text alphabetically); for a binary task
    the positive class, the one `prediction` is the probability of, is index 1: `positive_class` if given,
    else the second class in that order.
    """
    if task == "regression":
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise DataError(f"regression target must be numeric, found {column.type}")
        return np.asarray(column.cast(pa.float64()), dtype=np.float64), []
    values = column.cast(pa.string()) if not pa.types.is_boolean(column.type) else column.cast(pa.int8())
    classes = sorted(pc.unique(values).to_pylist(), key=lambda v: (isinstance(v, str), v))
    if task == "binary" and len(classes) != 2:
        raise DataError(f"binary target needs exactly 2 classes, found {len(classes)}: {classes[:10]}")
    if task == "multiclass" and len(classes) < 2:
        raise DataError(f"multiclass target needs at least 2 classes, found {classes}")
    if pa.types.is_integer(column.type) or pa.types.is_boolean(column.type):
        classes = sorted(classes, key=lambda v: int(v))  # numeric order: 0 before 1, 2 before 10
    if positive_class is not None:
        labels = [str(c) for c in classes]
        if positive_class not in labels:
            raise DataError(
                f"positive_class {positive_class!r} is not a label of target {name!r}: "
                f"labels present: {', '.join(repr(v) for v in labels)}"
            )
        classes = [c for c in classes if str(c) != positive_class] + [classes[labels.index(positive_class)]]
    codes = pc.index_in(values, value_set=pa.array(classes, values.type))
    return np.asarray(codes.cast(pa.float64()), dtype=np.float64), [str(c) for c in classes]


def _holdout_mask(table: pa.Table, spec: ModelSpec) -> np.ndarray:
    """True for rows held out for evaluation."""
    fraction = spec.split.test_fraction
    if spec.split_method == "time":
        if not spec.timestamp:
            raise SchemaError("split method 'time' needs a timestamp column in the model spec")
        stamps = timestamp_micros(table.column(spec.timestamp), spec.timestamp, spec.timestamp_format)
        cutoff = np.quantile(stamps, 1.0 - fraction, method="higher")
        return stamps >= cutoff
    ids = table.column(spec.entity_id).cast(pa.string()).to_pylist()
    buckets = np.fromiter(
        (int.from_bytes(hashlib.md5(str(i).encode()).digest()[:4], "big") % 10_000 for i in ids),
        dtype=np.int64,
        count=len(ids),
    )
    return buckets < fraction * 10_000


def evaluate(task: Task, y_true: np.ndarray, raw: np.ndarray) -> dict[str, float | None]:
    """Held-out metrics: AUC/logloss/accuracy, RMSE/MAE/R², or multiclass logloss/accuracy."""
    if len(y_true) == 0:
        return {}
    if task == "binary":
        auc = skm.roc_auc_score(y_true, raw) if len(np.unique(y_true)) == 2 else None
        return {
            "auc": auc,
            "logloss": float(skm.log_loss(y_true, raw, labels=[0, 1])),
            "accuracy": float(skm.accuracy_score(y_true, raw >= 0.5)),
        }
    if task == "regression":
        return {
            "rmse": float(np.sqrt(skm.mean_squared_error(y_true, raw))),
            "mae": float(skm.mean_absolute_error(y_true, raw)),
            "r2": float(skm.r2_score(y_true, raw)) if len(y_true) > 1 else None,
        }
    labels = list(range(raw.shape[1]))
    return {
        "logloss": float(skm.log_loss(y_true, raw, labels=labels)),
        "accuracy": float(skm.accuracy_score(y_true, raw.argmax(axis=1))),
    }


def capped_categories(
    features: list[Feature], matrix: np.ndarray, rows: np.ndarray, max_categories: int
) -> list[dict[str, Any]]:
    """Per categorical feature over the cap: distinct training values, how many were kept as categories,
    how many became the one "other" category, and how many of the training `rows` of `matrix` hold one."""
    report = []
    for i, feature in enumerate(features):
        if feature.other_code is None:
            continue
        other_rows = int(np.count_nonzero(matrix[rows, i] == feature.other_code))
        report.append(
            {
                "column": feature.name,
                "distinct": len(feature.categories) + len(feature.other),
                "max_categories": max_categories,
                "kept": len(feature.categories),
                "other": len(feature.other),
                "other_rows": other_rows,
                "other_share": other_rows / len(rows) if len(rows) else 0.0,
            }
        )
        log.warning(
            "%r has %d distinct training values, over max_categories %d: the %d least frequent are one "
            "'other' category; raise max_categories or exclude the column",
            feature.name,
            report[-1]["distinct"],
            max_categories,
            len(feature.other),
        )
    return report


def fit(table: pa.Table, spec: ModelSpec, params: dict[str, Any] | None = None) -> TrainResult:
    """Train a LightGBM model on `table` as `spec` describes and evaluate it on the held-out split."""
    if table.num_rows == 0:
        raise DataError("training data has no rows")
    columns = select_feature_columns(table.schema, spec)
    if not columns:
        raise SchemaError("the model spec leaves no feature columns: list `features` or shrink `exclude`")
    labelled = table.filter(pc.is_valid(table.column(spec.target)))
    if labelled.num_rows < table.num_rows:
        log.warning("dropping %d rows with a null target", table.num_rows - labelled.num_rows)
    y, classes = encode_target(labelled.column(spec.target), spec.task, spec.positive_class, spec.target)
    holdout = _holdout_mask(labelled, spec)
    if holdout.all() or not holdout.any():
        raise DataError(f"the {spec.split_method} split left an empty train or test set: add rows or vary it")
    train_idx, test_idx = np.flatnonzero(~holdout), np.flatnonzero(holdout)
    features = infer_features(labelled.take(train_idx), columns, spec.categorical, spec.max_categories)
    matrix = encode(labelled, features)
    merged = effective_params(spec.task, {**spec.params, **(params or {})}, num_class=len(classes))
    categorical = [i for i, f in enumerate(features) if f.kind == "categorical"]
    names = lightgbm_names(features)
    train_set = lgb.Dataset(
        matrix[train_idx],
        y[train_idx],
        feature_name=names,
        categorical_feature=categorical,
        free_raw_data=True,
    )
    booster = lgb.train(merged, train_set)
    predicted = booster.predict(matrix[test_idx])
    gains = booster.feature_importance(importance_type="gain")
    return TrainResult(
        booster=booster,
        features=features,
        classes=classes,
        params=merged,
        metrics=evaluate(spec.task, y[test_idx], np.asarray(predicted)),
        importance={f.name: float(g) for f, g in zip(features, gains, strict=True)},
        split={
            "method": spec.split_method,
            "test_fraction": spec.split.test_fraction,
            "train_rows": len(train_idx),
            "test_rows": len(test_idx),
        },
        holdout=HeldOut(labelled, holdout, y[test_idx], np.asarray(predicted)),
        capped_categories=capped_categories(features, matrix, train_idx, spec.max_categories),
    )
