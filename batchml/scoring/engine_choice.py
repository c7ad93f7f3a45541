"""Which engine scores a model: exactness checked at training, the choice made at scoring, budgets measured.

At training, `check_engines` compiles the engines the config asks for and compares their predictions on the
held-out rows with LightGBM's; the card records, per engine, whether it is exact, max |Δ|, the share of rows
that differ, compile seconds and single-thread rows/s, or why it declined. `choose` reads that record at
scoring: `auto` takes the fastest engine installed here whose max |Δ| is within the tolerance, else LightGBM
with a logged reason; a named engine that cannot be used is an error that says why. `measure_budget` gives
what the budget gate checks: model bytes, p99 single-row latency and batch rows/s with the chosen engine.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from batchml.config import ScoringConfig
from batchml.data.datasets import DatasetVersion, iter_batches
from batchml.errors import ConfigError
from batchml.models.features import Feature, encode
from batchml.models.registry import ModelVersion, RegistryReader
from batchml.scoring.engines import (
    COMPILED,
    LIGHTGBM,
    Engine,
    LightGBMEngine,
    compiled,
    engine_version,
    unavailable,
)
from batchml.store.storage import Storage

if TYPE_CHECKING:
    import lightgbm as lgb

    from batchml.models.training import TrainResult

log = logging.getLogger(__name__)

#: Rows per throughput measurement (the held-out rows repeated up to this many), and single-row calls timed.
THROUGHPUT_ROWS = 50_000
LATENCY_CALLS = 200
#: Rows of the dataset a registered booster's engines are checked on (it has no held-out split).
REGISTERED_CHECK_ROWS = 20_000


def requested(configured: str) -> tuple[str, ...]:
    """The compiled engines a configured `engine` asks to check."""
    if configured == "auto":
        return COMPILED
    return () if configured == LIGHTGBM else (configured,)


def _rows_per_s(engine: Engine, matrix: np.ndarray, threads: int) -> float:
    """Best of three batch predictions of `matrix` repeated to `THROUGHPUT_ROWS` rows."""
    rows = np.resize(matrix, (max(len(matrix), THROUGHPUT_ROWS), matrix.shape[1])) if len(matrix) else matrix
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        engine.predict(rows, threads)
        best = min(best, time.perf_counter() - started)
    return round(len(rows) / max(best, 1e-9), 1)


def _compare(predicted: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    both_nan = np.isnan(predicted) & np.isnan(reference)
    differ = (predicted != reference) & ~both_nan
    by_row = differ.any(axis=1) if differ.ndim == 2 else differ
    gap = np.where(both_nan, 0.0, np.abs(predicted - reference))
    worst = float(np.max(gap)) if gap.size else 0.0
    return {
        "exact": not bool(differ.any()),
        "max_abs_diff": worst if np.isfinite(worst) else None,
        "differing_share": float(by_row.mean()) if len(by_row) else 0.0,
        "rows_checked": len(by_row),
    }


def _check(name: str, model_text: bytes, sha256: str, matrix: np.ndarray, reference: np.ndarray) -> dict:
    why = unavailable(name)
    if why is not None:
        return {"declined": why}
    try:
        engine, entry = compiled(name, model_text, sha256)
        predicted = engine.predict(matrix, 1)
    except Exception as exc:  # an engine that cannot take this model declines; LightGBM still scores it
        log.warning("engine %s declined model %s…: %s", name, sha256[:12], exc)
        return {"declined": f"{type(exc).__name__}: {exc}"}
    if predicted.shape != reference.shape:
        return {"declined": f"predicts shape {predicted.shape}, LightGBM {reference.shape}"}
    return {
        "version": engine.version,
        **_compare(predicted, reference),
        "compile_seconds": entry.get("compile_seconds"),
        "rows_per_s": _rows_per_s(engine, matrix, 1),
    }


def check_engines(
    booster: lgb.Booster, model_text: bytes, sha256: str, matrix: np.ndarray, configured: str
) -> dict[str, dict[str, Any]]:
    """Per engine the config asks for (plus lightgbm, the reference): its exactness on `matrix` (the
    held-out rows) against LightGBM, compile seconds and single-thread rows/s, or why it declined."""
    lightgbm = LightGBMEngine(booster)
    reference = lightgbm.predict(matrix, 1)
    report: dict[str, dict[str, Any]] = {
        LIGHTGBM: {"version": lightgbm.version, **_compare(reference, reference)},
    }
    if not requested(configured):
        return report
    report[LIGHTGBM]["rows_per_s"] = _rows_per_s(lightgbm, matrix, 1)
    for name in requested(configured):
        report[name] = _check(name, model_text, sha256, matrix, reference)
    return report


def _package_part(version: str) -> str:
    return version.split("+cpu=")[0]  # a check on one CPU model holds on another: same code, same rounding


def refusal(name: str, record: dict[str, Any] | None, tolerance: float) -> str | None:
    """Why engine `name` may not score a model with this card record under `tolerance`, or None."""
    why = unavailable(name)
    if why is not None:
        return why
    if record is None:
        return "the model card has no exactness check for it (train the model with this engine configured)"
    if "declined" in record:
        return f"it declined the model at training: {record['declined']}"
    if _package_part(str(record.get("version"))) != _package_part(engine_version(name)):
        return f"it was checked as {record.get('version')}, but {engine_version(name)} is installed here"
    worst = record.get("max_abs_diff")
    if worst is None or worst > tolerance:
        return f"max |prediction - LightGBM's| on held-out rows is {worst}, above the tolerance {tolerance:g}"
    return None


def choose(model: ModelVersion, configured: str, tolerance: float) -> tuple[str, str | None]:
    """The engine that scores `model` here under the configured `engine`, and why auto fell back (or None).

    A named compiled engine that cannot be used raises ConfigError with the reason.
    """
    return choose_from(model.card.get("engines") or {}, configured, tolerance, model.ref)


def choose_from(
    records: dict[str, Any], configured: str, tolerance: float, ref: str
) -> tuple[str, str | None]:
    """`choose` on the engine records of a card (`check_engines`); `ref` names the model in messages."""
    if configured == LIGHTGBM:
        return LIGHTGBM, None
    usable, reasons = [], []
    for name in requested(configured):
        why = refusal(name, records.get(name), tolerance)
        if why is None:
            usable.append((float(records[name].get("rows_per_s") or 0.0), name))
        else:
            reasons.append(f"{name}: {why}")
    if usable:
        return max(usable)[1], None
    if configured != "auto":
        raise ConfigError(
            f"scoring engine {configured!r} cannot score {ref}: {reasons[0].partition(': ')[2]}; "
            'use engine = "auto" (falls back to lightgbm) or "lightgbm"'
        )
    reason = "; ".join(reasons)
    log.warning("engine auto scores %s with lightgbm: %s", ref, reason)
    return LIGHTGBM, reason


def training_checks(
    booster: lgb.Booster, matrix: np.ndarray, configured: str, tolerance: float, ref: str
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The card's `engines` (exactness of each engine asked for on the held-out `matrix`) and `budget`
    (measured with the engine that will score; LightGBM, with the reason, when that one cannot)."""
    text = booster.model_to_string().encode()  # what the registry stores and hashes
    sha256 = hashlib.sha256(text).hexdigest()
    records = check_engines(booster, text, sha256, matrix, configured)
    try:
        name, reason = choose_from(records, configured, tolerance, ref)
    except ConfigError as exc:  # scoring will refuse with this reason; the budget is LightGBM's meanwhile
        name, reason = LIGHTGBM, str(exc)
    engine: Engine = LightGBMEngine(booster) if name == LIGHTGBM else compiled(name, text, sha256)[0]
    budget = measure_budget(engine, matrix, len(text))
    return records, budget | ({"note": reason} if reason else {})


def load_engine(registry: RegistryReader, model: ModelVersion, name: str) -> tuple[lgb.Booster, Engine]:
    """The booster of `model` (reason codes always come from it) and engine `name` for its predictions,
    both from the model text checked against its sha256."""
    import lightgbm as lgb  # deferred: importing it takes seconds

    text = registry.model_text(model)
    booster = lgb.Booster(model_str=text.decode())
    if name == LIGHTGBM:
        return booster, LightGBMEngine(booster)
    engine, _ = compiled(name, text, model.model_file.sha256)
    return booster, engine


def measure_budget(engine: Engine, matrix: np.ndarray, model_bytes: int) -> dict[str, Any]:
    """What the budget gate checks, measured here with `engine` on the held-out rows: the model text's
    bytes, p99 of single-row predict (milliseconds) and batch predict rows/s on every core."""
    latencies = []
    for i in range(LATENCY_CALLS if len(matrix) else 0):
        row = matrix[i % len(matrix) : i % len(matrix) + 1]
        started = time.perf_counter()
        engine.predict(row, 1)
        latencies.append(time.perf_counter() - started)
    p99 = float(np.percentile(latencies, 99)) * 1000 if latencies else None
    return {
        "engine": engine.name,
        "engine_version": engine.version,
        "model_bytes": model_bytes,
        "row_latency_ms_p99": None if p99 is None else round(p99, 4),
        "rows_per_s": _rows_per_s(engine, matrix, 0) if len(matrix) else None,
    }


def trained_checks(
    result: TrainResult, scoring: ScoringConfig, ref: str
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """`training_checks` of a freshly trained model on its held-out rows."""
    holdout = result.holdout
    matrix = encode(holdout.table, result.features) if holdout is not None else np.empty((0, 0))
    return training_checks(result.booster, matrix, scoring.engine, scoring.tolerance, ref)


def registered_checks(
    storage: Storage,
    ref: str,
    booster: lgb.Booster,
    features: list[Feature],
    version: DatasetVersion | None,
    scoring: ScoringConfig,
) -> dict[str, Any]:
    """The card's `engines` and `budget` for a booster trained elsewhere: it has no held-out rows, so they
    are measured on the first rows of the dataset it is registered with (none given: nothing is checked,
    and `auto` scores it with lightgbm)."""
    if version is None:
        return {}
    import pyarrow as pa

    batch = next(iter_batches(storage, version, [f.name for f in features], REGISTERED_CHECK_ROWS), None)
    if batch is None:
        return {}
    matrix = encode(pa.Table.from_batches([batch]), features)
    engines, budget = training_checks(booster, matrix, scoring.engine, scoring.tolerance, ref)
    return {
        "engines": engines,
        "budget": budget,
        "engines_checked_on": f"first {len(matrix):,} rows of {version.ref}",
    }
