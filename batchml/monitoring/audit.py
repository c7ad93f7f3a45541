"""Tracing and re-deriving: explain one published prediction, reproduce one model version.

`explain` reads the prediction's receipt from its run, finds the entity's row in the stored dataset version
the run scored, re-encodes and re-predicts it with the stored model, and shows the feature contributions.
`reproduce` retrains a version from the dataset version, spec and parameters its card recorded and compares
the model hash. Both only read: nothing is registered or published.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from batchml.config import ModelSpec
from batchml.data import datasets
from batchml.errors import DataError, NotFoundError
from batchml.models.features import encode
from batchml.models.lineage import package_versions
from batchml.models.registry import ModelVersion, RegistryReader
from batchml.scoring.engine_choice import load_engine
from batchml.scoring.engines import COMPILED, LIGHTGBM, Engine, unavailable
from batchml.scoring.publications import PublicationLog
from batchml.scoring.receipts import contributions, input_hashes
from batchml.scoring.runs import get_run
from batchml.store.storage import FileEntry, Storage

#: Reason codes as (feature, signed contribution); None where the run stored none for the row.
Reasons = list[tuple[str, float | None]] | None


def _rows_for_entity(storage: Storage, files: list[FileEntry], column: str, entity_id: str) -> pa.Table:
    """Rows whose `column` (as text) equals `entity_id`, from hash-checked Parquet files."""
    for entry in files:
        storage.verify(entry)
    dataset = pads.dataset(
        [storage.full_path(f.path) for f in files], format="parquet", filesystem=storage.arrow_filesystem
    )
    return dataset.to_table(filter=pc.field(column).cast(pa.string()) == pa.scalar(entity_id))


def explain(
    storage: Storage, model: str, entity_id: str, run_id: str | None = None, top: int = 10
) -> dict[str, Any]:
    """The receipt of `entity_id`'s prediction in `run_id` (default: the published run), re-derived."""
    run_id = run_id or PublicationLog(storage).current(model)
    if run_id is None:
        raise NotFoundError(f"published run of model {model!r}", model, ["none: publish a run first"])
    run = get_run(storage, model, run_id)
    found = _rows_for_entity(storage, run.files, "entity_id", entity_id)
    if found.num_rows == 0:
        raise NotFoundError(f"entity id in run {run_id} of model {model!r}", entity_id)
    receipt = found.slice(0, 1).to_pylist()[0]
    registry = RegistryReader(storage)
    version = registry.get(model, receipt["model_version"])
    dataset = datasets.get_version(storage, receipt["dataset_version"])
    source = _rows_for_entity(storage, dataset.files, run.manifest["entity_id_column"], entity_id)
    if source.num_rows != 1:
        raise DataError(
            f"entity {entity_id!r} has {source.num_rows} rows in {dataset.ref}; expected exactly 1"
        )
    booster, engine, engine_note = _engine_of(registry, version, str(run.manifest["key"].get("engine", "")))
    matrix = encode(source, version.features)
    raw = engine.predict(matrix, 1)
    value = float(raw[0].max() if raw.ndim == 2 else raw[0])
    row = contributions(booster, matrix, len(version.classes))[0]
    contrib, bias = row[:-1], row[-1]
    ranked = np.argsort(-np.abs(contrib), kind="stable")  # the order scoring ranks reasons in
    order = ranked[:top]
    input_hash = int(input_hashes(matrix)[0])
    stored = _stored_reasons(receipt["reasons"])
    names = [f.name for f in version.features]
    again: Reasons = (
        None if stored is None else [(names[i], float(contrib[i])) for i in ranked[: len(stored)]]
    )
    value_matches = value == receipt["prediction"] and input_hash == receipt["input_hash"]
    return {
        "model": model,
        "entity_id": entity_id,
        "receipt": {
            **{k: receipt[k] for k in ("run_id", "model_version", "dataset_version", "code_version")},
            "prediction": receipt["prediction"],
            "predicted_class": receipt["predicted_class"],
            "input_hash": f"{receipt['input_hash']:016x}",
            "scored_at": receipt["scored_at"].isoformat(),
            "reasons": _reasons_json(stored),
        },
        "rederived": {
            "prediction": value,
            "input_hash": f"{input_hash:016x}",
            "model_sha256": version.model_file.sha256,
            "engine": engine.version,
            **({"engine_note": engine_note} if engine_note else {}),
            "reasons": _reasons_json(again),
            "matches": value_matches and _reasons_agree(stored, again),
        },
        "contributions": [
            {
                "feature": version.features[i].name,
                "value": source.column(version.features[i].name)[0].as_py(),
                "contribution": float(contrib[i]),
            }
            for i in order
        ],
        "base_value": float(bias),
    }


def _engine_of(registry: RegistryReader, version: ModelVersion, recorded: str) -> tuple[Any, Engine, str]:
    """The booster and the engine that scored the run (`recorded`, from its key: `lleaves==1.3.0+...`),
    or LightGBM with a note saying why that engine cannot re-derive here (values may then differ in the
    last bits; a bit-exact engine's never do)."""
    name = recorded.partition("==")[0]
    note = ""
    if name in COMPILED:
        why = unavailable(name)
        if why is None:
            booster, engine = load_engine(registry, version, name)
            if engine.version != recorded:
                note = f"the run was scored by {recorded}; re-derived with {engine.version}"
            return booster, engine, note
        note = f"the run was scored by {recorded}, not available here ({why}): re-derived with lightgbm"
    booster, engine = load_engine(registry, version, LIGHTGBM)
    return booster, engine, note


def _stored_reasons(found: list[Any] | None) -> Reasons:
    """A receipt's reasons as (feature, contribution); runs from before contributions stored names only."""
    if found is None:  # reasons off, or the row was not selected for them
        return None
    return [(r, None) if isinstance(r, str) else (r["feature"], r["contribution"]) for r in found]


def _reasons_json(reasons: Reasons) -> list[dict[str, Any]] | None:
    return None if reasons is None else [{"feature": f, "contribution": c} for f, c in reasons]


def _reasons_agree(stored: Reasons, again: Reasons) -> bool:
    """Same features in the same order, and the same contributions where the run stored them."""
    if stored is None or again is None:
        return stored is again
    return all(f == g and (c is None or c == d) for (f, c), (g, d) in zip(stored, again, strict=True))


def reproduce(storage: Storage, model: str, version: int | str) -> dict[str, Any]:
    """Retrain `model@version` from its recorded dataset version, spec and params; compare model hashes."""
    from batchml.models import training  # deferred: lightgbm import costs seconds

    recorded = RegistryReader(storage).get(model, version)
    card = recorded.card
    if card.get("origin") != "batchml.train" or "spec" not in card:
        raise DataError(
            f"{recorded.ref} was registered from outside batchml (origin {card.get('origin')!r}): "
            "only versions trained by `batchml train` carry the recipe to reproduce them"
        )
    dataset = datasets.get_version(storage, card["dataset_version"])
    spec = ModelSpec.from_mapping(card["spec"], f"{recorded.ref} card")
    result = training.fit(datasets.read_frame(storage, dataset).to_arrow(), spec, card["params"])
    digest = hashlib.sha256(result.booster.model_to_string().encode()).hexdigest()
    return {
        "model": recorded.ref,
        "dataset_version": dataset.ref,
        "recorded_sha256": recorded.model_file.sha256,
        "reproduced_sha256": digest,
        "identical": digest == recorded.model_file.sha256,
        "metrics_recorded": card.get("metrics", {}),
        "metrics_reproduced": result.metrics,
        "packages_recorded": card.get("packages", {}),
        "packages_now": package_versions(),
    }
