"""Evidently reports for people: data drift and data summary of one prediction run, as HTML and JSON.

    monitoring/<model>/<run_id>/report-<id>.html    the report people open (self-contained, no network)
    monitoring/<model>/<run_id>/report-<id>.json    Evidently's snapshot (`Snapshot.loads` reads it back)
    monitoring/<model>/<run_id>/report_meta.json    what was compared and sampled; creating it commits

Reference = the rows of `batchml drift`'s reference (every row of the model version's training dataset
version), scored with that version (predictions on the training data are not stored). Current = the run's
input dataset version joined on entity id with the run's predictions. Each side is a seeded sample of at most
`sample_rows` rows, read one Parquet row group at a time (groups and files holding no sampled row are
skipped); the report says so at its top and in the snapshot's metadata. Drift is judged per column with
the methods and thresholds of the run's recorded `batchml drift` result (`batchml.report_drift`), whose
verdict, the one alerts act on, heads the report. Every file is written once (put-if-absent); rendering a
run again returns the first.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchml.config import DriftConfig
from batchml.data import datasets
from batchml.errors import ConflictError, DataError
from batchml.models.features import Feature, encode
from batchml.models.registry import ModelVersion, RegistryReader
from batchml.monitoring.drift import monitor_run
from batchml.monitoring.drift_reference import reference_dataset
from batchml.monitoring.report_render import drift_meta, evidently_drift, render_html, verdict_lines
from batchml.names import check_name
from batchml.scoring.engines import LightGBMEngine
from batchml.scoring.pipeline import predict_rows
from batchml.scoring.runs import PredictionRun, get_run
from batchml.store.storage import FileEntry, Storage

if TYPE_CHECKING:  # pandas (for Evidently) costs most of a second to import: only when rendering
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_ROWS = 50_000
DEFAULT_SEED = 7


@dataclass(frozen=True)
class ReportRef:
    """Where a run's committed report lives, and how many rows each side had and was sampled to."""

    model: str
    run_id: str
    html_uri: str
    json_uri: str
    sampled_reference_rows: int
    sampled_current_rows: int
    total_reference_rows: int
    total_current_rows: int
    created_at: str


def _folder(model: str, run_id: str) -> str:
    return f"monitoring/{check_name('model', model)}/{run_id}"


def _ref(storage: Storage, meta: dict[str, Any]) -> ReportRef:
    ref, cur = meta["reference"], meta["current"]
    return ReportRef(
        model=meta["model"],
        run_id=meta["run_id"],
        html_uri=storage.uri(meta["html"]["path"]),
        json_uri=storage.uri(meta["json"]["path"]),
        sampled_reference_rows=int(ref["sampled_rows"]),
        sampled_current_rows=int(cur["sampled_rows"]),
        total_reference_rows=int(ref["total_rows"]),
        total_current_rows=int(cur["total_rows"]),
        created_at=meta["created_at"],
    )


def load_report(storage: Storage, model: str, run_id: str) -> ReportRef | None:
    """The committed report of run `run_id` of `model`, or None if none was rendered yet."""
    path = f"{_folder(model, run_id)}/report_meta.json"
    return _ref(storage, storage.read_json(path)) if storage.exists(path) else None


def report_rows(storage: Storage) -> list[dict[str, Any]]:
    """One row per committed report: the `reports` table of the serving database."""
    rows = []
    for model in storage.list_dir("monitoring"):
        for run_id in storage.list_dir(f"monitoring/{model}"):
            path = f"monitoring/{model}/{run_id}/report_meta.json"
            if not storage.exists(path):
                continue
            meta = storage.read_json(path)
            rows.append(
                {
                    **asdict(_ref(storage, meta)),
                    "model_version": meta["model_version"],
                    "reference_dataset": meta["reference"]["dataset_version"],
                    "current_dataset": meta["current"]["dataset_version"],
                    "seed": meta["seed"],
                    "note": meta["note"],
                    "created_at": datetime.fromisoformat(meta["created_at"]),
                }
            )
    return rows


REPORTS_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("run_id", pa.string()),
        ("model_version", pa.int64()),
        ("html_uri", pa.string()),
        ("json_uri", pa.string()),
        ("reference_dataset", pa.string()),
        ("current_dataset", pa.string()),
        ("sampled_reference_rows", pa.int64()),
        ("sampled_current_rows", pa.int64()),
        ("total_reference_rows", pa.int64()),
        ("total_current_rows", pa.int64()),
        ("seed", pa.int64()),
        ("note", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


def catalog_tables(storage: Storage) -> dict[str, pa.Table]:
    """The `reports` table of the serving database, from the committed `report_meta.json` files."""
    return {"reports": pa.Table.from_pylist(report_rows(storage), schema=REPORTS_SCHEMA)}


def _sample_positions(total: int, limit: int, seed: int, side: int) -> np.ndarray | None:
    """Sorted positions of a seeded sample of `limit` of `total` rows, or None to keep every row.

    Each side draws from its own stream of `seed`, so equal data on both sides is not sampled identically.
    """
    if total <= limit:
        return None
    return np.sort(np.random.default_rng([seed, side]).choice(total, size=limit, replace=False))


def _sample_files(
    storage: Storage, files: list[FileEntry], columns: list[str], picks: np.ndarray | None
) -> pa.Table | None:
    """Rows at positions `picks` (all if None) of `files`, reading only the row groups that hold them."""
    parts: list[pa.Table] = []
    offset = 0
    for entry in files:
        with storage.open_read(entry.path) as f:
            reader = pq.ParquetFile(f)
            sizes = [reader.metadata.row_group(g).num_rows for g in range(reader.num_row_groups)]
            bounds = np.cumsum([offset, *sizes])
            counts = np.diff(np.searchsorted(picks, bounds)) if picks is not None else np.array(sizes)
            if counts.sum():
                storage.verify(entry)  # hash-check what we read from
            for group in np.flatnonzero(counts):
                table = reader.read_row_group(int(group), columns=columns)
                if picks is not None:
                    lo, hi = np.searchsorted(picks, bounds[group : group + 2])
                    table = table.take(pa.array(picks[lo:hi] - bounds[group]))
                parts.append(table)
            offset = int(bounds[-1])
    return pa.concat_tables(parts) if parts else None


def _column_names(features: list[Feature]) -> tuple[str, str]:
    """Names for the prediction and predicted-class columns that no feature uses."""
    taken = {f.name for f in features}
    pred, label = "prediction", "predicted_class"
    while pred in taken or label in taken:
        pred, label = f"_{pred}", f"_{label}"
    return pred, label


def _frame(model: ModelVersion, table: pa.Table, values: np.ndarray, labels: pa.Array | None) -> pd.DataFrame:
    """Evidently's input: numeric features as the model sees them, categories as text, the prediction."""
    features = model.features
    matrix = encode(table, features)
    pred, label = _column_names(features)
    data: dict[str, Any] = {pred: np.asarray(values, dtype=np.float64)}  # first: on the drift table's page 1
    if labels is not None and model.task != "regression":
        data[label] = labels.cast(pa.string()).to_pandas()
    for i, feature in enumerate(features):
        if feature.kind == "numeric":
            data[feature.name] = matrix[:, i]
        else:
            data[feature.name] = table.column(feature.name).cast(pa.string()).to_pandas()
    import pandas as pd

    return pd.DataFrame(data)


def _describe(side: str, what: str, sampled: int, total: int, seed: int) -> str:
    if sampled >= total:
        return f"{side}: {what}, all {total:,} rows."
    return f"{side}: {what}, a seeded random sample of {sampled:,} of {total:,} rows (seed {seed})."


def _reference_frame(
    storage: Storage,
    registry: RegistryReader,
    version: ModelVersion,
    reference: datasets.DatasetVersion,
    sample_rows: int,
    seed: int,
) -> pd.DataFrame:
    """A sample of the training data with the model version's predictions on it."""
    picks = _sample_positions(reference.rows, sample_rows, seed, 0)
    table = _sample_files(storage, reference.files, [f.name for f in version.features], picks)
    if table is None:
        raise DataError(f"reference dataset {reference.ref} has no rows: nothing to compare against")
    engine = LightGBMEngine(registry.load_booster(version))
    values, labels = predict_rows(engine, version, encode(table, version.features))
    return _frame(version, table, values, labels)


def _current_frame(
    storage: Storage,
    version: ModelVersion,
    run: PredictionRun,
    current: datasets.DatasetVersion,
    sample_rows: int,
    seed: int,
) -> pd.DataFrame:
    """A sample of the run's predictions joined on entity id with the rows of its input they scored."""
    picks = _sample_positions(run.rows, sample_rows, seed, 1)
    picked = _sample_files(storage, run.files, ["entity_id", "prediction", "predicted_class"], picks)
    if picked is None:
        raise DataError(f"run {run.run_id} of {run.model!r} has no predictions: nothing to report")
    entity = str(run.manifest.get("entity_id_column") or version.card["entity_id"])
    ids = picked.column("entity_id")
    columns = [entity, *(f.name for f in version.features)]
    rows = pa.Table.from_batches(  # streamed: only the sampled entities are kept
        [
            batch.filter(pc.is_in(batch.column(entity), value_set=ids))
            for batch in datasets.iter_batches(storage, current, columns=columns)
        ]
    )
    found = pc.index_in(ids, value_set=rows.column(entity))  # first match per id: a join without duplicates
    keep = pc.is_valid(found)
    picked = picked.filter(keep)
    labels = picked.column("predicted_class").combine_chunks()
    return _frame(version, rows.take(found.filter(keep)), picked.column("prediction").to_numpy(), labels)


def render_run_report(
    storage: Storage,
    model: str,
    run_id: str,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    seed: int = DEFAULT_SEED,
    config: DriftConfig | None = None,
) -> ReportRef:
    """Render (once) the Evidently drift + summary report of prediction run `run_id` of `model`.

    The run's drift is judged as its recorded `batchml drift` result did (computed and recorded first, with
    `config`, if it is not yet). Returns the existing report if the run has one (also when a concurrent
    render commits first); a render that dies midway leaves only unreferenced files, which the next render
    ignores. NotFoundError if the run does not exist.
    """
    existing = load_report(storage, model, run_id)
    if existing is not None:
        return existing
    if sample_rows < 1:
        raise DataError(f"sample_rows {sample_rows} is invalid: use a positive number of rows")
    run = get_run(storage, model, run_id)
    folder = _folder(model, run_id)
    attempt = uuid.uuid4().hex[:8]  # fresh names: files are invisible until report_meta.json lists them
    paths = {kind: f"{folder}/report-{attempt}.{kind}" for kind in ("html", "json")}
    registry = RegistryReader(storage)
    version = registry.get(model, run.manifest["model_version"])
    drift = monitor_run(storage, model, run_id, config)
    reference = datasets.get_version(storage, reference_dataset(version))
    current = datasets.get_version(storage, str(run.manifest["dataset_version"]))
    reference_frame = _reference_frame(storage, registry, version, reference, sample_rows, seed)
    current_frame = _current_frame(storage, version, run, current, sample_rows, seed)
    tests = evidently_drift(drift, version.features, _column_names(version.features)[0])
    trained = f"training data {reference.ref} of {version.ref}, scored by it"
    lines = [
        *verdict_lines(drift, tests),
        _describe("Reference", trained, len(reference_frame), reference.rows, seed),
        _describe("Current", f"run {run_id} on {current.ref}", len(current_frame), run.rows, seed),
        f"Sample limit: {sample_rows:,} rows per side. Numeric features as the model encodes them.",
    ]
    title = f"batchml report: {version.ref}, prediction run {run_id}"
    created_at = datetime.now(UTC)
    html_text, snapshot_json = render_html(reference_frame, current_frame, title, lines, created_at, tests)
    html_bytes, json_bytes = html_text.encode(), snapshot_json.encode()
    entries = {
        kind: FileEntry(paths[kind], hashlib.sha256(data).hexdigest(), len(data))
        for kind, data in (("html", html_bytes), ("json", json_bytes))
    }
    meta = {
        "kind": "evidently_report",
        "model": model,
        "run_id": run_id,
        "model_version": version.version,
        "reference": {
            "dataset_version": reference.ref,
            "sampled_rows": len(reference_frame),
            "total_rows": reference.rows,
        },
        "current": {
            "dataset_version": current.ref,
            "sampled_rows": len(current_frame),
            "total_rows": run.rows,
        },
        "sample_rows": sample_rows,
        "seed": seed,
        "drift": drift_meta(drift.summary, tests),
        "note": " ".join(lines),
        "html": entries["html"].to_dict(),
        "json": entries["json"].to_dict(),
        "created_at": created_at.isoformat(),
    }
    try:
        for kind, data in (("html", html_bytes), ("json", json_bytes)):
            storage.write_new(paths[kind], data)
        storage.create_json(f"{folder}/report_meta.json", meta)
    except BaseException as exc:
        for path in paths.values():  # ours and referenced by nothing: leave no half-written report behind
            storage.delete(path)
        if isinstance(exc, ConflictError):  # a concurrent render committed first: theirs is the report
            winner = load_report(storage, model, run_id)
            if winner is not None:
                return winner
        raise
    log.info("report of run %s of %s: %s", run_id, model, storage.uri(paths["html"]))
    return _ref(storage, meta)
