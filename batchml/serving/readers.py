"""Reading the serving DuckDB file: the path apps open, read-only connections with caps, one-statement SQL.

This is what downstream apps (and `batchml query`) load, so it imports DuckDB and nothing heavy: building a
serving file (`database`) needs pyarrow, polars and the run files; reading one needs only the file, fetched
first from object storage when another host published it (`snapshots`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb

from batchml.errors import BatchMLError, ConfigError, NotFoundError, QueryTimeoutError, ReadOnlyError
from batchml.serving.pointer import SERVING_FILE as SERVING_FILE  # re-exported: where readers look
from batchml.serving.pointer import serving_path
from batchml.serving.run_tables import LOOKUP_CHUNK, index_fits, indexed_rows, minimum_memory
from batchml.serving.run_tables import READER_MEMORY_LIMIT as READER_MEMORY_LIMIT  # re-exported
from batchml.sizes import ALLOWED as SIZES
from batchml.sizes import size_bytes

if TYPE_CHECKING:
    from batchml.project import Project

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Reader connections: no file access beyond the open database (no read_csv/COPY/ATTACH/INSTALL/LOAD), and
#: settings locked so that SET/PRAGMA cannot turn it back on (nor lift the resource caps below).
#: `dynamic_or_filter_threshold`: a join with up to that many distinct keys on one side (a batch lookup's
#: ids) hands them to the other side's table scan as a filter, which the scan answers through the ART index
#: on entity_id instead of reading the whole table (DuckDB's default: 50 keys; see `run_tables`).
READER_CONFIG: dict[str, bool | int] = {
    "enable_external_access": False,
    "lock_configuration": True,
    "dynamic_or_filter_threshold": LOOKUP_CHUNK,
}
#: Default caps of a reader connection: one runaway query must not take the memory (`READER_MEMORY_LIMIT`, in
#: `run_tables`: the serving build sizes its indexes by it) or every core of the host that serves
#: predictions (DuckDB's own defaults are 80% of RAM and all cores).
READER_THREADS = 2
_READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}


def serving_file(serving_dir: Path) -> Path:
    """The serving file the link points at now; NotFoundError if nothing was published yet."""
    link = serving_path(serving_dir)
    if not link.exists():
        raise NotFoundError("serving database", str(link), ["none yet: publish a prediction run first"])
    return link.resolve()


def connect_serving(
    serving_dir: Path,
    *,
    memory_limit: str = READER_MEMORY_LIMIT,
    threads: int = READER_THREADS,
) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the current serving file (open it once and reuse it: ~15 ms to open).

    Its queries may use at most `memory_limit` (DuckDB spills or fails beyond it) and `threads` cores; the
    connection cannot change either. Every table is inside the file: readers need no access to the store.
    A `memory_limit` that cannot hold the file's indexes is logged as a warning (`warn_if_too_small`).
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"reader threads {threads!r} is invalid: use a whole number >= 1")
    memory = _memory_bytes(memory_limit)
    caps: dict[str, str | int] = {"memory_limit": memory_limit, "threads": threads}

    def open_read_only(path: Path) -> duckdb.DuckDBPyConnection:
        return duckdb.connect(str(path), read_only=True, config={**READER_CONFIG, **caps})

    return _checked(open_current(serving_dir, open_read_only), memory_limit, memory)


def _memory_bytes(memory_limit: str) -> int:
    memory = size_bytes(memory_limit)
    if memory is None:  # DuckDB would also take 'none' or '-1': no cap, which a reader must have
        raise ConfigError(f"reader memory_limit {memory_limit!r} is invalid: use {SIZES}")
    return memory


def _checked(con: duckdb.DuckDBPyConnection, memory_limit: str, memory: int) -> duckdb.DuckDBPyConnection:
    """`con`, once `warn_if_too_small` has looked at it (closed if that fails)."""
    try:
        warn_if_too_small(con, memory_limit, memory)
    except BaseException:
        con.close()
        raise
    return con


def warn_if_too_small(con: duckdb.DuckDBPyConnection, memory_limit: str, memory: int) -> None:
    """Log one warning if a reader with `memory` bytes (`memory_limit`) cannot hold the indexes of the file
    `con` reads (`run_tables.index_fits`).

    No DuckDB (2.0) setting keeps such a reader safe: a table scan with one filter on entity_id looks the
    key up in the ART before it compares the rows found with `index_scan_max_count` /
    `index_scan_percentage` (`TableScanInitGlobal` -> `TryScanIndex` -> `ART::SearchEqual`), so even with
    both at 0 every `entity_id = ...` loads index nodes it keeps for good, and plain SQL fails after a few
    hundred to thousands of lookups. `batchml.lookup` stays off the index on such a reader; SQL cannot be."""
    rows = indexed_rows(con)
    if rows and not index_fits(int(rows), memory):
        need = -(-minimum_memory(int(rows)) // 10**6)  # MB, rounded up
        log.warning(
            "this reader's memory_limit %s cannot hold the serving file's indexes (%d indexed rows need "
            "%dMB): SQL on entity_id loads index memory DuckDB never frees and fails after a few thousand "
            "lookups (batchml.lookup stays off the index); give readers memory_limit='%dMB' or more, or set "
            "[serving] reader_memory_limit in batchml.toml to this reader's limit (the next publish indexes "
            "only what it holds)",
            memory_limit, rows, need, need,
        )  # fmt: skip


def open_current(serving_dir: Path, open_file: Callable[[Path], T]) -> T:
    """`open_file(current serving file)`, once more if that file was replaced and collected meanwhile.

    DuckDB resolves the link before it opens the file; a file collected in between (its grace period is
    short, see `pointer.GRACE_SECONDS`) makes the open fail while the link already names a newer file.
    """
    path = serving_file(serving_dir)
    try:
        return open_file(path)
    except duckdb.IOException:
        if path.exists():
            raise
        return open_file(serving_file(serving_dir))


def connect(
    project: Project | None = None,
    *,
    memory_limit: str | None = None,
    threads: int | None = None,
    pull: bool = True,
    history: bool = False,
) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection to the published tables (`predictions`, `models`, ...).

    Queries on it may use at most `memory_limit` and `threads` cores (the connection cannot raise them);
    not given: the project's `[serving] reader_memory_limit` and `reader_threads` (default 2GB, 2).
    With object storage, the newest serving snapshot is first fetched into the local serving folder if the
    local file is older (checking costs one listing and one small read); `pull=False` opens the local file
    as it is. `history=True` adds `prediction_history`, `past_predictions` and
    `prediction_at(model, entity_id, at)`, read from the published runs' files in the project's storage and
    from nothing else (one thread; see `batchml.serving.history`).
    """
    if project is None:
        from batchml.project import Project

        project = Project.open()
    setting = project.config.serving
    memory_limit = setting.reader_memory_limit if memory_limit is None else memory_limit
    threads = setting.reader_threads if threads is None else threads
    if pull and not project.storage.is_local:
        from batchml.serving import snapshots  # only remote storage needs it

        files = setting.lookup_files
        snapshots.pull(project.storage, project.serving_dir, missing_ok=True, lookup_files=files)
    if history:
        from batchml.serving.history import connect_history  # fsspec: only history readers pay for it

        memory = _memory_bytes(memory_limit)
        con = open_current(
            project.serving_dir,
            lambda path: connect_history(path, project.storage, memory_limit=memory_limit),
        )
        return _checked(con, memory_limit, memory)
    return connect_serving(project.serving_dir, memory_limit=memory_limit, threads=threads)


def database_path(project: Project) -> Path:
    """The documented path of the serving DuckDB file (a symlink to the current build)."""
    return serving_path(project.serving_dir)


def query(
    con: duckdb.DuckDBPyConnection, sql: str, *, timeout: float | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one read-only SQL statement (SELECT/EXPLAIN); anything that could write is refused.

    With `timeout` (seconds), a statement still running then is interrupted and QueryTimeoutError raised.
    """
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise BatchMLError(f"SQL does not parse: {exc}") from None
    kinds = [str(s.type).rsplit(".", 1)[-1] for s in statements]
    if len(statements) != 1 or kinds[0] not in _READ_ONLY_STATEMENTS:
        raise ReadOnlyError(f"only one SELECT or EXPLAIN statement is allowed, got {kinds or 'nothing'}")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"query timeout {timeout!r} is invalid: use a number of seconds > 0")
    timer = threading.Timer(timeout, con.interrupt) if timeout else None
    try:
        if timer:
            timer.start()
        result = con.execute(sql)
        columns = [d[0] for d in result.description or []]
        return columns, result.fetchall()  # inside the timer: a large result is computed while fetched
    except duckdb.InterruptException:
        raise QueryTimeoutError(
            f"query interrupted after {timeout:g} s, its time limit: narrow it (WHERE, LIMIT) or allow "
            "more time (batchml query --timeout SECONDS)"
        ) from None
    except duckdb.PermissionException as exc:
        raise ReadOnlyError(
            f"query may read only the serving database's tables; files, ATTACH and extensions are off: {exc}"
        ) from None
    except duckdb.OutOfMemoryException as exc:
        raise BatchMLError(f"query needs more memory than the reader's limit allows: {exc}") from None
    except duckdb.Error as exc:
        raise BatchMLError(f"query failed: {exc}") from None
    finally:
        if timer:
            timer.cancel()
