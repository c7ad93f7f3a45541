"""Batch and point lookup: the served predictions of entity ids, as an Arrow table.

A run table with lookup files beside the serving file (`lookup_files`, written by the build or the pull
that installed it) is read from them: a binary search over memory-mapped sorted ids, rows sliced from
memory-mapped Arrow, no DuckDB query at all (point p50 ~0.035 ms against ~0.4 ms, at 10M and 100M rows).
What follows is how a lookup is answered without them (`[serving] lookup_files = false`, a file another
tool built, ids the files cannot hold), and how the run and its constants are found either way.

The ids reach DuckDB as parameters (one list: `= ANY($1)`), so they are never SQL text and the reader
connection needs no file access and no registered object: it stays locked down (`enable_external_access =
false`, `lock_configuration = true`). One id: `entity_id = $1`, one leaf of the run table's ART index, its
row fetched as Python values (DuckDB's Arrow export of one row costs more than the lookup). Many ids: sorted,
once each, in chunks that DuckDB probes through the same index (`_Reader.chunk`), so a batch costs its ids,
not the table: one query over the whole table would scan all of its rows (100M rows: ~10 s a batch).
The index is used only by a connection whose memory limit can hold every index in the file: DuckDB keeps
what it loads of an index for good (`run_tables.ART_BYTES_PER_ROW`), so a long-lived reader that cannot
hold them would fail after a few thousand lookups; any other connection finds an id through the zone maps
of the sorted rows (`_OFF_INDEX`).

Both read the model's run table itself, not the `predictions` view: the view's constant columns and its
model filter cost DuckDB more to bind and optimize than the lookup costs to run (a third of a point lookup).
The run's constants are read with the run (one row of the view) and added as Arrow columns: the result is
the view's, column for column. A file without the run table, a model without rows, or one served by two
runs (a canary arm beside the control run) is asked through the view, in one query.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from batchml.errors import ConfigError, DataError, NotFoundError
from batchml.names import check_name
from batchml.serving.lookup_files import LookupFiles, lookup_files
from batchml.serving.readers import connect
from batchml.serving.run_tables import (
    STORED_COLUMNS,
    database_file,
    index_fits,
    indexed_rows,
    run_table_name,
)
from batchml.sizes import size_bytes

if TYPE_CHECKING:
    from batchml.project import Project

#: One row per distinct id found, in entity id order; ids not served are absent.
_LOOKUP = """SELECT * FROM predictions
    WHERE model = $model AND entity_id IN (SELECT unnest(CAST($ids AS VARCHAR[])))
    ORDER BY entity_id"""
#: One row of the view: the run's constants (the same on every row of the model) and the columns' order.
_ONE_ROW = "SELECT * FROM predictions WHERE model = $model LIMIT 1"
#: Another run serving rows of the model (a canary arm beside the control run): then the view answers. Cheap:
#: each branch of the view has its run id as a literal, so DuckDB drops the branches of the known run.
_OTHER_RUN = "SELECT 1 FROM predictions WHERE model = $model AND run_id <> $run_id LIMIT 1"
_STORED = ", ".join(STORED_COLUMNS)
_TABLE_EXISTS = """SELECT count(*) FROM duckdb_tables()
    WHERE database_name = current_database() AND schema_name = 'main' AND table_name = $name"""
_INDEXED = """SELECT count(*) FROM duckdb_indexes()
    WHERE database_name = current_database() AND schema_name = 'main' AND table_name = $name"""
#: Added to a lookup's filter to keep DuckDB off a run table's index: it scans through an index only when
#: the scan has exactly one filter (2.0: `TableScanInitGlobal`), and the join of a batch's ids hands its
#: scan one (`dynamic_or_filter_threshold`). With a second, always true one the sorted rows' zone maps
#: find the segment of an id instead, and nothing is loaded for good (see `readers.ART_BYTES_PER_ROW`).
_OFF_INDEX = " AND rowid >= 0"
#: A batch of more distinct ids than this share of the run's rows is one scan of the table, not index probes:
#: a probe costs ~13 us of CPU per id and a scan ~65 ns per row (10M rows, DuckDB 2.0, loaded machine), so
#: they cross near 0.5% (measured: 30k ids of 10M probed 1.4x faster than a scan, 100k ids 2x slower).
SCAN_SHARE = 0.005
_ALLOWED = "all str ids, or all int ids for integer entity ids (served entity ids are their text)"


def _bad(value: Any) -> DataError:
    return DataError(f"entity id {value!r} ({type(value).__name__}) is invalid: use {_ALLOWED}")


def _arrow_ids(ids: pa.Array | pa.ChunkedArray) -> list[str]:
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type) or pa.types.is_integer(ids.type):
        if ids.null_count:
            raise _bad(None)
        return [str(v) for v in ids.cast(pa.string()).to_pylist()]
    raise DataError(f"entity ids of type {ids.type} are invalid: use {_ALLOWED}")


def entity_ids(ids: Iterable[str] | Iterable[int] | Any) -> list[str]:
    """`ids` (a sequence of str or of int, an Arrow array or a polars Series) as the served entity id text."""
    if isinstance(ids, (str, bytes)):
        raise DataError(f"entity ids {ids!r} are invalid: pass a list of ids, not one {type(ids).__name__}")
    if type(ids).__module__.split(".")[0] == "polars":  # polars is not imported unless the caller did
        ids = ids.to_arrow()  # type: ignore[union-attr]
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        return _arrow_ids(ids)
    values = list(ids)
    if all(type(v) is str for v in values):  # the common case, checked once without a per-id branch
        return values
    if all(type(v) is int for v in values):  # not bool: True is not an entity id
        return [str(v) for v in values]
    first = type(values[0])  # not empty: an empty list passed the str check
    raise _bad(next(v for v in values if type(v) is not first or first not in (str, int)))


@dataclass(frozen=True)
class _ServedRun:
    """A model's current run in one serving file: its table's queries and its constants (one row)."""

    one: str  # the stored columns of one id
    many: str  # of a list of ids, once each, in entity id order: probed through the ART index
    scan: str  # the same, read by scanning the table (a join of the ids with every row)
    constants: pa.Table  # one row of the view: its columns, in its order, and the run's constants
    probes: int  # the most distinct ids a batch probes through the index; more are a scan
    #: The run's lookup files, mapped (`lookup_files`): when there are some, DuckDB is not asked at all.
    files: LookupFiles | None = field(default=None, compare=False)
    #: The queries above as DuckDB parsed them, on first use: parsing the text costs ~0.2 ms, more than a
    #: third of a point lookup, and a kept run (a pinned reader's) is asked again and again.
    parsed: dict[str, duckdb.Statement] = field(default_factory=dict, compare=False)

    def _statement(self, con: duckdb.DuckDBPyConnection, sql: str) -> duckdb.Statement:
        statement = self.parsed.get(sql)
        if statement is None:
            statement = self.parsed[sql] = con.extract_statements(sql)[0]
        return statement

    @cached_property
    def _row_type(self) -> pa.StructType:
        """The stored columns as one struct: one row converts in one call (half the time of one a column)."""
        return pa.struct([self.constants.schema.field(n) for n in STORED_COLUMNS])

    @cached_property
    def _layout(self) -> list[int | pa.ChunkedArray]:
        """Each column of the view: the position of a stored column, or the constant's one-row column."""
        names = self.constants.schema.names
        return [STORED_COLUMNS.index(n) if n in STORED_COLUMNS else self.constants.column(n) for n in names]

    def one_row(self, con: duckdb.DuckDBPyConnection, key: str) -> pa.Table:
        """The view's row of `key` (none if not served): from the lookup files, or its values from DuckDB as
        Python objects, then Arrow arrays (DuckDB's Arrow export of one row costs more than the lookup).
        Entity ids are unique in a run (duplicates are quarantined before scoring), so one row at most."""
        if self.files is not None:
            row = self.files.find(key)
            return self._with_constants(row.columns, 1) if row is not None else self.constants.slice(0, 0)
        found = con.execute(self._statement(con, self.one), [key]).fetchall()  # fetchone leaves it open
        if not found:
            return self.constants.slice(0, 0)
        stored = pa.array(found, self._row_type).flatten()
        columns = [stored[c] if isinstance(c, int) else c for c in self._layout]
        return pa.Table.from_arrays(columns, schema=self.constants.schema)

    def rows(self, con: duckdb.DuckDBPyConnection, keys: list[str], chunk: int, threads: int) -> pa.Table:
        """The view's rows for `keys`: the table's stored columns, with the constants alongside.

        Up to `probes` distinct ids are sorted and sent `chunk` at a time: each chunk is small enough for
        DuckDB to probe the index (see `_Reader.chunk`), and sorted chunks concatenated are in entity id
        order; up to `threads` chunks at once (`_probe_side_by_side`). More ids than that cost less as one
        scan of the table (see `SCAN_SHARE`)."""
        if self.files is not None:
            found = self.files.take(keys)
            return self._with_constants(found.columns, found.num_rows)
        ordered = sorted(set(keys))
        if len(ordered) > self.probes:
            table = con.sql(self._statement(con, self.scan), params=[ordered]).to_arrow_table()
        else:
            chunks = [ordered[i : i + chunk] for i in range(0, len(ordered), chunk)]
            if threads > 1 and len(chunks) > 1:
                parts = _probe_side_by_side(con, self.many, chunks, threads)
            else:
                many = self._statement(con, self.many)
                parts = [con.sql(many, params=[ids]).to_arrow_table() for ids in chunks]
            table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        return self._with_constants(table.columns, table.num_rows)

    def _with_constants(self, stored: list[pa.Array] | list[pa.ChunkedArray], rows: int) -> pa.Table:
        """The view's rows: the stored columns (in `STORED_COLUMNS` order) with the run's constants beside.
        A stored column whose Arrow type differs (lookup files written by another DuckDB) is cast."""
        constants = self.constants.take(pa.array([0] * rows, pa.int64())) if rows != 1 else self.constants
        schema = self.constants.schema
        columns = []
        for name in schema.names:
            if name not in STORED_COLUMNS:
                columns.append(constants.column(name))
                continue
            column, wanted = stored[STORED_COLUMNS.index(name)], schema.field(name).type
            columns.append(column if column.type == wanted else column.cast(wanted))
        return pa.Table.from_arrays(columns, schema=schema)


_WHERE = "SELECT current_database(), current_schema()"


def _probe_side_by_side(
    con: duckdb.DuckDBPyConnection, sql: str, chunks: list[list[str]], threads: int
) -> list[pa.Table]:
    """`sql`'s rows for each of `chunks`, in chunk order, from up to `threads` cursors of `con` at once.

    DuckDB runs a query that probes an index on one core, so a batch of many chunks leaves the reader's
    other threads idle; cursors are connections to the same database (its settings, its loaded index), so
    side by side they use the cores the reader is allowed (100M rows, 100k ids: 57-68k ids/s one at a time,
    89-103k with two). Each cursor parses `sql` itself: a parsed statement is not shared between threads."""
    workers = min(threads, len(chunks))
    cursors = [con.cursor() for _ in range(workers)]
    # A cursor starts in the database's default catalog; `con` may have moved (an app's connection that
    # ATTACHed the serving file and USEs it), and the run table is named without its catalog.
    where = con.execute(_WHERE).fetchall()[0]
    for cursor in cursors:
        if cursor.execute(_WHERE).fetchall()[0] != where:
            cursor.execute("USE " + ".".join('"' + str(name).replace('"', '""') + '"' for name in where))

    def probe(worker: int) -> list[pa.Table]:
        cursor = cursors[worker]
        statement = cursor.extract_statements(sql)[0]
        return [cursor.sql(statement, params=[ids]).to_arrow_table() for ids in chunks[worker::workers]]

    try:
        with ThreadPoolExecutor(workers) as pool:
            dealt = list(pool.map(probe, range(workers)))
    finally:
        for cursor in cursors:
            cursor.close()
    return [dealt[i % workers][i // workers] for i in range(len(chunks))]  # chunk i went to worker i % n


@dataclass
class _Reader:
    """What `lookup` keeps about one open connection."""

    #: Whether the connection can never read another serving file: it has no external access (batchml's
    #: readers, plain and history), so it cannot ATTACH one, and DuckDB refuses to turn that back on. Only
    #: then is a model's run kept between lookups: a connection that can attach a newer file is asked again
    #: on every lookup, so it never answers from a run that a publish replaced.
    pinned: bool
    #: Ids per query of a batch: the most this connection's settings let DuckDB probe through the index
    #: (`run_tables.LOOKUP_CHUNK` on batchml's readers; 50 on a connection with DuckDB's defaults).
    chunk: int
    memory: float  # the connection's memory limit, bytes
    threads: int  # the connection's threads: how many chunks of a batch are probed at once
    runs: dict[str, _ServedRun | None] = field(default_factory=dict)


#: Per open connection (weak keys: an entry goes with its connection).
_READERS: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, _Reader] = weakref.WeakKeyDictionary()
_SETTINGS = """SELECT current_setting('enable_external_access'),
    current_setting('dynamic_or_filter_threshold'), current_setting('index_scan_max_count'),
    current_setting('memory_limit'), current_setting('threads')"""


def _reader(con: duckdb.DuckDBPyConnection) -> _Reader:
    reader = _READERS.get(con)
    if reader is None:
        external, pushed, indexed, memory, threads = con.execute(_SETTINGS).fetchall()[0]
        reader = _Reader(
            pinned=not external,
            chunk=max(1, min(int(pushed), int(indexed))),
            memory=size_bytes(str(memory)) or 0,  # as DuckDB shows it: '1.8 GiB'; no limit: not a size
            threads=int(threads),
        )
        _READERS[con] = reader
    return reader


def _find_run(con: duckdb.DuckDBPyConnection, model: str, memory: float) -> _ServedRun | None:
    """`model`'s current run on `con`; None if it serves no row, rows of two runs (a canary), or the file has
    no run table."""
    row = con.sql(_ONE_ROW, params={"model": model}).to_arrow_table()
    run_id = str(row.column("run_id")[0]) if row.num_rows == 1 else None
    if not run_id or con.execute(_OTHER_RUN, {"model": model, "run_id": run_id}).fetchall():
        return None
    table = run_table_name(model, run_id)
    if not con.execute(_TABLE_EXISTS, {"name": table.strip('"')}).fetchall()[0][0]:
        return None
    (rows,) = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0]  # from the table's metadata
    indexed = con.execute(_INDEXED, {"name": table.strip('"')}).fetchall()[0][0]
    # The index is used only if the connection can hold every index of the file for good: DuckDB never
    # evicts index memory, so lookups through one it cannot hold fail after a few thousand (and ever after).
    usable = bool(indexed) and index_fits(indexed_rows(con), memory)
    off = _OFF_INDEX if indexed and not usable else ""
    path = database_file(con)
    return _ServedRun(
        one=f"SELECT {_STORED} FROM {table} WHERE entity_id = $1{off}",
        many=f"SELECT {_STORED} FROM {table} WHERE entity_id = ANY(CAST($1 AS VARCHAR[])) ORDER BY entity_id",
        scan=f"""SELECT {_STORED} FROM {table}
            WHERE entity_id IN (SELECT unnest(CAST($1 AS VARCHAR[]))){off} ORDER BY entity_id""",
        constants=row,
        probes=int(rows * SCAN_SHARE) if usable else 0,  # no index, or not one to use: always a scan
        files=lookup_files(path, table.strip('"')) if path else None,  # an in-memory db has none
    )


def _served_run(con: duckdb.DuckDBPyConnection, reader: _Reader, model: str) -> _ServedRun | None:
    """`model`'s current run on `con`: kept if `con` is pinned to its file, else found again."""
    if not reader.pinned:
        return _find_run(con, model, reader.memory)
    if model not in reader.runs:
        reader.runs[model] = _find_run(con, model, reader.memory)
    return reader.runs[model]


def _served_models(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [
        str(r[0]) for r in con.execute("SELECT DISTINCT model FROM predictions ORDER BY model").fetchall()
    ]


def _is_history(con: duckdb.DuckDBPyConnection) -> bool:
    sql = "SELECT count(*) FROM duckdb_views() WHERE temporary AND view_name = 'prediction_history'"
    return bool(con.execute(sql).fetchall()[0][0])


def _served_at(con: duckdb.DuckDBPyConnection, model: str, keys: list[str], at: datetime | str) -> pa.Table:
    """The rows `model` served to `keys` at `at`, on a history connection: from the run published then, or
    the canary or A/B arm each entity was in (`batchml.serving.history_arms`); each run named, so the scan
    opens only those runs' files."""
    from batchml.serving.history import run_at
    from batchml.serving.history_arms import ARMS_AT, served_at_sql

    when = _time(con, at)
    run_id = run_at(con, model, when)
    arms = con.execute(ARMS_AT, {"model": model, "run_id": run_id, "at": when}).fetchall()
    return con.sql(served_at_sql(run_id, arms), params={"model": model, "ids": keys}).to_arrow_table()


def _time(con: duckdb.DuckDBPyConnection, at: datetime | str) -> datetime:
    """`at` as an aware datetime (naive: UTC), on a history connection."""
    if not _is_history(con):
        raise ConfigError("a lookup at a past time needs a history reader: batchml.connect(history=True)")
    when = at
    if isinstance(at, str):
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            raise DataError(
                f"time {at!r} is invalid: use an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"
            ) from None
    if not isinstance(when, datetime):
        raise DataError(f"time {at!r} is invalid: use an ISO 8601 time or a datetime")
    return when if when.tzinfo else when.replace(tzinfo=UTC)  # naive: UTC, as every stored time


def lookup(
    source: Project | duckdb.DuckDBPyConnection | None,
    model: str,
    ids: Iterable[str] | Iterable[int] | Any,
    *,
    at: datetime | str | None = None,
) -> pa.Table:
    """The served predictions of `model` for `ids`, in one query: an Arrow table of `predictions` columns.

    `source` is an open reader connection (`batchml.connect()`, reuse it: opening costs ~15 ms, and the
    model's run is found once per connection), a project, or None for the project of the current directory.
    One id is the fastest point lookup (see "Serving benchmark"). The table has one row per distinct id
    that `model` serves, in entity id order; ids it does not serve are absent (duplicates in `ids` give
    one row).
    `at` (a datetime or ISO 8601 text; naive means UTC): what `model` served at that time instead, read from
    that one run's files; `source` must then be a history reader (`batchml.connect(history=True)`) or a
    project (one is opened).
    """
    check_name("model", model)
    keys = entity_ids(ids)
    history = at is not None
    con = source if isinstance(source, duckdb.DuckDBPyConnection) else connect(source, history=history)
    try:
        if at is not None:
            return _served_at(con, model, keys, at)
        reader = _reader(con)
        run = _served_run(con, reader, model) if keys else None
        if run is not None:
            if len(keys) == 1:
                return run.one_row(con, keys[0])
            return run.rows(con, keys, reader.chunk, reader.threads)
        table = con.sql(_LOOKUP, params={"model": model, "ids": keys}).to_arrow_table()
        if table.num_rows == 0:  # nothing found: say so if the model itself is not served
            served = _served_models(con)
            if model not in served:
                raise NotFoundError("served model", model, served)
        return table
    finally:
        if con is not source:
            con.close()
