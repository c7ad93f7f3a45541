"""The drift reference of a model version: every row of its training dataset version, as scoring sees them.

A run that scores the model's own training data must show no drift, so the reference is like for like with a
run: the features of every row of the training dataset version (read as scoring reads them, in the model's
units) and the model's predictions on those rows (what scoring stores as `prediction`). It is never the
held-out split alone: with a time split those are the latest rows, and comparing them with a whole dataset
drifts by construction.

    {"split": "all", "dataset_version": "loans@3f2a9c", "rows": N,
     "features": {name: profile}, "predictions": {numeric profile}}

Profiles have the shape `batchml.models.profiles` writes. Two passes over the rows: the first takes the decile
edges from a seeded sample of at most `SAMPLE_ROWS` rows (predictions: the sampled rows, scored) and counts
categories exactly; the second counts every row into those edges with the counters a run's drift uses. So
the same rows counted again give the same shares, and every statistic is exactly zero.

Training stores it in the card (`card["profile"]["reference"]`); a version without it (registered with
`register_model`, or trained before references existed) gets one computed once from its card's dataset
version and stored as `monitoring/<model>/reference/v<NNNNNN>-all-rows.json`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from batchml.data import datasets
from batchml.errors import ConflictError, DataError
from batchml.models.features import Feature, encode
from batchml.models.profiles import numeric_profile
from batchml.models.registry import ModelVersion, RegistryReader
from batchml.monitoring.drift_stats import SAMPLE_ROWS, BottomKSample, CategoryAccumulator, NumericCounter
from batchml.scoring.engines import LightGBMEngine
from batchml.scoring.pipeline import predict_rows
from batchml.store.storage import Storage

if TYPE_CHECKING:
    import lightgbm as lgb

BATCH_ROWS = 131_072
Predict = Callable[[np.ndarray], np.ndarray]


def _with_counts(profile: dict[str, Any], counts: np.ndarray) -> dict[str, Any]:
    """`profile` (edges from a sample) with the exact counts and shares of every row in its bins."""
    present = int(counts.sum())
    shares = [float(c) / present for c in counts] if present else [0.0 for _ in counts]
    return {
        **profile,
        "histogram": {**profile["histogram"], "counts": [int(c) for c in counts], "shares": shares},
    }


def _sampled_profiles(
    batches: Iterable[pa.RecordBatch], features: list[Feature], sample_rows: int
) -> tuple[int, dict[str, dict[str, Any]], np.ndarray]:
    """The first pass: row count, profiles (categories exact, numbers from the sample) and the sample."""
    sampler = BottomKSample(sample_rows)
    categories = {f.name: CategoryAccumulator() for f in features if f.kind != "numeric"}
    rows, nulls = 0, np.zeros(len(features), dtype=np.int64)
    for batch in batches:
        matrix = encode(batch, features)
        rows += len(matrix)
        nulls += np.count_nonzero(np.isnan(matrix), axis=0)
        sampler.add(matrix)
        for name, accumulator in categories.items():
            accumulator.add(batch.column(name))
    sample = sampler.result(len(features))
    profiles: dict[str, dict[str, Any]] = {}
    for i, feature in enumerate(features):
        head = {"dtype": feature.dtype, "kind": feature.kind}
        if feature.kind == "numeric":
            missing = int(nulls[i])
            counted = {"count": rows, "nulls": missing, "null_rate": missing / rows if rows else 0.0}
            sampled = {**numeric_profile(sample[:, i]), "sampled_rows": len(sample)}
            profiles[feature.name] = {**head, **sampled, **counted}
        else:
            profiles[feature.name] = {**head, **categories[feature.name].profile()}
    return rows, profiles, sample


def profile_rows(
    batches: Callable[[], Iterable[pa.RecordBatch]],
    features: list[Feature],
    predict: Predict | None,
    sample_rows: int = SAMPLE_ROWS,
) -> dict[str, Any]:
    """Rows, feature profiles and (with `predict`, given the encoded `features` matrix) the prediction profile
    of the rows `batches()` yields; it is called twice and must yield the same rows both times."""
    rows, profiles, sample = _sampled_profiles(batches(), features, sample_rows)
    prediction = None
    if predict is not None and len(sample):
        prediction = {**numeric_profile(predict(sample)), "count": rows, "sampled_rows": len(sample)}
    counters = {name: NumericCounter(p["histogram"]) for name, p in profiles.items() if "histogram" in p}
    scored = NumericCounter(prediction["histogram"]) if prediction and "histogram" in prediction else None
    for batch in batches():  # the second pass: every row counted into the sampled edges
        matrix = encode(batch, features)
        for i, feature in enumerate(features):
            if (counter := counters.get(feature.name)) is not None:
                counter.add(matrix[:, i])
        if scored is not None and predict is not None:
            scored.add(predict(matrix))
    for name, counter in counters.items():
        profiles[name] = _with_counts(profiles[name], counter.counts)
    result: dict[str, Any] = {"split": "all", "rows": rows, "features": profiles}
    if prediction is not None:
        result["predictions"] = _with_counts(prediction, scored.counts) if scored else prediction
    return result


def reference_dataset(model: ModelVersion) -> str:
    """The dataset version whose rows are `model`'s reference: the one it was trained (or registered) on."""
    ref = model.card.get("dataset_version")
    if not ref:
        raise DataError(
            f"model {model.ref} has no training profile in its card and no dataset version to compute one "
            "from: register it with dataset='NAME@VERSION' (or train it with batchml) to monitor drift"
        )
    return str(ref)


def dataset_reference(storage: Storage, model: ModelVersion, booster: lgb.Booster) -> dict[str, Any]:
    """The reference of `model` (its card: features, task, classes, dataset version), scored by `booster`.

    Features missing from the dataset version are left out, and then so are the predictions (the model
    needs every input to predict).
    """
    version = datasets.get_version(storage, reference_dataset(model))
    features = [f for f in model.features if f.name in version.columns]
    columns = [f.name for f in features]

    def predict(matrix: np.ndarray) -> np.ndarray:  # the values scoring stores, by the code that stores them
        return np.asarray(predict_rows(LightGBMEngine(booster), model, matrix)[0], dtype=np.float64)

    complete = len(features) == len(model.features)
    profile = profile_rows(
        lambda: datasets.iter_batches(storage, version, columns, BATCH_ROWS),
        features,
        predict if complete else None,
    )
    return {**profile, "dataset_version": version.ref}


def training_reference(
    storage: Storage, model: str, card: dict[str, Any], booster: lgb.Booster
) -> dict[str, Any]:
    """The reference of a version about to be registered with `card`, scored by `booster` as scoring will
    score it: reloaded from its model text, the form the registry stores and scoring loads."""
    import lightgbm as lgb  # deferred: importing it takes seconds

    stored = lgb.Booster(model_str=booster.model_to_string())
    return dataset_reference(storage, ModelVersion(model, 0, card), stored)


def reference_profile(storage: Storage, model: ModelVersion) -> dict[str, Any]:
    """The card's reference, or one computed (once, then stored) from the card's dataset version."""
    stored = (model.card.get("profile") or {}).get("reference")
    if stored and stored.get("features"):
        return dict(stored)
    path = f"monitoring/{model.name}/reference/v{model.version:06d}-all-rows.json"
    if storage.exists(path):
        return dict(storage.read_json(path))
    booster = RegistryReader(storage).load_booster(model)
    profile = dataset_reference(storage, model, booster)
    with contextlib.suppress(ConflictError):  # a concurrent monitor stored the same derivation first
        storage.create_json(path, profile)
    return profile
