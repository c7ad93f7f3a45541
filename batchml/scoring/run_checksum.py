"""The content checksum of a prediction run: an order-independent aggregate of its stored rows, by DuckDB.

It is computed over the run's Parquet files when the run is committed, and stored in the run's manifest
(`content_checksum`). A serving build that copies the run from the previous serving file, instead of
re-reading its files, runs the same SQL over the copied table: a row edited, added or removed in a serving
file changes the checksum even when the row count stays the same, and the build reads the run files instead.

    {"function": "...", "engine": "duckdb 2.0.0", "probe": "<16 hex>", "rows": 2000000, "value": "<16 hex>"}

DuckDB's `hash` is not a stable format across versions: `probe` is the same aggregate over fixed rows, so a
build whose engine hashes differently sees it cannot compare, and reads the run files (slower, never wrong).
This is a 64-bit checksum of a non-cryptographic hash: it catches edits, not someone who crafts collisions.
The run files' sha256s, in a manifest that carries its own hash, remain the record.

Scoring computes it while it writes (`StreamingChecksum`: the same SQL over each batch, in a thread beside the
writer), rather than reading the files back after them: the aggregate is a count and an XOR, so the batches'
aggregates combine into the files' (Parquet stores the batches' values unchanged), and so do partitions'.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import duckdb
import pyarrow as pa

from batchml.store.storage import FileEntry, Storage

#: The type of `reasons`: the top features with their signed contributions.
REASONS_TYPE = "STRUCT(feature VARCHAR, contribution DOUBLE)[]"
#: The columns a run stores per row, with the types every serving table gives them.
STORED_TYPES = {
    "entity_id": "VARCHAR", "prediction": "DOUBLE", "predicted_class": "VARCHAR", "input_hash": "UBIGINT",
    "reasons": REASONS_TYPE, "flags": "VARCHAR[]",
}  # fmt: skip
#: Runs committed before reasons carried contributions stored them as names (VARCHAR[]); their manifests
#: record checksums of that form, which a serving table (reasons converted, contribution NULL) still meets
#: through `_LEGACY_SOURCE`, so those runs keep being copied rather than re-read on every build.
_LEGACY_TYPES = {**STORED_TYPES, "reasons": "VARCHAR[]"}


def _function(types: dict[str, str]) -> str:
    return "count(*), bit_xor(hash(" + ", ".join(f"CAST({n} AS {t})" for n, t in types.items()) + "))"


#: The aggregate, as SQL; recorded with each checksum.
FUNCTION = _function(STORED_TYPES)
LEGACY_FUNCTION = _function(_LEGACY_TYPES)
_PROBE_ROWS = """(VALUES
    ('L1', 0.25, 'yes', 42, [{'feature': 'a', 'contribution': -0.5}, {'feature': 'b', 'contribution': NULL}],
     NULL),
    (NULL, -1e300, NULL, 18446744073709551615, [], ['unseen:x', NULL]))
    AS probe(entity_id, prediction, predicted_class, input_hash, reasons, flags)"""
_LEGACY_PROBE_ROWS = """(VALUES
    ('L1', 0.25, 'yes', 42, ['a', 'b'], NULL),
    (NULL, -1e300, NULL, 18446744073709551615, [], ['unseen:x', NULL]))
    AS probe(entity_id, prediction, predicted_class, input_hash, reasons, flags)"""
#: Today's reasons as a legacy run stored them; a contribution set where none was stored is an edit.
_LEGACY_REASONS = """CASE WHEN list_bool_or(list_transform(reasons, lambda r: r.contribution IS NOT NULL))
    THEN ['<edited: has contributions>'] ELSE list_transform(reasons, lambda r: r.feature) END"""


def _legacy_source(table: str) -> str:
    columns = ", ".join(_LEGACY_REASONS + " AS reasons" if n == "reasons" else n for n in STORED_TYPES)
    return f"(SELECT {columns} FROM {table})"


def _count_and_xor(
    con: duckdb.DuckDBPyConnection, source: str, params: Sequence[Any] = (), function: str = FUNCTION
) -> tuple[int, int]:
    found = con.execute(f"SELECT {function} FROM {source}", list(params)).fetchall()  # completes the result
    rows, value = found[0] if found else (0, None)
    return int(rows), int(value or 0)


def _aggregate(
    con: duckdb.DuckDBPyConnection, source: str, params: Sequence[Any] = (), function: str = FUNCTION
) -> tuple[int, str]:
    rows, value = _count_and_xor(con, source, params, function)
    return rows, f"{value:016x}"


@functools.cache
def _probe(function: str = FUNCTION) -> str:
    """The aggregate `function` over fixed rows, as this process's DuckDB computes it."""
    rows = _LEGACY_PROBE_ROWS if function == LEGACY_FUNCTION else _PROBE_ROWS
    with duckdb.connect() as con:
        return _aggregate(con, rows, function=function)[1]


def _method(function: str = FUNCTION) -> dict[str, Any]:
    """What says how a checksum was computed: the function, the engine and the engine's probe value."""
    return {"function": function, "engine": f"duckdb {duckdb.__version__}", "probe": _probe(function)}


def table_checksum(con: duckdb.DuckDBPyConnection, table: str, function: str = FUNCTION) -> dict[str, Any]:
    """The content checksum of the rows of `table` (a quoted, possibly qualified name) by `function`
    (`FUNCTION`, or `LEGACY_FUNCTION` to compare with a run committed when reasons were names only)."""
    source = _legacy_source(table) if function == LEGACY_FUNCTION else table
    rows, value = _aggregate(con, source, function=function)
    return {**_method(function), "rows": rows, "value": value}


def files_checksum(storage: Storage, files: list[FileEntry]) -> dict[str, Any]:
    """The content checksum of the rows of a run's Parquet `files` (what its manifest records)."""
    with duckdb.connect() as con:
        if not storage.is_local:
            con.register_filesystem(storage.fs)
        uris = [storage.uri(entry.path) for entry in files]
        rows, value = _aggregate(con, "read_parquet(?, union_by_name = true)", [uris])
    return {**_method(), "rows": rows, "value": value}


class StreamingChecksum:
    """The content checksum of a run's rows as they are written: each batch's aggregate is computed in one
    background thread (DuckDB releases the GIL), at most `pending` batches behind the writer."""

    def __init__(self, pending: int = 2) -> None:
        self.pending = pending
        self.rows, self.value = 0, 0
        self._con = duckdb.connect()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchml-checksum")
        self._queued: deque[Future[tuple[int, int]]] = deque()

    def _batch(self, batch: pa.RecordBatch) -> tuple[int, int]:
        self._con.register("scored_batch", pa.Table.from_batches([batch]))
        try:
            return _count_and_xor(self._con, "scored_batch")
        finally:
            self._con.unregister("scored_batch")

    def _take_oldest(self) -> None:
        rows, value = self._queued.popleft().result()
        self.rows += rows
        self.value ^= value

    def tap(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """`batches` unchanged, each also added to the checksum (waiting when it falls `pending` behind)."""
        for batch in batches:
            while len(self._queued) >= self.pending:
                self._take_oldest()
            self._queued.append(self._pool.submit(self._batch, batch))
            yield batch

    def result(self) -> dict[str, Any]:
        """The checksum of every batch tapped, in the form `files_checksum` gives for the files written."""
        while self._queued:
            self._take_oldest()
        return {**_method(), "rows": self.rows, "value": f"{self.value:016x}"}

    def close(self) -> None:
        """Stop the thread (pending batches are dropped) and the connection."""
        for future in self._queued:
            future.cancel()
        self._pool.shutdown(wait=True)
        self._con.close()


def combined(checksums: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One checksum of the rows of several parts from theirs (None unless each has one, by one method)."""
    found = [c for c in checksums if c is not None]
    if not found or len(found) < len(checksums) or any(c.get("probe") != _probe() for c in found):
        return None  # computed by a DuckDB that hashes differently: the files are read instead
    value = functools.reduce(lambda acc, c: acc ^ int(c["value"], 16), found, 0)
    return {**_method(), "rows": sum(int(c["rows"]) for c in found), "value": f"{value:016x}"}


def incomparable(recorded: dict[str, Any]) -> str | None:
    """Why a checksum computed here cannot be compared with `recorded` (from a manifest), or None."""
    if not recorded:
        return "its manifest records no content checksum"
    function = recorded.get("function")
    if function not in (FUNCTION, LEGACY_FUNCTION) or recorded.get("probe") != _probe(str(function)):
        return f"its content checksum was computed by {recorded.get('engine')}, which hashes differently"
    return None


def mismatch(recorded: dict[str, Any], found: dict[str, Any]) -> str | None:
    """How `found` differs from the `recorded` checksum, or None if they agree."""
    if (found["rows"], found["value"]) == (recorded["rows"], recorded["value"]):
        return None
    return (
        f"content checksum {found['value']} over {found['rows']} rows, "
        f"its manifest records {recorded['value']} over {recorded['rows']} rows"
    )
