"""The scoring pipeline shared by a whole run and by one partition of a run.

    read ──▶ check + encode (1 thread) ──▶ predict + receipts (several threads) ──▶ write parts (caller)
                                                                  content checksum (1 thread) ◀──┘

Batches are checked against the expectations (bad rows to quarantine), encoded into the model's input
matrix, predicted with their receipts (input hash, reason codes, flags) and written as Parquet parts that
no manifest references yet. Memory is bounded by a few batches per stage, whatever the dataset's size.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchml.checks.entity_ids import DuplicateIds, find_duplicates
from batchml.checks.validation import QuarantineWriter, ScoringChecks
from batchml.data.datasets import DatasetVersion
from batchml.errors import SchemaError
from batchml.models.features import Feature, check_input_schema, encode
from batchml.models.registry import ModelVersion
from batchml.scoring.engines import Engine, LightGBMEngine
from batchml.scoring.prefetch import ordered_map, prefetch
from batchml.scoring.reason_rows import ReasonPlan
from batchml.scoring.receipts import REASONS, contributions, input_hashes, reason_codes
from batchml.scoring.run_checksum import StreamingChecksum
from batchml.scoring.telemetry import StageClock, telemetry
from batchml.store.parts import write_parquet_parts
from batchml.store.storage import FileEntry, Storage

if TYPE_CHECKING:
    import lightgbm as lgb

BATCH_ROWS = 131_072
ROWS_PER_FILE = 4_000_000
BINARY_THRESHOLD = 0.5
#: Batches predicted at once. Several single-threaded calls keep every core busy while the reading and
#: writing stages take turns on them; one call spread over all cores waits for its slowest thread.
MAX_PREDICT_WORKERS = 4
Progress = Callable[[int], None]
#: A batch ready to predict: entity ids, input matrix, flags, input hashes (None: not computed yet).
Encoded = tuple[pa.Array, np.ndarray, pa.Array, pa.Array | None]


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
            ("reasons", REASONS),  # [{feature, contribution}], largest |contribution| first
            ("flags", pa.list_(pa.string())),  # unseen:<col>, other:<col>, out_of_range:<col>
        ]
    )


_STAMP_COLUMNS = ("model", "model_version", "dataset_version", "code_version", "run_id", "scored_at")
#: Columns with few distinct values; ids, predictions and input hashes are (nearly) unique, so dictionary
#: encoding them is work the writer throws away (writing a run ~40% faster, and smaller, without it).
_DICTIONARY_COLUMNS = ["predicted_class", *_STAMP_COLUMNS, "reasons.list.element.feature", "flags"]


def predict_rows(
    engine: Engine, model: ModelVersion, matrix: np.ndarray, threads: int = 0
) -> tuple[np.ndarray, pa.Array]:
    """Prediction value and predicted class label per row (the one place that turns raw output into both).

    `threads` is the engine's threads for this call (0: its default, all cores).
    """
    raw = engine.predict(matrix, threads)
    classes = pa.array(model.classes, pa.string())
    if model.task == "binary":
        return raw, classes.take(pa.array((raw >= BINARY_THRESHOLD).astype(np.int64)))
    if model.task == "multiclass":
        best = raw.argmax(axis=1)
        return raw[np.arange(len(best)), best], classes.take(pa.array(best))
    return raw, pa.nulls(len(raw), pa.string())


def predict_plan() -> tuple[int, int]:
    """(batches predicted at once, engine threads per call) for the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(cores, MAX_PREDICT_WORKERS))
    return workers, max(1, cores // workers)


@dataclass(frozen=True)
class ScoringInput:
    """What scoring reads from a dataset version, after its schema was checked against the model."""

    entity_id: str
    columns: list[str]
    schema: pa.Schema  # of the prediction files


def check_input(
    storage: Storage,
    model: ModelVersion,
    dataset: DatasetVersion,
    entry: FileEntry,
    checks: ScoringChecks,
    duplicates: DuplicateIds | None = None,
) -> ScoringInput:
    """Check the schema of `entry` (a file of `dataset`) before any output: entity id, features, rules; and
    find the entity ids that repeat anywhere in `dataset` (all their copies will be quarantined), unless
    `duplicates` already holds them (several versions scored from one read)."""
    entity_id = str(model.card["entity_id"])
    storage.verify(entry)  # a damaged file fails with IntegrityError, not a Parquet error
    with storage.open_read(entry.path) as f:
        input_schema = pq.read_schema(f)
    if entity_id not in input_schema.names:
        raise SchemaError(f"dataset {dataset.ref} has no entity id column {entity_id!r}", input_schema.names)
    check_input_schema(input_schema, model.features)
    checks.check_schema(input_schema, f"dataset {dataset.ref}")
    if duplicates is None:
        duplicates = find_duplicates(storage, dataset, entity_id)
    checks.quarantine_duplicates(duplicates)
    columns = list(dict.fromkeys([entity_id, *(f.name for f in model.features), *checks.columns]))
    return ScoringInput(entity_id, columns, output_schema(input_schema.field(entity_id).type))


class SharedBatch:
    """One batch read once for several scorers (shadow versions): each distinct encoding is computed once.

    Scorers whose `encoding_key` is equal keep the same rows (same rules and entity id) and encode them the
    same way (same features), so the first to ask computes the matrix and its input hashes, and the others
    reuse both.
    """

    def __init__(self, batch: pa.RecordBatch) -> None:
        self.batch = batch
        self._lock = threading.Lock()
        self._encoded: dict[str, tuple[np.ndarray, pa.Array]] = {}

    def encoded(self, key: str, kept: pa.RecordBatch, features: list[Feature]) -> tuple[np.ndarray, pa.Array]:
        """The matrix of `kept` (this batch's rows that pass the checks) for `key`, and its input hashes."""
        with self._lock:
            if key not in self._encoded:
                # Shared between scorers; the predict stage only reads it (engines copy what they convert).
                matrix = encode(kept, features)
                self._encoded[key] = matrix, pa.array(input_hashes(matrix), pa.uint64())
            return self._encoded[key]


def _encoded_batches(
    batches: Iterator[pa.RecordBatch | SharedBatch],
    model: ModelVersion,
    entity_id: str,
    checks: ScoringChecks,
    quarantine: QuarantineWriter,
    clock: StageClock,
    encoding_key: str | None = None,
) -> Iterator[Encoded]:
    """Entity ids, the model's input matrix, each row's flags (and input hashes, when shared), batch by
    batch; bad rows to quarantine."""
    features = model.features
    for item in clock.iterate("read", batches):
        with clock.timed("encode"):
            batch = item.batch if isinstance(item, SharedBatch) else item
            batch, records = checks.split(batch, entity_id)
            if records is not None:
                quarantine.add(records)
            if not batch.num_rows:
                continue
            hashes = None  # computed by the predict stage, unless shared
            if isinstance(item, SharedBatch) and encoding_key is not None:
                matrix, hashes = item.encoded(encoding_key, batch, features)
            else:
                matrix = encode(batch, features)
            encoded = batch.column(entity_id), matrix, checks.flags(batch, matrix), hashes
        yield encoded


class _BatchScorer:
    """Turns one encoded batch into an output batch; safe to call from several threads at once."""

    def __init__(
        self,
        booster: lgb.Booster,
        engine: Engine,
        model: ModelVersion,
        schema: pa.Schema,
        stamp: dict[str, Any],
        reasons: ReasonPlan,
        threads: int,
    ) -> None:
        self.booster, self.engine, self.model, self.schema = booster, engine, model, schema
        self.reasons, self.threads = reasons, threads
        self.names = [f.name for f in model.features]
        # Built once and sliced per batch: repeating a string per row costs more than predicting it.
        self.stamp = [
            pa.repeat(pa.scalar(stamp[c], schema.field(c).type), BATCH_ROWS) for c in _STAMP_COLUMNS
        ]

    def __call__(self, encoded: Encoded) -> pa.RecordBatch:
        ids, matrix, flags, hashes = encoded
        n = len(ids)
        values, labels = predict_rows(self.engine, self.model, matrix, self.threads)
        columns = [ids, pa.array(values, pa.float64()), labels]
        columns += [c.slice(0, n) if n <= len(c) else pa.repeat(c[0], n) for c in self.stamp]
        columns.append(pa.array(input_hashes(matrix), pa.uint64()) if hashes is None else hashes)
        selected = self.reasons.selected(values, flags) if self.reasons.top else None
        if selected is not None and selected.any():  # contributions only for the rows that get reasons
            rows = matrix if selected.all() else matrix[selected]
            contrib = contributions(self.booster, rows, len(self.model.classes), self.threads)[:, :-1]
            columns.append(reason_codes(contrib, self.names, self.reasons.top, selected))
        else:
            columns.append(pa.nulls(n, REASONS))
        columns.append(flags)
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)


class IdOrder:
    """Whether the entity ids of the batches tapped, in the order written, ascend (equal ids allowed) as
    strings compare: the order a serving table sorts them in, so a publish can skip the sort."""

    def __init__(self) -> None:
        self.ascending: bool | None = True  # None: ids that are not strings (the table sorts their text)
        self._last: str | None = None

    def tap(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """`batches` unchanged, each one's ids checked against the order so far."""
        for batch in batches:
            if self.ascending and batch.num_rows:
                self._check(batch.column("entity_id"))
            yield batch

    def _check(self, ids: pa.Array) -> None:
        if (not pa.types.is_string(ids.type) and not pa.types.is_large_string(ids.type)) or ids.null_count:
            self.ascending = None
            return
        n = len(ids)
        after = pc.less(ids.slice(1), ids.slice(0, n - 1))  # one comparison per neighbouring pair
        first, last = ids[0].as_py(), ids[n - 1].as_py()
        self.ascending = not pc.any(after).as_py() and (self._last is None or self._last <= first)
        self._last = last


@dataclass(frozen=True)
class ScoredParts:
    """Prediction and quarantine parts written for a run (or one partition of it), not yet committed."""

    files: list[FileEntry]
    quarantine_files: list[FileEntry]
    rows: int
    #: Busy seconds per stage, wall seconds, rows/s, peak RSS (see `batchml.scoring.telemetry`).
    telemetry: dict[str, Any] = field(default_factory=dict)
    #: The content checksum of the rows written (`run_checksum`), computed as they were; None: not known.
    checksum: dict[str, Any] | None = None
    #: Whether the files' entity ids ascend, in file order (`IdOrder`); None: not known.
    ids_ascending: bool | None = None


def score_batches(
    storage: Storage,
    prefix: str,
    batches: Iterator[pa.RecordBatch] | Iterator[SharedBatch],
    *,
    model: ModelVersion,
    booster: lgb.Booster,
    scoring: ScoringInput,
    checks: ScoringChecks,
    stamp: dict[str, Any],
    reasons: ReasonPlan,
    progress: Progress | None = None,
    engine: Engine | None = None,
    encoding_key: str | None = None,
) -> ScoredParts:
    """Check, encode, predict and write `batches` as parts under `prefix`; on any error, nothing is left.

    `stamp` holds the run's constant columns (model, model_version, dataset_version, code_version, run_id,
    scored_at); `reasons` says how many top features to store for which rows. `engine` predicts (default:
    the booster's own predict); reason codes always come from the booster. `encoding_key` (with batches
    shared by several scorers) names this scorer's encoding, so equal ones encode each batch once.
    """
    quarantine = QuarantineWriter(storage, f"{prefix}-quarantine")
    workers, threads = predict_plan()
    engine = engine or LightGBMEngine(booster)
    scorer = _BatchScorer(booster, engine, model, scoring.schema, stamp, reasons, threads)
    clock = StageClock()
    started = time.perf_counter()
    encoded = prefetch(
        _encoded_batches(batches, model, scoring.entity_id, checks, quarantine, clock, encoding_key)
    )
    scored = ordered_map(clock.wrap("predict", scorer), encoded, workers)
    waited = StageClock()  # the writer's time waiting for predictions is not writing
    checksum = StreamingChecksum()
    order = IdOrder()
    rows = 0

    def count(n: int) -> None:
        nonlocal rows
        rows += n
        if progress:
            progress(n)

    try:
        files = write_parquet_parts(
            storage,
            prefix,
            order.tap(checksum.tap(waited.iterate("write", scored))),
            scoring.schema,
            rows_per_file=ROWS_PER_FILE,
            dictionary_columns=_DICTIONARY_COLUMNS,
            progress=count,
        )
        quarantine.flush()
        written = checksum.result()
    except BaseException:
        for stage in (scored, encoded):  # stop the stages (joining their threads) before removing files
            getattr(stage, "close", lambda: None)()
        quarantine.delete()  # the prediction parts were removed by write_parquet_parts
        raise
    finally:
        checksum.close()
    wall = time.perf_counter() - started
    # The batches' buffers stay cached in Arrow's pool after they are freed: give them back to the system
    # before what follows (a publish in the same process; measured ~57 MiB of RSS at 10M rows).
    pa.default_memory_pool().release_unused()
    clock.add("write", max(0.0, wall - waited.seconds["write"]))
    # read + encode share one thread, predict has `workers`, the writer is this thread, the checksum one
    used = telemetry(clock.seconds, wall, rows, workers + 3)
    return ScoredParts(files, quarantine.files, rows, used, written, order.ascending)
