"""The gate checks: each configured gate of `GatesConfig` evaluated on a model's held-out rows.

Every gate is a function `(GatesConfig, GateContext) -> list of checks`; `batchml.checks.gates.run` calls the
configured ones and assembles the report.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchml.config import GatesConfig, Task
from batchml.errors import NotFoundError, SchemaError
from batchml.models.features import Feature, check_input_schema, encode

if TYPE_CHECKING:
    import lightgbm as lgb

    from batchml.models.registry import RegistryReader
    from batchml.models.training import HeldOut


METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auc", "logloss", "accuracy"),
    "regression": ("rmse", "mae", "r2"),
    "multiclass": ("logloss", "accuracy"),
}
LOWER_IS_BETTER = frozenset({"logloss", "rmse", "mae"})
SEED = 42
#: Held-out rows evaluated on the direction grid (a seeded sample when there are more).
DIRECTION_ROWS = 2000
DIRECTION_GRID = np.linspace(0.0, 1.0, 11)
TOLERANCE = 1e-12


def check(
    gate: str, name: str, value: Any, threshold: float | None, passed: bool | None, detail: str = ""
) -> dict[str, Any]:
    """One row of a gate report (numpy numbers become plain floats, NaN becomes None)."""
    number = None if value is None or not np.isfinite(value) else float(value)
    return {
        "gate": gate,
        "name": name,
        "value": number,
        "threshold": threshold,
        "passed": passed,
        "detail": detail,
    }


def report(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """The gate report: passed unless a check failed (skipped checks do not fail it)."""
    return {"passed": all(c["passed"] is not False for c in checks), "checks": checks}


def worse_by(metric: str, value: float, reference: float) -> float:
    """How much worse `value` is than `reference` (positive: worse), respecting the metric's direction."""
    return value - reference if metric in LOWER_IS_BETTER else reference - value


class Holder(NamedTuple):
    """The current holder of an alias, and its predictions on the held-out rows when they can be compared."""

    label: str  # "champion default_risk@1", or why there is nothing to compare
    predicted: np.ndarray | None
    verdict: bool | None = None  # when predicted is None: True (no holder yet), None (skipped)


@dataclass
class GateContext:
    """What the gates look at: the new model, its held-out rows, and the registry for the current holders."""

    model: str
    task: Task
    booster: lgb.Booster
    features: list[Feature]
    classes: list[str]
    holdout: HeldOut
    metrics: dict[str, float | None]
    registry: RegistryReader
    #: Model bytes, p99 single-row latency and rows/s measured at training (`engine_choice.measure_budget`).
    budget: dict[str, Any] = field(default_factory=dict)
    _holders: dict[str, Holder] = field(default_factory=dict)

    @cached_property
    def table(self) -> pa.Table:
        """The held-out rows."""
        return self.holdout.table

    @cached_property
    def matrix(self) -> np.ndarray:
        """The held-out rows encoded for the new model."""
        return encode(self.table, self.features)

    def column(self, name: str) -> int:
        """The matrix column of feature `name`."""
        return [f.name for f in self.features].index(name)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """The new model's predictions."""
        return np.asarray(self.booster.predict(matrix))

    def evaluate(self, y: np.ndarray, raw: np.ndarray) -> dict[str, float | None]:
        """Metrics of predictions `raw` against encoded labels `y`."""
        from batchml.models.training import evaluate  # deferred: sklearn and lightgbm take seconds to import

        return evaluate(self.task, y, raw)

    def holder(self, alias: str) -> Holder:
        """The version holding `alias` now, scored on the same held-out rows (bound by its own features)."""
        if alias not in self._holders:
            self._holders[alias] = self._holder(alias)
        return self._holders[alias]

    def _holder(self, alias: str) -> Holder:
        try:
            current = self.registry.resolve(self.model, alias=alias)
        except NotFoundError:
            return Holder(f"no {alias} to compare", None, True)
        label = f"{alias} {current.ref}"
        if current.task != self.task or current.classes != self.classes:
            why = f"{label} is a {current.task} model with classes {current.classes}"
            return Holder(f"skipped: {why}", None)
        try:
            check_input_schema(self.table.schema, current.features)
            matrix = encode(self.table, current.features)
        except SchemaError as exc:
            return Holder(f"skipped: {label} cannot score the held-out rows: {exc}", None)
        return Holder(label, np.asarray(self.registry.load_booster(current).predict(matrix)))


def decisions(task: str, raw: np.ndarray) -> np.ndarray:
    """The predicted class index per row (binary: probability >= 0.5)."""
    return raw.argmax(axis=1) if task == "multiclass" else (raw >= 0.5).astype(np.int64)


def _metric_gate(gates: GatesConfig, ctx: GateContext) -> list[dict[str, Any]]:
    checks = []
    for metric, bound in gates.metrics.items():
        value = ctx.metrics.get(metric)
        for side, threshold in (("min", bound.min), ("max", bound.max)):
            if threshold is None:
                continue
            if value is None:
                checks.append(check("metrics", f"{metric} {side}", None, threshold, False, "not computable"))
                continue
            ok = value >= threshold if side == "min" else value <= threshold
            op = (">=" if side == "min" else "<=") if ok else ("<" if side == "min" else ">")
            checks.append(
                check("metrics", f"{metric} {side}", value, threshold, ok, f"{value:.4f} {op} {threshold}")
            )
    return checks


def _slices(table: pa.Table, columns: list[str], bins: dict[str, list[float]]) -> list[tuple[str, Any]]:
    """(name, row mask) per category value of `columns` and per numeric bin of `bins` (edges e0 < e1 < ...:
    [e0, e1), ..., plus below e0, from the last edge up, and null when rows fall there)."""
    slices = []
    for name in columns:
        column = pc.fill_null(table.column(name).cast(pa.string()), "null")
        values = np.asarray(column.to_pylist(), dtype=object)
        slices += [(f"{name}={v}", values == v) for v in sorted(set(values.tolist()))]
    for name, edges in bins.items():
        x = np.asarray(pc.fill_null(table.column(name).cast(pa.float64()), np.nan), dtype=np.float64)
        inner = [(f"{name} in [{a:g}, {b:g})", (x >= a) & (x < b)) for a, b in itertools.pairwise(edges)]
        outer = [(f"{name}<{edges[0]:g}", x < edges[0]), (f"{name}>={edges[-1]:g}", x >= edges[-1])]
        slices += inner + [
            (label, mask) for label, mask in [*outer, (f"{name}=null", np.isnan(x))] if mask.any()
        ]
    return slices


def _slice_gate(gates: GatesConfig, ctx: GateContext) -> list[dict[str, Any]]:
    cfg = gates.slices
    assert cfg is not None
    metric, overall = cfg.metric, ctx.metrics.get(cfg.metric)
    checks = []
    for name, mask in _slices(ctx.table, cfg.columns, cfg.bins):
        rows = int(mask.sum())
        value = ctx.evaluate(ctx.holdout.y[mask], ctx.holdout.raw[mask]).get(metric) if rows else None
        label, about = f"{name} {metric}", f"{rows} rows; {metric} {value or 0:.4f}"
        if rows < cfg.min_rows or value is None:
            small = rows < cfg.min_rows
            why = f"{rows} rows < min_rows {cfg.min_rows}" if small else f"{metric} undefined: a single class"
            checks.append(check("slices", label, value, cfg.min_metric, None, f"skipped: too small ({why})"))
            continue
        if cfg.min_metric is None and cfg.max_gap is None:
            checks.append(check("slices", label, value, None, True, f"{about}; reported only"))
        if cfg.min_metric is not None:
            ok = worse_by(metric, value, cfg.min_metric) <= 0
            checks.append(
                check("slices", label, value, cfg.min_metric, ok, f"{about}, worst allowed {cfg.min_metric}")
            )
        if cfg.max_gap is not None and overall is not None:
            gap = worse_by(metric, value, overall)
            detail = f"{about} vs overall {overall:.4f}"
            checks.append(check("slices", f"{name} gap", gap, cfg.max_gap, gap <= cfg.max_gap, detail))
    return checks


def _champion_gate(gates: GatesConfig, ctx: GateContext) -> list[dict[str, Any]]:
    cfg = gates.champion
    assert cfg is not None
    value, name = ctx.metrics.get(cfg.metric), f"{cfg.metric} vs {cfg.alias}"
    holder = ctx.holder(cfg.alias)
    if holder.predicted is None:
        return [check("champion", name, value, None, holder.verdict, holder.label)]
    reference = ctx.evaluate(ctx.holdout.y, holder.predicted).get(cfg.metric)
    if value is None or reference is None:
        return [check("champion", name, value, None, None, f"skipped: {cfg.metric} undefined on these rows")]
    lower = cfg.metric in LOWER_IS_BETTER
    threshold = reference + cfg.margin if lower else reference - cfg.margin
    ok = value <= threshold if lower else value >= threshold
    detail = f"challenger {value:.4f} vs {holder.label} {reference:.4f} (margin {cfg.margin})"
    return [check("champion", name, value, threshold, ok, detail)]


def _invariance_gate(gates: GatesConfig, ctx: GateContext) -> list[dict[str, Any]]:
    cfg = gates.invariance
    assert cfg is not None
    checks = []
    for feature in cfg.features:
        shuffled, column = ctx.matrix.copy(), ctx.column(feature)
        shuffled[:, column] = np.random.default_rng(SEED).permutation(shuffled[:, column])
        change = float(np.mean(np.abs(ctx.predict(shuffled) - ctx.holdout.raw)))
        detail = f"mean absolute change {change:.6f} when {feature!r} is shuffled across {len(shuffled)} rows"
        checks.append(check("invariance", feature, change, cfg.epsilon, change < cfg.epsilon, detail))
    return checks


def _direction_gate(gates: GatesConfig, ctx: GateContext) -> list[dict[str, Any]]:
    cfg = gates.direction
    assert cfg is not None
    rows, limit = ctx.matrix, cfg.max_violation_share
    if len(rows) > DIRECTION_ROWS:
        rows = rows[np.sort(np.random.default_rng(SEED).choice(len(rows), DIRECTION_ROWS, replace=False))]
    train = ctx.holdout.train_table
    checks = []
    for feature, sign in [(f, 1.0) for f in cfg.increasing] + [(f, -1.0) for f in cfg.decreasing]:
        name, column = f"{feature} {'increasing' if sign > 0 else 'decreasing'}", ctx.column(feature)
        trained = encode(train.select([feature]), [ctx.features[column]])[:, 0]
        trained = trained[~np.isnan(trained)]
        grid = np.unique(np.quantile(trained, DIRECTION_GRID)) if len(trained) else trained
        if len(grid) < 2:
            checks.append(check("direction", name, None, limit, None, "skipped: constant in training"))
            continue
        stacked = np.repeat(rows, len(grid), axis=0)
        stacked[:, column] = np.tile(grid, len(rows))
        steps = np.diff(ctx.predict(stacked).reshape(len(rows), len(grid)), axis=1) * sign
        wrong = int((steps < -TOLERANCE).any(axis=1).sum())
        share = wrong / len(rows)
        detail = f"{wrong} of {len(rows)} rows move the wrong way over {len(grid)} training quantiles"
        checks.append(check("direction", name, share, limit, share <= limit, detail))
    return checks


def _gap(
    name: str, groups: np.ndarray, hits: np.ndarray, among: np.ndarray, min_rows: int, limit: float | None
) -> dict[str, Any]:
    """The largest gap in the share of `hits` among `among` rows across groups of at least `min_rows`."""
    rates, small = {}, []
    for group in sorted(set(groups.tolist())):
        size = int((groups == group).sum())
        if size < min_rows:
            small.append(f"{group} ({size} rows)")
        elif ((groups == group) & among).any():
            rates[group] = float(hits[(groups == group) & among].mean())
    note = f"; too small: {', '.join(small)}" if small else ""
    if len(rates) < 2:
        return check("fairness", name, None, limit, None, f"skipped: fewer than 2 groups large enough{note}")
    gap = max(rates.values()) - min(rates.values())
    shown = ", ".join(f"{g} {r:.4f}" for g, r in rates.items())
    return check("fairness", name, gap, limit, True if limit is None else gap <= limit, shown + note)


def _fairness_gate(gates: GatesConfig, ctx: GateContext) -> list[dict[str, Any]]:
    cfg = gates.fairness
    assert cfg is not None
    column = pc.fill_null(ctx.table.column(cfg.column).cast(pa.string()), "null")
    groups = np.asarray(column.to_pylist(), dtype=object)
    positive = decisions("binary", ctx.holdout.raw) == 1
    everyone = np.ones(len(groups), dtype=bool)
    return [
        _gap(
            f"{cfg.column} positive rate gap",
            groups,
            positive,
            everyone,
            cfg.min_rows,
            cfg.max_positive_rate_gap,
        ),
        _gap(f"{cfg.column} tpr gap", groups, positive, ctx.holdout.y == 1, cfg.min_rows, cfg.max_tpr_gap),
    ]


def _flip_rate_gate(gates: GatesConfig, ctx: GateContext) -> list[dict[str, Any]]:
    cfg = gates.flip_rate
    assert cfg is not None
    holder, name = ctx.holder(cfg.alias), f"flip rate vs {cfg.alias}"
    if holder.predicted is None:
        return [check("flip_rate", name, None, cfg.max, holder.verdict, holder.label)]
    flipped = decisions(ctx.task, ctx.holdout.raw) != decisions(ctx.task, holder.predicted)
    share = float(flipped.mean())
    detail = f"{int(flipped.sum())} of {len(flipped)} held-out decisions differ from {holder.label}"
    return [check("flip_rate", name, share, cfg.max, share <= cfg.max, detail)]


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.4g}"


def _budget_gate(gates: GatesConfig, ctx: GateContext) -> list[dict[str, Any]]:
    cfg = gates.budget
    assert cfg is not None
    measured, engine = ctx.budget, ctx.budget.get("engine", "?")
    limits = [
        ("model bytes", "model_bytes", cfg.max_model_bytes, "<=", "bytes"),
        ("row latency p99", "row_latency_ms_p99", cfg.max_row_latency_ms, "<=", "ms"),
        ("rows per second", "rows_per_s", cfg.min_rows_per_s, ">=", "rows/s"),
    ]
    checks = []
    for name, key, limit, op, unit in limits:
        if limit is None:
            continue
        value = measured.get(key)
        if value is None:
            checks.append(check("budget", name, None, limit, False, f"not measured (engine {engine})"))
            continue
        ok = value <= limit if op == "<=" else value >= limit
        shown = op if ok else {"<=": ">", ">=": "<"}[op]
        detail = (
            f"{_number(value)} {unit} {shown} {_number(limit)} {unit} with engine {engine} on this machine"
        )
        checks.append(check("budget", name, value, float(limit), ok, detail))
    return checks


GATES: dict[str, Callable[[GatesConfig, GateContext], list[dict[str, Any]]]] = {
    "metrics": _metric_gate,
    "slices": _slice_gate,
    "champion": _champion_gate,
    "invariance": _invariance_gate,
    "direction": _direction_gate,
    "fairness": _fairness_gate,
    "flip_rate": _flip_rate_gate,
    "budget": _budget_gate,
}
