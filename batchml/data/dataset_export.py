"""Getting a dataset version back out, written to a Parquet or CSV file.

Every file is checked against the sha256 its manifest recorded before a byte of it is used, so what comes
out is exactly what was snapshotted. Rows stream through in record batches (memory does not grow with the
version), into a temporary file beside the target that is moved into place at the end: an interrupted export
leaves no half-written file, and an existing file is replaced only when asked.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchml.data.datasets import DatasetVersion, iter_batches
from batchml.errors import ConfigError
from batchml.store.storage import Storage

ExportFormat = Literal["parquet", "csv"]
SUFFIXES: dict[str, ExportFormat] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def export_format(target: Path) -> ExportFormat:
    """The format `target`'s suffix asks for; ConfigError naming the suffix and the allowed ones."""
    found = SUFFIXES.get(target.suffix.lower())
    if found is None:
        suffix = repr(target.suffix) if target.suffix else "no suffix"
        allowed = ", ".join(SUFFIXES)
        raise ConfigError(f"cannot tell the format of {str(target)!r} ({suffix}): end it in {allowed}")
    return found


def export_version(
    storage: Storage, version: DatasetVersion, target: Path, *, overwrite: bool = False
) -> int:
    """Write every row of `version` to `target` (Parquet or CSV, by suffix) and return how many."""
    fmt = export_format(target)
    if target.exists() and not overwrite:
        raise ConfigError(f"{str(target)!r} exists: choose another path, or replace it with --force")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    batches = iter_batches(storage, version)  # each file hash-checked before it is read
    first = next(batches)  # a version has at least one row
    rows = 0
    try:
        with _writer(partial, fmt, first.schema) as write:
            for batch in itertools.chain([first], batches):
                write(batch)
                rows += batch.num_rows
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return rows


@contextlib.contextmanager
def _writer(path: Path, fmt: ExportFormat, schema: pa.Schema) -> Iterator[Callable[[pa.RecordBatch], None]]:
    if fmt == "parquet":
        with pq.ParquetWriter(path, schema, compression="zstd") as parquet:
            yield parquet.write_batch
    else:
        with pacsv.CSVWriter(path, schema) as csv:
            yield csv.write_batch
