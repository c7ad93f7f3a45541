"""ML tests and promotion gates: checks on the held-out split that decide whether a version may be promoted.

`validate` checks the `[models.X.gates]` config against the dataset before training; `run` evaluates every
configured gate (`batchml.checks.gate_checks`) on the held-out rows of a fresh `TrainResult` and returns
the gate report stored in the model card:

    {"passed": bool, "checks": [{"gate", "name", "value", "threshold", "passed", "detail"}, ...]}

A check with `passed` None was skipped (a slice too small, a single class): it is reported, and it does not
fail the gate. `Registry.promote` refuses a version whose report failed (`batchml.models.promotion`).
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batchml.checks.gate_checks import GATES, METRICS, GateContext, report
from batchml.config import ModelSpec
from batchml.errors import ConfigError
from batchml.models.features import select_feature_columns
from batchml.names import check_name

if TYPE_CHECKING:
    from batchml.models.registry import RegistryReader
    from batchml.models.training import TrainResult

log = logging.getLogger(__name__)


# -- validation (before training) ---------------------------------------------------------------------------
def _metric(task: str, metric: str, where: str) -> None:
    allowed = METRICS[task]
    if metric not in allowed:
        raise ConfigError(
            f"{where}: metric {metric!r} is not computed for a {task} model; use one of {', '.join(allowed)}"
        )


def _columns(schema: pa.Schema, names: list[str], where: str) -> None:
    for name in names:
        if name not in schema.names:
            raise ConfigError(f"{where}: column {name!r} is not in the dataset (columns: {schema.names})")


def validate(model: str, spec: ModelSpec, schema: pa.Schema) -> None:
    """Raise ConfigError, naming the value and what is allowed, for gates that cannot run on this model."""
    gates, task, where = spec.gates, spec.task, f"models.{model}.gates"
    features = select_feature_columns(schema, spec)
    for metric, bound in gates.metrics.items():
        _metric(task, metric, f"{where}.metrics")
        if bound.min is None and bound.max is None:
            raise ConfigError(f"{where}.metrics.{metric}: set min and/or max")
    if gates.slices is not None:
        _metric(task, gates.slices.metric, f"{where}.slices")
        if not gates.slices.columns and not gates.slices.bins:
            raise ConfigError(f"{where}.slices: name category `columns` and/or numeric `bins`")
        _columns(schema, [*gates.slices.columns, *gates.slices.bins], f"{where}.slices")
        for name, edges in gates.slices.bins.items():
            kind = schema.field(name).type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
                raise ConfigError(f"{where}.slices.bins: column {name!r} is {kind}, not numeric")
            if not edges or any(b <= a for a, b in itertools.pairwise(edges)):
                raise ConfigError(f"{where}.slices.bins.{name}: edges {edges} must be increasing")
    if gates.champion is not None:
        _metric(task, gates.champion.metric, f"{where}.champion")
        check_name("alias", gates.champion.alias)
    for gate, names in (
        ("invariance", gates.invariance.features if gates.invariance else []),
        ("direction", [*gates.direction.increasing, *gates.direction.decreasing] if gates.direction else []),
    ):
        unknown = [n for n in names if n not in features]
        if unknown:
            raise ConfigError(
                f"{where}.{gate}: {unknown[0]!r} is not a feature of the model; features: {features}"
            )
    if gates.direction is not None:
        if task == "multiclass":
            raise ConfigError(
                f"{where}.direction: not defined for a multiclass model; use binary or regression"
            )
        both = set(gates.direction.increasing) & set(gates.direction.decreasing)
        if both:
            raise ConfigError(f"{where}.direction: {sorted(both)[0]!r} is declared increasing and decreasing")
        for name in [*gates.direction.increasing, *gates.direction.decreasing]:
            kind = schema.field(name).type
            if name in spec.categorical or pa.types.is_string(kind) or pa.types.is_large_string(kind):
                raise ConfigError(f"{where}.direction: {name!r} is categorical; only numeric features")
    if gates.fairness is not None:
        if task != "binary":
            raise ConfigError(f"{where}.fairness: needs a binary model, this one is {task!r}")
        _columns(schema, [gates.fairness.column], f"{where}.fairness")
    if gates.flip_rate is not None:
        if task == "regression":
            raise ConfigError(
                f"{where}.flip_rate: a regression model has no decision to flip; use binary/multiclass"
            )
        check_name("alias", gates.flip_rate.alias)


def run(
    model: str,
    spec: ModelSpec,
    result: TrainResult,
    registry: RegistryReader,
    budget: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The gate report of a freshly trained `result` of `model` (its held-out rows, the current holders);
    `budget` holds what was measured for the budget gate (`batchml.scoring.engine_choice.measure_budget`)."""
    gates = spec.gates
    configured = [name for name in GATES if getattr(gates, name)]
    if not configured:
        return report([])
    if result.holdout is None:
        raise ConfigError(
            f"model {model!r} has gates configured but the training result has no held-out rows"
        )
    ctx = GateContext(
        model,
        spec.task,
        result.booster,
        result.features,
        result.classes,
        result.holdout,
        result.metrics,
        registry,
        budget or {},
    )
    checks = [c for name in configured for c in GATES[name](gates, ctx)]
    outcome = report(checks)
    log.info("gates of %s: %s (%d checks)", model, "passed" if outcome["passed"] else "FAILED", len(checks))
    return outcome
