"""Lookup files: a run table's rows beside the serving file, memory-mapped for in-process lookups.

Any DuckDB query costs ~0.2 ms here before it reads a row (binding, planning, scheduling: `SELECT $1` alone),
and a point lookup through a run table's ART index ~0.35-0.45 ms in all; a batch pays it per chunk of ids.
A lookup needs none of that: the rows of a run are sorted by entity id, so a binary search finds one.
For each run table of a serving file, whoever installs the file (a build or a pull) first writes two files
beside it (`sidecars`):

- `<file>.<table>.lookup-v1.keys`: the entity ids, in table order (ascending, unique), as fixed-width bytes
  (numpy `S<width>`, .npy): `np.searchsorted` finds many ids at once, in the memory-mapped file.
- `<file>.<table>.lookup-v1.rows`: the table's stored columns, in the same order, as uncompressed Arrow IPC:
  a row is a zero-copy slice of the mapped file.

Both are derived from the run table alone, and a run's rows never change (a run id names its content), so
a run kept from the previous file keeps its files (hard links: nothing is written) and a reader may use them
whichever file of the folder named them. They are written under temporary names and renamed, keys last:
a reader that finds the keys finds both whole. They share their serving file's fate (`pointer` removes a
file's sidecars with it). A table they cannot represent exactly gets none, and is read through DuckDB:
ids wider than `MAX_KEY_BYTES`, an id holding a NUL byte (numpy's fixed-width bytes drop trailing NULs), or
rows not in strictly ascending id order (a file built by another tool).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from batchml.serving.run_tables import LOOKUP_FILES_SUFFIX, STORED_COLUMNS

log = logging.getLogger(__name__)

SUFFIX = LOOKUP_FILES_SUFFIX
#: The widest entity id (UTF-8 bytes) a table's keys are written for: every key takes the widest id's bytes.
MAX_KEY_BYTES = 64
#: Rows per Arrow record batch (at least): a batch lookup takes from each batch that holds one of its ids
#: (~45 us a take of six columns), so few large batches; writing holds one in memory (~50-150 MB).
BATCH_ROWS = 1 << 20
MEMORY_LIMIT = "256MB"
_SLICE_ROWS = 1 << 16
_RUN_TABLES = """SELECT table_name FROM duckdb_tables()
    WHERE database_name = current_database() AND schema_name = 'main' AND starts_with(table_name, 'run__')
    ORDER BY table_name"""


def sidecars(serving_file: Path, table: str) -> tuple[Path, Path]:
    """The keys and rows files of run table `table` (its name, unquoted) beside `serving_file`."""
    stem = f"{serving_file.name}.{table}.{SUFFIX}"
    return serving_file.with_name(stem + ".keys"), serving_file.with_name(stem + ".rows")


def write_lookup_files(path: Path, final: Path, previous: Path | None) -> list[str]:
    """Write the lookup files of every run table in the closed serving file `path`, named for `final` (what
    `path` is installed as), linking those `previous` (the current file) has; return the tables that have
    them. The rows stream through in batches: DuckDB reads them with `MEMORY_LIMIT`."""
    con = duckdb.connect(str(path), read_only=True, config={"memory_limit": MEMORY_LIMIT})
    try:
        written = []
        for (table,) in con.execute(_RUN_TABLES).fetchall():
            targets = sidecars(final, str(table))
            kept = previous is not None and _link(sidecars(previous, str(table)), targets)
            if kept or _write(con, str(table), *targets):
                written.append(str(table))
        return written
    finally:
        con.close()


def _link(sources: tuple[Path, Path], targets: tuple[Path, Path]) -> bool:
    """Hard-link both files of a run kept from the previous file (keys last); False if it has none."""
    if not all(source.exists() for source in sources):
        return False
    for source, target in zip(sources[::-1], targets[::-1], strict=True):  # rows, then keys
        os.link(source, target)
    return True


def _write(con: duckdb.DuckDBPyConnection, table: str, keys_path: Path, rows_path: Path) -> bool:
    """Write `table`'s files (see the module docstring); False, and nothing left behind, if it cannot."""
    name = f'"{table}"'  # validated names: no quotes inside
    sizes = f"SELECT count(*), coalesce(max(strlen(entity_id)), 1) FROM {name}"  # strlen: UTF-8 bytes
    rows, width = con.execute(sizes).fetchall()[0]
    if not rows:
        return False  # nothing to find: DuckDB answers at once
    if width > MAX_KEY_BYTES:
        log.info("no lookup files for %s: ids up to %d bytes, more than %d", table, width, MAX_KEY_BYTES)
        return False
    tag = uuid.uuid4().hex
    keys_tmp, rows_tmp = (keys_path.with_name(f".tmp-{tag}-{p.name}") for p in (keys_path, rows_path))
    try:
        if not _fill(con, name, int(rows), int(width), keys_tmp, rows_tmp):
            log.warning("no lookup files for %s: its ids are not unique, ascending and free of NUL", table)
            return False
        for done in (rows_tmp, keys_tmp):
            done.chmod(0o444)  # as read-only as the serving file (`pointer.SERVING_FILE_MODE`)
        os.replace(rows_tmp, rows_path)
        os.replace(keys_tmp, keys_path)
        return True
    finally:
        for leftover in (keys_tmp, rows_tmp):
            leftover.unlink(missing_ok=True)


def _fill(con: duckdb.DuckDBPyConnection, table: str, rows: int, width: int, keys: Path, out: Path) -> bool:
    """Stream `table` into the two files; False as soon as an id breaks the order or holds a NUL."""
    ids = np.lib.format.open_memmap(keys, mode="w+", dtype=f"S{width}", shape=(rows,))
    # In table order: a plain scan keeps it (`preserve_insertion_order`), and the build inserted sorted rows.
    reader = con.sql(f"SELECT {', '.join(STORED_COLUMNS)} FROM {table}").to_arrow_reader(BATCH_ROWS)
    done, last, pending = 0, None, list[pa.RecordBatch]()
    with pa.OSFile(str(out), "wb") as sink, ipc.new_file(sink, reader.schema) as writer:
        for batch in reader:
            column = batch.column(0)
            if column.null_count or pc.any(pc.match_substring(column, "\x00")).as_py():
                return False
            chunk = _fixed_width(column, width)
            if len(chunk) and (
                (last is not None and chunk[0] <= last) or not bool(np.all(chunk[1:] > chunk[:-1]))
            ):
                return False
            ids[done : done + len(chunk)] = chunk
            done += len(chunk)
            last = chunk[-1] if len(chunk) else last
            pending.append(batch)
            if sum(b.num_rows for b in pending) >= BATCH_ROWS:
                _write_batch(writer, pending)
        _write_batch(writer, pending)
        sink.flush()
        os.fsync(sink.fileno())
    ids.flush()
    del ids
    with open(keys, "rb+") as handle:
        os.fsync(handle.fileno())
    return done == rows


def _fixed_width(column: pa.Array, width: int) -> np.ndarray:
    """`column`'s text as numpy `S<width>` bytes, straight from its Arrow buffers (pyarrow's own conversion
    makes a Python object of each value, through pandas), a slice of rows at a time to bound memory."""
    values = column.cast(pa.large_binary())  # int64 offsets, whatever string type DuckDB handed over
    _, offsets_buffer, data_buffer = values.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[values.offset : values.offset + len(values) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    out = np.zeros((len(values), width), dtype=np.uint8)
    places = np.arange(width)
    for start in range(0, len(values), _SLICE_ROWS):
        ends = offsets[start + 1 : start + _SLICE_ROWS + 1]
        starts = offsets[start : start + len(ends)]
        inside = places < (ends - starts)[:, None]
        out[start : start + _SLICE_ROWS][inside] = data[(starts[:, None] + places)[inside]]
    return out.view(f"S{width}").ravel()


def _write_batch(writer: ipc.RecordBatchFileWriter, batches: list[pa.RecordBatch]) -> None:
    """Write `batches` as one record batch (DuckDB hands ~123k rows at a time), and forget them."""
    if batches:
        writer.write_table(pa.Table.from_batches(batches).combine_chunks(), max_chunksize=None)
        batches.clear()


@dataclass(frozen=True)
class LookupFiles:
    """One run table's lookup files, mapped: find ids by binary search, take their rows without a copy."""

    keys: np.ndarray  # S<width>, ascending
    batches: list[pa.RecordBatch]
    starts: np.ndarray  # the first row of each batch, and the row count last

    @classmethod
    def open(cls, serving_file: Path, table: str) -> LookupFiles | None:
        """The files of `table` beside `serving_file`, mapped; None if it has none (or they are gone)."""
        keys_path, rows_path = sidecars(serving_file, table)
        try:
            keys = np.load(keys_path, mmap_mode="r")
            rows = ipc.open_file(pa.memory_map(str(rows_path))).read_all()
        except (FileNotFoundError, ValueError, pa.ArrowInvalid) as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("lookup files of %s unreadable, reading through DuckDB: %s", table, exc)
            return None
        if rows.num_rows != len(keys) or tuple(rows.schema.names) != STORED_COLUMNS:
            log.warning("lookup files of %s do not match each other, reading through DuckDB", table)
            return None
        batches = rows.to_batches()
        starts = np.cumsum([0, *(b.num_rows for b in batches)], dtype=np.int64)
        return cls(keys, batches, starts)

    @property
    def width(self) -> int:
        """The bytes of the widest id: no longer id is served."""
        return int(self.keys.dtype.itemsize)

    def find(self, key: str) -> pa.RecordBatch | None:
        """The stored row of `key` (one row), or None if the run does not serve it."""
        wanted = key.encode()
        if len(wanted) > self.width or b"\x00" in wanted:  # fixed-width bytes would truncate or drop them
            return None
        at = int(np.searchsorted(self.keys, wanted))
        if at == len(self.keys) or self.keys[at] != wanted:
            return None
        batch = int(np.searchsorted(self.starts, at, side="right")) - 1
        return self.batches[batch].slice(at - int(self.starts[batch]), 1)

    def take(self, keys: list[str]) -> pa.Table:
        """The stored rows of `keys` that the run serves, once each, in entity id order."""
        width = self.width
        wanted = [k for k in (key.encode() for key in keys) if len(k) <= width and b"\x00" not in k]
        asked = np.unique(np.array(wanted, dtype=self.keys.dtype))  # sorted as the rows are: by bytes
        at = np.minimum(np.searchsorted(self.keys, asked), len(self.keys) - 1)
        found = at[self.keys[at] == asked] if len(self.keys) else at[:0]
        # Each batch's share of the (ascending) rows: one take per batch that holds any.
        bounds = np.searchsorted(found, self.starts)
        parts = [
            self.batches[b].take(pa.array(found[lo:hi] - self.starts[b]))
            for b, (lo, hi) in enumerate(itertools.pairwise(bounds))
            if hi > lo
        ]
        schema = self.batches[0].schema if self.batches else None
        if not parts:
            return pa.Table.from_batches([], schema=schema) if schema else pa.table({})
        return pa.Table.from_batches(parts)


#: Mapped files while a reader's run holds them: connections to one file share one mapping, and a file
#: no reader uses any more is unmapped (a mapping keeps a collected file's disk space).
_OPENED: weakref.WeakValueDictionary[tuple[str, str], LookupFiles] = weakref.WeakValueDictionary()


def lookup_files(serving_file: str, table: str) -> LookupFiles | None:
    """`LookupFiles.open`, shared: a run's files never change (their name holds the run)."""
    key = (serving_file, table)
    files = _OPENED.get(key)
    if files is None:
        with contextlib.suppress(OSError):
            files = LookupFiles.open(Path(serving_file), table)
        if files is not None:
            _OPENED[key] = files
    return files
