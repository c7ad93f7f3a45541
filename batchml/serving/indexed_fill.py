"""How a run table gets its ART index on entity_id: which runs of a serving file are indexed, and filling an
indexed table in sorted chunks so that neither the index nor the sorted rows are held whole in memory.

Used by the serving build (`prediction_tables`), for runs read from their files and runs copied from the
previous serving file alike.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb

from batchml.scoring.runs import PredictionRun
from batchml.serving.run_tables import STORED_COLUMNS, database_file, index_fits, literal, run_table_name
from batchml.sizes import size_bytes

log = logging.getLogger(__name__)

#: How the indexes of a serving file are sized: all together they must fit a reader with the project's
#: `[serving] reader_memory_limit` (default 2GB: ~22M indexed rows; 8GB: ~88M). DuckDB keeps every index node
#: a reader's lookups load, for good (`run_tables.ART_BYTES_PER_ROW`), so a file indexing more rows than that
#: reader can hold made it fail after a few thousand point lookups (100M rows, 2GB: after ~4,400), and any
#: client's SQL on `entity_id = ...` with it. Runs beyond it are served without the index: their rows are
#: sorted by entity_id, so a point lookup reads one segment of ~19k rows through the zone maps (100M rows:
#: p50 ~1.2-1.5 ms instead of ~0.6 in a reader holding ~4 GB of index). Decided at every build, also for a
#: run copied from the previous file (`PreviousFile.copy` builds or leaves out the index as decided here),
#: so a changed setting is honoured by the next build.
#: Rows inserted into an indexed run table per transaction, each followed by a checkpoint. DuckDB's bulk
#: `CREATE INDEX` holds the whole ART in memory and cannot spill it (at 10M rows it failed under 400 MB and
#: peaked at 1.1 GB given 1.3 GB); chunks inserted into a table that already has the index are written out
#: by each checkpoint, so a 10M-row publish stays within the build's `memory_limit` (~430 MB peak) and
#: costs less CPU (one sort instead of two: `CREATE INDEX` sorts the keys again).
INDEX_CHUNK_ROWS = 2_000_000
#: A run's rows read from its files and sorted by entity_id, before they go into its indexed table in chunks:
#: a table in a database file of its own beside the build (`sorted_rows`), not a TEMP table. A TEMP table of
#: 100M rows pinned more of the build's memory than it could evict, so the first checkpoints after it failed
#: (DuckDB 2.0: "FATAL ... failed to pin block", 244/244 MiB, at 256 MB; 384 MB passed); a file's table is
#: written out and evicted like any other (100M rows under 256 MB: peak RSS 361 MiB).
_SCRATCH, _SORTED = "sorted_scratch", "sorted_run"


def index_name(run: PredictionRun) -> str:
    """The quoted name of the ART index on entity_id of `run`'s table."""
    return f'"run__{run.model}__{run.run_id}__entity_id"'


def indexed_tables(runs: list[PredictionRun], reader_memory_limit: str) -> set[str]:
    """The tables of `runs` (in placement order: current runs first) that get an index on entity_id: those
    that fit, with the ones before them, in what a reader with `reader_memory_limit` can hold for good; each
    other run is named in a warning."""
    memory = size_bytes(reader_memory_limit) or 0  # validated by the config
    chosen: set[str] = set()
    rows = 0
    for run in runs:
        if index_fits(rows + run.rows, memory):
            chosen.add(run_table_name(run.model, run.run_id))
            rows += run.rows
        else:
            log.warning(
                "run %s: indexing its %d rows on entity_id would leave the serving file with indexes over "
                "%d rows, more than a reader with memory_limit %s ([serving] reader_memory_limit) can hold; "
                "served without the index (point lookups read the zone maps of its sorted rows)",
                run.run_id, run.rows, rows + run.rows, reader_memory_limit,
            )  # fmt: skip
    return chosen


def fill(con: duckdb.DuckDBPyConnection, run: PredictionRun, chunks: Iterable[str]) -> None:
    """Insert the rows the `chunks` select (each sorted by entity_id, each after the one before) into
    `run`'s new, empty table, indexed on entity_id, each chunk then checkpointed: the index is written out
    as it grows instead of built whole in memory."""
    table, stored = run_table_name(run.model, run.run_id), ", ".join(STORED_COLUMNS)
    con.execute(f"CREATE INDEX {index_name(run)} ON {table} (entity_id)")
    for select in chunks:
        con.execute(f"INSERT INTO {table} ({stored}) {select}")
        con.execute("CHECKPOINT")


def row_ranges(con: duckdb.DuckDBPyConnection, source: str) -> Iterator[str]:
    """`INDEX_CHUNK_ROWS` rowid ranges of `source` (a table sorted by entity_id whose rowids follow that
    order: one filled by inserts alone), as selects of the stored columns."""
    found = con.execute(f"SELECT max(rowid) FROM {source}").fetchone()  # no rows: NULL
    end = found[0] + 1 if found and found[0] is not None else 0
    for low in range(0, end, INDEX_CHUNK_ROWS):
        rows = f"rowid >= {low} AND rowid < {low + INDEX_CHUNK_ROWS}"
        yield f"SELECT {', '.join(STORED_COLUMNS)} FROM {source} WHERE {rows}"


@contextmanager
def sorted_rows(con: duckdb.DuckDBPyConnection, select: str, threads: int | None) -> Iterator[str]:
    """The rows of `select` (sorted) as a table in a scratch database file beside the file being built
    (see `_SORTED`), with `threads` (None: unchanged); the file is detached and deleted after the block,
    and a crash's leftover is collected with the build's (`.building-*`, `serving.gc`)."""
    scratch = Path(f"{database_file(con)}.sorted")
    con.execute(f"ATTACH {literal(str(scratch))} AS {_SCRATCH}")
    try:
        with using_threads(con, threads):
            con.execute(f"CREATE TABLE {_SCRATCH}.{_SORTED} AS {select}")
        yield f"{_SCRATCH}.{_SORTED}"
    finally:
        with suppress(duckdb.Error):  # a connection a fatal error invalidated: nothing left to detach
            con.execute(f"DETACH {_SCRATCH}")
        for path in (scratch, Path(f"{scratch}.wal")):
            path.unlink(missing_ok=True)


@contextmanager
def using_threads(con: duckdb.DuckDBPyConnection, threads: int | None) -> Iterator[None]:
    """Run the block with DuckDB's `threads` set to `threads` (None: unchanged), then restore it."""
    before = con.execute("SELECT current_setting('threads')").fetchone()
    if threads is not None:
        con.execute(f"SET threads = {threads}")
    try:
        yield
    finally:
        if threads is not None and before:
            con.execute(f"SET threads = {int(before[0])}")
