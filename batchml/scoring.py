"""Streaming batch scoring into immutable prediction runs.

    runs/<model>/<run_id>/<attempt>-<n>.parquet    prediction files, invisible until the manifest lists them
    runs/<model>/manifests/<run_id>.json           the run manifest; creating it commits the run

The run id is a hash of the run's content key (model version and hash, dataset version, code version,
params), so scoring the same thing twice returns the first run. Memory is bounded by the batch size, not by
the dataset: batches are read, encoded, predicted and written one at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchml.config import Expectation
from batchml.datasets import DatasetVersion, iter_batches
from batchml.errors import ConflictError, DataError, NotFoundError, SchemaError
from batchml.eventlog import now
from batchml.features import check_input_schema, encode
from batchml.lineage import actor, code_version
from batchml.names import check_name
from batchml.parts import write_parquet_parts
from batchml.prefetch import prefetch
from batchml.receipts import contributions, input_hashes, reason_codes
from batchml.registry import ModelVersion
from batchml.storage import FileEntry, Storage
from batchml.validation import QuarantineWriter, ScoringChecks

if TYPE_CHECKING:
    import lightgbm as lgb

log = logging.getLogger(__name__)

BATCH_ROWS = 131_072
ROWS_PER_FILE = 4_000_000
BINARY_THRESHOLD = 0.5
Progress = Callable[[int], None]


@dataclass(frozen=True)
class ScoringOptions:
    """What the project config adds to scoring; part of the run's content key (it changes the output)."""

    #: Top-k feature names by |contribution| stored per prediction; 0 = off.
    reason_codes: int = 0
    #: Column rules: rows breaking a hard one are quarantined, warn ones are counted.
    expectations: Mapping[str, Expectation] = field(default_factory=dict)
    #: The run fails (nothing committed) when more than this share of its rows is quarantined.
    max_quarantine_share: float = 0.01

    def key(self) -> dict[str, Any]:
        """The JSON form that enters the run key."""
        key: dict[str, Any] = {"reason_codes": self.reason_codes}
        if self.expectations:  # runs without expectations keep the ids they had before they existed
            key["expectations"] = {
                c: e.model_dump(mode="json", by_alias=True) for c, e in sorted(self.expectations.items())
            }
            key["max_quarantine_share"] = self.max_quarantine_share
        return key


_CONSTANTS = ("model", "model_version", "dataset_version", "code_version", "run_id", "scored_at")


@dataclass(frozen=True)
class PredictionRun:
    """A committed prediction run, as its manifest records it."""

    manifest: dict[str, Any]
    reused: bool = False

    @property
    def run_id(self) -> str:
        """The content-derived run id."""
        return str(self.manifest["run_id"])

    @property
    def model(self) -> str:
        """The model's name."""
        return str(self.manifest["model"])

    @property
    def rows(self) -> int:
        """How many predictions the run holds."""
        return int(self.manifest["rows"])

    @property
    def files(self) -> list[FileEntry]:
        """The run's Parquet files."""
        return [FileEntry.from_dict(f) for f in self.manifest["files"]]

    @property
    def quarantine_files(self) -> list[FileEntry]:
        """The run's quarantine Parquet files (rows that broke a hard expectation)."""
        return [FileEntry.from_dict(f) for f in self.manifest.get("quarantine_files", [])]

    @property
    def summary(self) -> dict[str, Any]:
        """Rows in, scored, quarantined (by rule), warnings, unseen/out-of-range counts ({} for old runs)."""
        return dict(self.manifest.get("summary") or {})


def run_key(
    model: ModelVersion, dataset: DatasetVersion, code: str, options: ScoringOptions | None = None
) -> dict[str, Any]:
    """The content key of scoring `dataset` with `model` by `code`: equal keys mean equal work."""
    return {
        "model": model.name,
        "model_version": model.version,
        "model_sha256": model.model_file.sha256,
        "dataset_version": dataset.ref,
        "code_version": code,
        "params": {"binary_threshold": BINARY_THRESHOLD, **(options or ScoringOptions()).key()},
    }


def run_id_of(key: dict[str, Any]) -> str:
    """The run id for a content key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _manifest_path(model: str, run_id: str) -> str:
    return f"runs/{model}/manifests/{run_id}.json"


def get_run(storage: Storage, model: str, run_id: str) -> PredictionRun:
    """A committed run of `model`; NotFoundError lists the model's runs."""
    path = _manifest_path(check_name("model", model), run_id)
    if not storage.exists(path):
        raise NotFoundError(
            f"prediction run of model {model!r}", run_id, [r.run_id for r in list_runs(storage, model)]
        )
    return PredictionRun(storage.read_json(path))


def list_runs(storage: Storage, model: str) -> list[PredictionRun]:
    """Committed runs of `model`, oldest first."""
    folder = f"runs/{check_name('model', model)}/manifests"
    runs = [
        PredictionRun(storage.read_json(f"{folder}/{n}"))
        for n in storage.list_dir(folder)
        if n.endswith(".json")
    ]
    return sorted(runs, key=lambda r: r.manifest["finished_at"])


def output_schema(entity_type: pa.DataType) -> pa.Schema:
    """Columns of every prediction file."""
    return pa.schema(
        [
            ("entity_id", entity_type),
            ("prediction", pa.float64()),
            ("predicted_class", pa.string()),
            ("model", pa.string()),
            ("model_version", pa.int64()),
            ("dataset_version", pa.string()),
            ("code_version", pa.string()),
            ("run_id", pa.string()),
            ("scored_at", pa.timestamp("us", tz="UTC")),
            ("input_hash", pa.uint64()),
            ("reasons", pa.list_(pa.string())),
            ("flags", pa.list_(pa.string())),  # unseen:<col>, out_of_range:<col>
        ]
    )


def predict_rows(
    booster: lgb.Booster, model: ModelVersion, matrix: np.ndarray
) -> tuple[np.ndarray, pa.Array]:
    """Prediction value and predicted class label per row (the one place that turns raw output into both)."""
    raw = np.asarray(booster.predict(matrix))
    classes = pa.array(model.classes, pa.string())
    if model.task == "binary":
        return raw, classes.take(pa.array((raw >= BINARY_THRESHOLD).astype(np.int64)))
    if model.task == "multiclass":
        best = raw.argmax(axis=1)
        return raw[np.arange(len(best)), best], classes.take(pa.array(best))
    return raw, pa.nulls(len(raw), pa.string())


def _encoded_batches(
    batches: Iterator[pa.RecordBatch],
    model: ModelVersion,
    entity_id: str,
    checks: ScoringChecks,
    quarantine: QuarantineWriter,
) -> Iterator[tuple[pa.Array, np.ndarray, pa.Array]]:
    """Entity ids, the model's input matrix and each row's flags, batch by batch; bad rows to quarantine."""
    features = model.features
    for batch in batches:
        ids = batch.column(entity_id)
        if ids.null_count:
            raise DataError(f"entity id column {entity_id!r} has {ids.null_count} null values in the input")
        batch, records = checks.split(batch, entity_id)
        if records is not None:
            quarantine.add(records)
        if batch.num_rows:
            matrix = encode(batch, features)
            yield batch.column(entity_id), matrix, checks.flags(batch, matrix)


def _scored_batches(
    encoded: Iterator[tuple[pa.Array, np.ndarray, pa.Array]],
    booster: lgb.Booster,
    model: ModelVersion,
    schema: pa.Schema,
    constants: dict[str, Any],
    options: ScoringOptions,
) -> Iterator[pa.RecordBatch]:
    """Output batches: ids, predictions, the run's constants, and each row's receipt (input hash, reasons)."""
    names = [f.name for f in model.features]
    for ids, matrix, flags in encoded:
        values, labels = predict_rows(booster, model, matrix)
        n = len(ids)
        columns = [ids, pa.array(values, pa.float64()), labels]
        columns += [pa.repeat(pa.scalar(constants[c], schema.field(c).type), n) for c in _CONSTANTS]
        columns.append(pa.array(input_hashes(matrix), pa.uint64()))
        if options.reason_codes:
            contrib = contributions(booster, matrix, len(model.classes))[:, :-1]
            columns.append(reason_codes(contrib, names, options.reason_codes))
        else:
            columns.append(pa.nulls(n, pa.list_(pa.string())))
        columns.append(flags)
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


def score(
    storage: Storage,
    model: ModelVersion,
    booster: lgb.Booster,
    dataset: DatasetVersion,
    *,
    options: ScoringOptions | None = None,
    progress: Progress | None = None,
) -> PredictionRun:
    """Score every row of `dataset` with `model` into a committed run (or return the existing one)."""
    options = options or ScoringOptions()
    code = code_version()
    key = run_key(model, dataset, code, options)
    run_id = run_id_of(key)
    if storage.exists(_manifest_path(model.name, run_id)):
        log.info("run %s of %s already exists: nothing to do", run_id, model.ref)
        return PredictionRun(get_run(storage, model.name, run_id).manifest, reused=True)

    entity_id = str(model.card["entity_id"])
    storage.verify(dataset.files[0])  # a damaged file fails with IntegrityError, not a Parquet error
    with storage.open_read(dataset.files[0].path) as f:
        input_schema = pq.read_schema(f)
    if entity_id not in input_schema.names:
        raise SchemaError(f"dataset {dataset.ref} has no entity id column {entity_id!r}", input_schema.names)
    check_input_schema(input_schema, model.features)
    checks = ScoringChecks(
        expectations=options.expectations,
        max_quarantine_share=options.max_quarantine_share,
        features=model.features,
        profile=model.card.get("profile") or {},
        total_rows=dataset.rows,
        model=model.name,
        run_id=run_id,
        skip=(str(model.card.get("target")),),  # labels are not needed to score
    )
    checks.check_schema(input_schema, f"dataset {dataset.ref}")
    started = now()
    schema = output_schema(input_schema.field(entity_id).type)
    scored_at = datetime.now(UTC)
    constants: dict[str, Any] = {
        "model": model.name,
        "model_version": model.version,
        "dataset_version": dataset.ref,
        "code_version": code,
        "run_id": run_id,
        "scored_at": scored_at,
    }
    columns = list(dict.fromkeys([entity_id, *(f.name for f in model.features), *checks.columns]))
    batches = iter_batches(storage, dataset, columns=columns, batch_size=BATCH_ROWS)
    prefix = f"runs/{model.name}/{run_id}/{uuid.uuid4().hex[:8]}"
    quarantine = QuarantineWriter(storage, f"{prefix}-quarantine")
    # Three overlapping stages: read + check + encode, predict, write (each releases the GIL when heavy).
    encoded = prefetch(_encoded_batches(batches, model, entity_id, checks, quarantine))
    scored = prefetch(_scored_batches(encoded, booster, model, schema, constants, options))
    rows = 0

    def count(n: int) -> None:
        nonlocal rows
        rows += n
        if progress:
            progress(n)

    try:
        files = write_parquet_parts(
            storage, prefix, scored, schema, rows_per_file=ROWS_PER_FILE, progress=count
        )
        quarantine.flush()
        if not files:
            raise DataError(
                f"dataset {dataset.ref} has no rows to score"
                + (f": all {checks.rows_in:,} rows broke hard expectations" if checks.rows_in else "")
            )
    except BaseException:
        for stage in (scored, encoded):  # stop both stages (joining their threads) before removing files
            getattr(stage, "close", lambda: None)()
        quarantine.delete()  # the prediction parts were removed by write_parquet_parts
        raise
    manifest = {
        "kind": "prediction_run",
        "run_id": run_id,
        "key": key,
        **{k: key[k] for k in ("model", "model_version", "dataset_version", "code_version")},
        "entity_id_column": entity_id,
        "task": model.task,
        "rows": rows,
        "files": [f.to_dict() for f in files],
        "quarantine_files": [f.to_dict() for f in quarantine.files],
        "summary": checks.summary(),
        "started_at": started,
        "finished_at": now(),
        "scored_at": scored_at.isoformat(),
        **actor(),
    }
    try:
        storage.create_json(_manifest_path(model.name, run_id), manifest)
    except ConflictError:  # a concurrent run of the same work won: keep theirs
        for entry in files:
            storage.delete(entry.path)
        quarantine.delete()
        return PredictionRun(get_run(storage, model.name, run_id).manifest, reused=True)
    return PredictionRun(manifest)
