"""Expectations from the config (`[models.M.expectations.COLUMN]`), turned into rules and checked.

Row rules (`min`, `max`, `in`, `not_null`) are evaluated vectorised with pyarrow.compute on a column or a
record batch and give a boolean mask of the rows that break them; `max_null_rate` holds over a whole dataset
(training) or run (scoring). Nulls (and NaN) only break `not_null` and `max_null_rate`, never min/max/in.

Training data must satisfy every hard rule: `check_training_data` raises a DataError whose message lists,
per column and rule, how many rows broke it with examples; warn rules are only reported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchml.config import Expectation, ModelSpec
from batchml.errors import DataError, SchemaError

log = logging.getLogger(__name__)

Column: TypeAlias = pa.Array | pa.ChunkedArray
MAX_EXAMPLES = 5


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Rule:
    """One row rule on one column: `kind` is min, max, in or not_null; `label` names it in reports."""

    column: str
    kind: str
    severity: str
    bound: float | None = None
    allowed: tuple[Any, ...] = ()

    @property
    def label(self) -> str:
        """Human form: `min 18`, `max 100`, `in [north, south]`, `not_null`."""
        if self.kind in ("min", "max"):
            return f"{self.kind} {_fmt(self.bound)}"
        if self.kind == "in":
            shown = ", ".join(_fmt(v) for v in self.allowed[:8])
            return f"in [{shown}{', ...' if len(self.allowed) > 8 else ''}]"
        return self.kind

    def broken(self, values: Column) -> np.ndarray:
        """A boolean numpy mask: True where a row breaks this rule."""
        values = _plain(values)
        if self.kind == "not_null":
            mask = _is_null(values)
        elif self.kind == "in":
            allowed = pc.is_in(values, value_set=_value_set(self, values.type))
            mask = pc.and_(pc.invert(allowed), _valid(values))
        else:
            numbers = _as_float(self.column, values)
            compare = pc.less if self.kind == "min" else pc.greater
            mask = pc.fill_null(compare(numbers, pa.scalar(self.bound, pa.float64())), False)
        return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


def _plain(values: Column) -> Column:
    if pa.types.is_dictionary(values.type):
        return pc.cast(values, values.type.value_type)
    return values


def _is_null(values: Column) -> Column:
    if pa.types.is_floating(values.type):
        return pc.is_null(values, nan_is_null=True)
    return pc.is_null(values)


def _valid(values: Column) -> Column:
    return pc.invert(_is_null(values))


def _as_float(column: str, values: Column) -> Column:
    try:
        return pc.cast(values, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(
            f"column {column!r} has values that are not numbers ({values.type}): min/max need numeric values"
        ) from None


def _value_set(rule: Rule, kind: pa.DataType) -> pa.Array:
    try:
        return pa.array(list(rule.allowed)).cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise SchemaError(
            f"expectation `in` on column {rule.column!r} cannot be compared with its type {kind}",
            [f"allowed values {list(rule.allowed)[:10]} do not convert to {kind}"],
        ) from None


def row_rules(expectations: Mapping[str, Expectation]) -> list[Rule]:
    """Every row rule of the expectations, in config order."""
    rules = []
    for column, exp in expectations.items():
        if exp.not_null:
            rules.append(Rule(column, "not_null", exp.severity))
        if exp.min is not None:
            rules.append(Rule(column, "min", exp.severity, bound=exp.min))
        if exp.max is not None:
            rules.append(Rule(column, "max", exp.severity, bound=exp.max))
        if exp.in_ is not None:
            rules.append(Rule(column, "in", exp.severity, allowed=tuple(exp.in_)))
    return rules


def null_count(values: Column) -> int:
    """Nulls plus NaN in `values`."""
    return int(pc.sum(_is_null(values).cast(pa.int64())).as_py() or 0)


def check_columns(schema: pa.Schema, expectations: Mapping[str, Expectation], where: str) -> None:
    """SchemaError naming each expectation column missing from `schema` or of a type its rules cannot use."""
    problems = []
    for column, exp in expectations.items():
        if column not in schema.names:
            problems.append(f"expectation column {column!r} is not in {where}")
            continue
        kind = schema.field(column).type
        kind = kind.value_type if pa.types.is_dictionary(kind) else kind
        usable = (
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_decimal(kind)
            or pa.types.is_boolean(kind)
            or pa.types.is_null(kind)
            or pa.types.is_string(kind)  # numbers as text: checked value by value
            or pa.types.is_large_string(kind)
        )
        if (exp.min is not None or exp.max is not None) and not usable:
            problems.append(f"{column!r}: min/max need a numeric column, found {kind}")
    if problems:
        raise SchemaError(f"expectations do not fit {where} (columns: {schema.names})", problems)


def _examples(values: Column, mask: np.ndarray, ids: Column | None) -> list[str]:
    rows = np.flatnonzero(mask)[:MAX_EXAMPLES]
    picked = pc.take(values, pa.array(rows)).to_pylist()
    labels = pc.take(ids, pa.array(rows)).to_pylist() if ids is not None else [None] * len(rows)
    return [repr(v) + (f" (id {i})" if i is not None else "") for v, i in zip(picked, labels, strict=True)]


def evaluate(
    table: pa.Table, expectations: Mapping[str, Expectation], entity_id: str | None
) -> dict[str, Any]:
    """Every rule's result on `table`: rows that broke it, with examples; null rates against their limit."""
    ids = table.column(entity_id) if entity_id and entity_id in table.column_names else None
    results = []
    for rule in row_rules(expectations):
        values = table.column(rule.column)
        mask = rule.broken(values)
        broken = int(mask.sum())
        results.append(
            {
                "column": rule.column,
                "rule": rule.label,
                "severity": rule.severity,
                "rows": broken,
                "examples": _examples(values, mask, ids) if broken else [],
            }
        )
    for column, exp in expectations.items():
        if exp.max_null_rate is None:
            continue
        nulls = null_count(table.column(column))
        rate = nulls / table.num_rows if table.num_rows else 0.0
        results.append(
            {
                "column": column,
                "rule": f"max_null_rate {_fmt(exp.max_null_rate)}",
                "severity": exp.severity,
                "rows": nulls if rate > exp.max_null_rate else 0,
                "null_rate": rate,
                "examples": [],
            }
        )
    return {"rows": table.num_rows, "results": results}


def _line(result: dict[str, Any], total: int) -> str:
    head = f"{result['column']}: {result['rule']}"
    if "null_rate" in result:
        return f"{head}: null rate {result['null_rate']:.4g} ({result['rows']:,} of {total:,} rows)"
    return f"{head}: {result['rows']:,} of {total:,} rows, e.g. {', '.join(result['examples'])}"


def check_training_data(table: pa.Table, spec: ModelSpec, dataset: str) -> dict[str, Any]:
    """Check `spec.expectations` on the training `table`; raise DataError if any hard rule is broken.

    Returns the report for the model card (every rule, with the rows that broke it).
    """
    if not spec.expectations:
        return {"rows": table.num_rows, "results": []}
    check_columns(table.schema, spec.expectations, f"dataset {dataset}")
    report = evaluate(table, spec.expectations, spec.entity_id)
    broken = [r for r in report["results"] if r["rows"]]
    hard = [r for r in broken if r["severity"] == "hard"]
    for result in broken:
        if result["severity"] == "warn":
            log.warning("training data %s (warn): %s", dataset, _line(result, table.num_rows))
    if hard:
        lines = "".join(f"\n  - {_line(r, table.num_rows)}" for r in hard)
        raise DataError(
            f"training data {dataset} breaks {len(hard)} hard expectation(s)"
            f" ({table.num_rows:,} rows checked); fix the data or the expectations:{lines}"
        )
    return report
