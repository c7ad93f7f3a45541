"""Reading the serving DuckDB file: the path apps open, read-only connections with caps, one-statement SQL.

This is what downstream apps (and `batchml query`) load, so it imports DuckDB and nothing heavy: building a
serving file (`database`) needs pyarrow, polars and the run files; reading one needs only the file, fetched
first from object storage when another host published it (`snapshots`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb

from batchml.errors import BatchMLError, ConfigError, NotFoundError, QueryTimeoutError, ReadOnlyError
from batchml.serving.pointer import SERVING_FILE as SERVING_FILE  # re-exported: where readers look
from batchml.serving.pointer import serving_path
from batchml.serving.run_tables import LOOKUP_CHUNK
from batchml.serving.run_tables import READER_MEMORY_LIMIT as READER_MEMORY_LIMIT  # re-exported

if TYPE_CHECKING:
    from batchml.project import Project

T = TypeVar("T")

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
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"reader threads {threads!r} is invalid: use a whole number >= 1")
    caps: dict[str, str | int] = {"memory_limit": memory_limit, "threads": threads}

    def open_read_only(path: Path) -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(str(path), read_only=True, config={**READER_CONFIG, **caps})
        except (duckdb.ParserException, duckdb.SyntaxException) as exc:  # how DuckDB rejects a bad setting
            raise ConfigError(
                f"reader memory_limit {memory_limit!r} is invalid: use a size like '2GB' or '512MB' ({exc})"
            ) from None

    return open_current(serving_dir, open_read_only)


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
    memory_limit: str = READER_MEMORY_LIMIT,
    threads: int = READER_THREADS,
    pull: bool = True,
    history: bool = False,
) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection to the published tables (`predictions`, `models`, ...).

    Queries on it may use at most `memory_limit` and `threads` cores (the connection cannot raise them).
    With object storage, the newest serving snapshot is first fetched into the local serving folder if the
    local file is older (checking costs one listing and one small read); `pull=False` opens the local file
    as it is. `history=True` adds `prediction_history`, `past_predictions` and
    `prediction_at(model, entity_id, at)`, read from the published runs' files in the project's storage and
    from nothing else (one thread; see `batchml.serving.history`).
    """
    if project is None:
        from batchml.project import Project

        project = Project.open()
    if pull and not project.storage.is_local:
        from batchml.serving import snapshots  # only remote storage needs it

        snapshots.pull(project.storage, project.serving_dir, missing_ok=True)
    if history:
        from batchml.serving.history import connect_history  # fsspec: only history readers pay for it

        return open_current(
            project.serving_dir,
            lambda path: connect_history(path, project.storage, memory_limit=memory_limit),
        )
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
