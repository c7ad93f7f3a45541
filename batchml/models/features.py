"""Features bound by name: what a model expects, and turning Arrow columns into its input matrix.

The same encoding serves training and scoring, so a category maps to the same code in both. Column names
are kept as the user wrote them (spaces, quotes, unicode); LightGBM only ever sees safe positional names.

A categorical keeps its `max_categories` most frequent training values as categories 0..k-1; every other
value seen in training is the one category k, "other" (recorded in the card as `other`, so that scoring
can tell it from a value training never saw, which is encoded as missing).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchml.config import ModelSpec
from batchml.errors import SchemaError
from batchml.models.inputs import Feature
from batchml.models.timestamps import date_format_of


def is_numeric_type(kind: pa.DataType) -> bool:
    """Whether a column of this Arrow type is read as a number (integers, floats, bools, decimals, times)."""
    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_temporal(kind)
    )


def select_feature_columns(schema: pa.Schema, spec: ModelSpec) -> list[str]:
    """The feature columns of `spec` in dataset order, checking that every named column exists."""
    roles = {spec.entity_id, spec.target} | ({spec.timestamp} if spec.timestamp else set())
    wanted = list(roles) + (spec.features or []) + spec.exclude + spec.categorical
    missing = [c for c in dict.fromkeys(wanted) if c not in schema.names]
    if missing:
        raise SchemaError(
            f"columns named in the model spec are not in the dataset (columns: {schema.names})",
            [f"missing column {c!r}" for c in missing],
        )
    if spec.features is not None:
        return list(spec.features)
    excluded = roles | set(spec.exclude)
    return [c for c in schema.names if c not in excluded]


def infer_features(
    table: pa.Table, columns: list[str], categorical: list[str], max_categories: int
) -> list[Feature]:
    """Decide numeric vs categorical per column and learn category sets from the training table: the
    `max_categories` most frequent values (ties by value), the rest as one "other" category."""
    features = []
    for name in columns:
        column = table.column(name)
        kind = column.type
        if is_numeric_type(kind) and name not in categorical:
            features.append(Feature(name, "numeric", str(kind)))
            continue
        if name not in categorical and (written := date_format_of(column)) is not None:
            raise SchemaError(
                f"column {name!r} holds dates as text ({written}): as a category each date would be its "
                "own value, unseen as soon as new dates arrive. Make it the model's timestamp (timestamp = "
                f"{name!r}), exclude it (exclude = [{name!r}]), or list it in categorical to keep it so"
            )
        counts = Counter(v for v in column.cast(pa.string()).to_pylist() if v is not None)
        ranked = [value for value, _ in sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))]
        top, rest = sorted(ranked[:max_categories]), sorted(ranked[max_categories:])
        features.append(Feature(name, "categorical", str(kind), tuple(top), tuple(rest)))
    return features


def category_codes(column: pa.Array | pa.ChunkedArray, feature: Feature) -> np.ndarray:
    """Codes of a categorical feature as floats: its categories 0..k-1, "other" k, anything else NaN."""
    known = pa.array(feature.categories + feature.other, pa.string())
    codes = pc.index_in(column.cast(pa.string()), value_set=known)
    values = np.asarray(pc.fill_null(codes.cast(pa.float64()), np.nan), dtype=np.float64)
    if feature.other_code is not None:
        values = np.minimum(values, feature.other_code)  # every overflow value is "other"; NaN stays NaN
    return values


def lightgbm_names(features: list[Feature]) -> list[str]:
    """Safe, unique names for LightGBM (it rejects JSON special characters in feature names)."""
    names: list[str] = []
    for i, feature in enumerate(features):
        base = re.sub(r"[^A-Za-z0-9_]", "_", feature.name).strip("_")[:60] or "feature"
        names.append(f"f{i}_{base}")
    return names


def _numeric_column(name: str, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    kind = column.type
    if pa.types.is_temporal(kind):
        column = pc.cast(column, pa.timestamp("us")) if pa.types.is_date(kind) else column
        column = column.cast(pa.int64())
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            column = pc.cast(column, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise SchemaError(
                "input column cannot be used as the model expects",
                [f"{name!r}: expected numeric, found {kind}"],
            ) from None
    return np.asarray(pc.fill_null(column.cast(pa.float64()), np.nan), dtype=np.float64)


def check_input_schema(schema: pa.Schema, features: list[Feature]) -> None:
    """Raise SchemaError naming every missing column and every dtype that cannot be used."""
    problems = []
    for feature in features:
        if feature.name not in schema.names:
            problems.append(f"{feature.name!r}: missing (expected {feature.kind} {feature.dtype})")
            continue
        found = schema.field(feature.name).type
        castable = is_numeric_type(found) or pa.types.is_null(found) or pa.types.is_string(found)
        if feature.kind == "numeric" and not (castable or pa.types.is_large_string(found)):
            problems.append(f"{feature.name!r}: expected numeric {feature.dtype}, found {found}")
        if feature.kind == "categorical" and pa.types.is_nested(found):
            problems.append(f"{feature.name!r}: expected categorical {feature.dtype}, found {found}")
    if problems:
        raise SchemaError("input does not match the model's features (bound by name)", problems)


def encode(batch: pa.RecordBatch | pa.Table, features: list[Feature]) -> np.ndarray:
    """The model's input matrix (rows x features, float64, C order); categories never seen become missing."""
    matrix = np.empty((batch.num_rows, len(features)), dtype=np.float64)
    for i, feature in enumerate(features):
        column = batch.column(feature.name)
        if feature.kind == "numeric":
            matrix[:, i] = _numeric_column(feature.name, column)
        else:
            matrix[:, i] = category_codes(column, feature)
    return matrix


_POSITIONAL = re.compile(r"Column_\d+")


def renamed(features: list[Feature], names: list[str]) -> list[Feature]:
    """`features` bound to the dataset columns `names`, one per position (a booster trained on a matrix)."""
    if len(names) != len(features):
        current = ", ".join(f.name for f in features[:5]) + (", ..." if len(features) > 5 else "")
        raise SchemaError(
            f"feature_names has {len(names)} names but the booster has {len(features)} features "
            f"({current}): give one dataset column per position"
        )
    bad = [n for n in names if not isinstance(n, str) or not n]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if bad or repeated:
        raise SchemaError(
            f"feature_names must be distinct column names: {'empty or not text: ' if bad else 'repeated: '}"
            f"{', '.join(map(repr, bad or repeated))}"
        )
    return [replace(f, name=name) for f, name in zip(features, names, strict=True)]


def check_bindable(features: list[Feature], entity_id: str, where: str, columns: list[str]) -> None:
    """Raise SchemaError naming every feature (and the entity id) that is not a column of `where`."""
    missing = [f.name for f in features if f.name not in columns]
    problems = [f"feature {name!r}: no such column" for name in missing]
    if entity_id not in columns:
        problems.insert(0, f"entity id {entity_id!r}: no such column")
    if not problems:
        return
    positional = missing and all(_POSITIONAL.fullmatch(n) for n in missing)
    hint = (
        " (the booster was trained on a matrix: map each position to a column with "
        "register_model(..., feature_names=[...]))"
        if positional
        else ""
    )
    shown = ", ".join(columns[:30]) + (", ..." if len(columns) > 30 else "")
    raise SchemaError(f"the model cannot bind to {where} by name{hint}; its columns: {shown}", problems)
