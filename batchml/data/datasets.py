"""Immutable, content-hashed dataset versions.

Layout under the storage root:

    datasets/<name>/files/<uuid>.parquet     data files, invisible until a manifest lists them
    datasets/<name>/versions/<id>.json       the manifest; creating it (put-if-absent) commits the version

The version id is a hash of the schema and the data files' sha256, so equal data gets an equal id. A
snapshot of a source whose bytes were already snapshotted returns the existing version without writing.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from batchml.data.sources import Source, SourceFormat, read_source, resolve_source
from batchml.data.stats import ColumnSummary, SummaryAccumulator
from batchml.errors import ConflictError, DataError, NotFoundError
from batchml.names import check_name, parse_ref
from batchml.redact import redact_url
from batchml.store.eventlog import EventLog
from batchml.store.parts import write_parquet_parts
from batchml.store.storage import FileEntry, Storage

log = logging.getLogger(__name__)

ROWS_PER_FILE = 1_000_000
Progress = Callable[[int], None]


@dataclass(frozen=True)
class DatasetVersion:
    """One immutable version of a dataset, as its manifest records it."""

    name: str
    version: str
    created_at: str
    created_by: str
    source: str
    source_fingerprint: str
    rows: int
    schema: list[dict[str, str]]
    files: list[FileEntry]
    summary: dict[str, ColumnSummary]
    parent: str | None = None
    reused: bool = field(default=False, compare=False)

    @property
    def ref(self) -> str:
        """`name@version`, the form every command accepts."""
        return f"{self.name}@{self.version}"

    @property
    def columns(self) -> list[str]:
        """Column names in order."""
        return [c["name"] for c in self.schema]

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form."""
        return {
            "kind": "dataset_version",
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "source": self.source,
            "source_fingerprint": self.source_fingerprint,
            "rows": self.rows,
            "schema": self.schema,
            "files": [f.to_dict() for f in self.files],
            "summary": self.summary,
            "parent": self.parent,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], reused: bool = False) -> DatasetVersion:
        """Parse a manifest."""
        fields = {k: v for k, v in data.items() if k not in {"kind", "files"}}
        return cls(files=[FileEntry.from_dict(f) for f in data["files"]], reused=reused, **fields)


def _versions_dir(name: str) -> str:
    return f"datasets/{name}/versions"


def list_datasets(storage: Storage) -> list[str]:
    """Names of all datasets with at least one version."""
    return [n for n in storage.list_dir("datasets") if storage.list_dir(_versions_dir(n))]


def list_versions(storage: Storage, name: str) -> list[DatasetVersion]:
    """All versions of dataset `name`, oldest first."""
    check_name("dataset", name)
    folder = _versions_dir(name)
    found = [
        DatasetVersion.from_dict(storage.read_json(f"{folder}/{entry}"))
        for entry in storage.list_dir(folder)
        if entry.endswith(".json")
    ]
    return sorted(found, key=lambda v: (v.created_at, v.version))


def _snapshot_log(storage: Storage, name: str) -> EventLog:
    """Every snapshot of `name`, new or reused: `latest` is the version the newest one gave."""
    return EventLog(storage, f"datasets/{name}/snapshots")


def latest(storage: Storage, name: str, versions: list[DatasetVersion]) -> DatasetVersion:
    """The most recently snapshotted of `versions` (all of `name`'s, oldest first).

    Re-snapshotting a source that matches an older version makes that version the latest again, so the
    next train or score uses the data the user just pointed at. Without a snapshot record (a version
    committed by a run killed before recording it): the newest version.
    """
    newest = _snapshot_log(storage, name).newest()
    wanted = newest["version"] if newest else None
    return next((v for v in versions if v.version == wanted), versions[-1])


def get_version(storage: Storage, ref: str) -> DatasetVersion:
    """Resolve `name@version` (`latest`: the most recently snapshotted, a full id, or a unique id prefix)."""
    name, wanted = parse_ref(ref, "dataset")
    versions = list_versions(storage, name)
    if not versions:
        raise NotFoundError("dataset", name, list_datasets(storage))
    if wanted == "latest":
        return latest(storage, name, versions)
    matches = [v for v in versions if v.version.startswith(wanted)]
    if len(matches) != 1:
        raise NotFoundError(f"dataset version of {name!r}", wanted, [v.version for v in versions])
    return matches[0]


def _version_id(schema: list[dict[str, str]], files: list[FileEntry]) -> str:
    digest = hashlib.sha256(json.dumps(schema, sort_keys=True).encode())
    for entry in files:
        digest.update(entry.sha256.encode())
    return digest.hexdigest()[:12]


def _schema_json(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def snapshot(
    storage: Storage,
    name: str,
    source: str,
    *,
    file_format: SourceFormat | None = None,
    created_by: str | None = None,
    progress: Progress | None = None,
) -> DatasetVersion:
    """Snapshot `source` (file, folder, glob or URL of CSV/Parquet) as a new immutable version of `name`.

    Returns the existing version, with `reused=True`, when the same bytes or the same data were
    snapshotted before; no new data is kept in that case.
    """
    check_name("dataset", name)
    resolved = resolve_source(source, file_format, storage.options_for(source))
    fingerprint = resolved.fingerprint()
    existing = list_versions(storage, name)
    for version in existing:
        if version.source_fingerprint == fingerprint:
            log.info("dataset %s: source unchanged, reusing version %s", name, version.version)
            reused = DatasetVersion.from_dict(version.to_dict(), reused=True)
            return _recorded(storage, reused, existing, source, created_by)
    created = _write_version(storage, name, source, resolved, fingerprint, existing, created_by, progress)
    return _recorded(storage, created, existing, source, created_by)


def _recorded(
    storage: Storage, version: DatasetVersion, existing: list[DatasetVersion], source: str, actor: str | None
) -> DatasetVersion:
    """`version`, made the latest by a snapshot record (from `source`, by `actor`) unless it is already:
    re-snapshotting the source of the latest version writes nothing at all."""
    if version.reused and existing and latest(storage, version.name, existing).version == version.version:
        return version
    event = {"action": "snapshot", "version": version.version, "reused": version.reused}
    _snapshot_log(storage, version.name).append({**event, "source": redact_url(source)}, actor)
    return version


def _write_version(
    storage: Storage,
    name: str,
    source: str,
    resolved: Source,
    fingerprint: str,
    existing: list[DatasetVersion],
    created_by: str | None,
    progress: Progress | None,
) -> DatasetVersion:
    """Read `resolved` into Parquet parts and commit them as a new version (or find identical data's)."""
    schema, batches = read_source(resolved)
    summary = SummaryAccumulator()

    def summarized(stream: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in stream:
            summary.update(batch)
            yield batch

    prefix = f"datasets/{name}/files/{uuid.uuid4().hex}"
    files = write_parquet_parts(
        storage, prefix, summarized(batches), schema, rows_per_file=ROWS_PER_FILE, progress=progress
    )
    summaries = summary.result()
    row_count = sum(s["count"] for s in list(summaries.values())[:1])
    if row_count == 0:
        for entry in files:
            storage.delete(entry.path)
        raise DataError(f"source {source!r} has no rows: a dataset version needs at least one row")
    schema_json = _schema_json(schema)
    version = DatasetVersion(
        name=name,
        version=_version_id(schema_json, files),
        created_at=datetime.now(UTC).isoformat(),
        created_by=created_by or getpass.getuser(),
        source=redact_url(source),  # a signed URL's token must not live on in the record
        source_fingerprint=fingerprint,
        rows=row_count,
        schema=schema_json,
        files=files,
        summary=summaries,
        parent=latest(storage, name, existing).version if existing else None,
    )
    try:
        storage.create_json(f"{_versions_dir(name)}/{version.version}.json", version.to_dict())
    except ConflictError:
        for entry in files:  # identical data was committed already: drop our copy, keep theirs
            storage.delete(entry.path)
        return DatasetVersion.from_dict(get_version(storage, version.ref).to_dict(), reused=True)
    log.info("dataset %s: committed version %s (%d rows)", name, version.version, row_count)
    return version


def iter_batches(
    storage: Storage, version: DatasetVersion, columns: list[str] | None = None, batch_size: int = 131_072
) -> Iterator[pa.RecordBatch]:
    """Stream a version's rows (hash-checking each file before it is read)."""
    for entry in version.files:
        storage.verify(entry)
        with storage.open_read(entry.path) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)


def read_frame(storage: Storage, version: DatasetVersion, columns: list[str] | None = None) -> pl.DataFrame:
    """Load a version (or some of its columns) into memory, hash-checked."""
    batches = list(iter_batches(storage, version, columns))
    if not batches:
        return pl.DataFrame()
    return pl.from_arrow(pa.Table.from_batches(batches))  # type: ignore[return-value]


def diff_versions(old: DatasetVersion, new: DatasetVersion) -> dict[str, Any]:
    """What changed from `old` to `new`: columns added/removed/retyped, rows, and per-column summaries."""
    old_types = {c["name"]: c["type"] for c in old.schema}
    new_types = {c["name"]: c["type"] for c in new.schema}
    changed = {}
    for column in [c for c in new_types if c in old_types]:
        before, after = old.summary.get(column, {}), new.summary.get(column, {})
        delta = {
            stat: {"old": before.get(stat), "new": after.get(stat)}
            for stat in ("nulls", "min", "max", "mean")
            if before.get(stat) != after.get(stat)
        }
        if delta:
            changed[column] = delta
    return {
        "old": old.ref,
        "new": new.ref,
        "rows": {"old": old.rows, "new": new.rows, "change": new.rows - old.rows},
        "added_columns": [c for c in new_types if c not in old_types],
        "removed_columns": [c for c in old_types if c not in new_types],
        "retyped_columns": {
            c: {"old": old_types[c], "new": t}
            for c, t in new_types.items()
            if c in old_types and old_types[c] != t
        },
        "column_changes": changed,
    }
