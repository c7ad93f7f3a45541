"""History readers: every run ever published, read from its immutable files in storage, never from the file.

The serving file holds only what apps need now (the current and staged run per model, the catalog); a
publish never copies history into it. `batchml.connect(history=True)` opens the current serving file
read-only and adds, on that connection only (TEMP objects, nothing is written):

    history_files                 TABLE: each file of every run in `published_runs`, with its run's constants
    prediction_history            VIEW: every run in `published_runs`, read from its Parquet files (each run
                                  whole, `variant` NULL: the runs, not what each entity was served)
    past_predictions              VIEW: the same without each model's current run
    published_run_at(model, at)   MACRO: the run `model` published at time `at` (the `publications` log)
    prediction_at(model, entity_id, at)  TABLE MACRO: what was served for one entity at time `at`: the
                                  published run's row (`variant` 'control'), or, for an entity in a canary
                                  or A/B arm then, the arm run's row with its variant (as `predictions`)
    served_segments, served_files, served_history, served_arm_at: the arms replayed from the logs and their
                                  runs' files (`batchml.serving.history_arms`)

Reading one run: `prediction_history` is one scan over every file joined by file name to `history_files`, so
a query that picks a run (`prediction_at`, `batchml.lookup(..., at=T)`, `WHERE run_id = ...`) filters the
small side of the join and DuckDB pushes the file names left into the scan as a dynamic filter: it opens only
that run's files, whatever the history depth. Footers are cached per connection (run files never change).

How a history reader is limited to the run files: it cannot open any path itself. DuckDB's own file system is
disabled on the connection (`disabled_filesystems = 'LocalFileSystem'`, `enable_external_access = false`), and
the run files are reached only through `RunFiles`, a read-only fsspec file system registered on the connection
that opens exactly the files of the runs `published_runs` lists and of the arm runs served beside them
(`served_files`; a path outside that list, a listing or a write raises PermissionError), and `allowed_paths`
names the same files. Then `lock_configuration`: no SET can widen it. DuckDB's `allowed_paths` alone would not
do: it also lets COPY ... TO overwrite the files it allows. One thread per history connection: DuckDB reads a
file of a Python file system through one handle, which two threads would seek at once. The files are those the
serving file names (and the arms beside its published runs): it is the snapshot the reader opened, so history
and `predictions` agree. Run files are not re-hashed on connect (sha256s are checked when a run is published);
history lookups read a run's files as written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import fsspec

from batchml.errors import ConfigError, NotFoundError
from batchml.serving import history_arms
from batchml.serving.prediction_tables import (
    CONSTANTS,
    LEGACY_REASONS,
    PREDICTION_SCHEMA,
    literal,
    prediction_select,
)
from batchml.serving.run_tables import LOOKUP_CHUNK
from batchml.store.storage import Storage

PROTOCOL = "batchml-runs"
#: The run on the published channel at a time: the same replay as `alias_at` (the run current after the
#: longest prefix of the model's log stamped no later than `at_time`; each event's run_id is that run).
_PUBLISHED_RUN_AT = """CREATE TEMP MACRO published_run_at(model_name, at_time) AS (
    SELECT run_id FROM publications
    WHERE model = model_name AND seq < coalesce((
        SELECT min(seq) FROM publications
        WHERE model = model_name AND "at" > CAST(at_time AS TIMESTAMPTZ)), 9223372036854775807)
    ORDER BY seq DESC LIMIT 1)"""


class RunFiles(fsspec.AbstractFileSystem):
    """Read-only access to the listed run files of a store, as `batchml-runs://<path in the store>`."""

    protocol = PROTOCOL
    cachable = False  # one per connection, each with its own list

    def __init__(self, storage: Storage, paths: set[str]) -> None:
        super().__init__()
        self.storage = storage
        self.paths = frozenset(paths)

    def _path(self, path: str) -> str:
        relpath = str(self._strip_protocol(path)).lstrip("/")
        if relpath not in self.paths:
            raise PermissionError(f"{path!r} is not a published run file: history readers open only those")
        return self.storage.full_path(relpath)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if mode != "rb":
            raise PermissionError(f"run file {path!r} is read-only (mode {mode!r} refused)")
        return self.storage.fs.open(self._path(path), "rb")

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return {**self.storage.fs.info(self._path(path)), "name": path}

    def modified(self, path: str) -> Any:
        return self.storage.fs.modified(self._path(path))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        raise PermissionError(f"history readers cannot list {path!r}")


def uri(relpath: str) -> str:
    """The URI a history connection reads the run file `relpath` (a path in the store) by."""
    return f"{PROTOCOL}://{relpath}"


#: Which run each history file belongs to, with the run's constants (a TEMP table of the connection).
_FILES = f"""CREATE TEMP TABLE {{table}} (file VARCHAR, {
    ", ".join(f"{n} {t}" for n, t in PREDICTION_SCHEMA if n in CONSTANTS)
})"""
#: Every run's rows with its constants: one scan over all the files, joined to `history_files` by file name.
#: A query that picks runs (`run_id = ...`, `prediction_at`) filters the small side of the join, and DuckDB
#: pushes the file names that remain into the scan as a dynamic filter: it opens only those runs' files.
_JOINED = (
    "SELECT {columns} FROM read_parquet([{files}], filename = true) h JOIN {table} f ON h.filename = f.file"
)


def _layouts(con: duckdb.DuckDBPyConnection, uris: list[str]) -> list[list[str]]:
    """`uris` grouped by their Parquet schema (almost always one group), read once from their footers.

    One scan per group, not `union_by_name`: that would open every file to bind every query.
    """
    if not uris:
        return []
    sql = """SELECT file_name, list(concat_ws(':', name, type, logical_type::VARCHAR, repetition_type))
        FROM parquet_schema(?) GROUP BY file_name"""
    groups: dict[str, list[str]] = {}
    for file, signature in con.execute(sql, [uris]).fetchall():
        groups.setdefault(str(signature), []).append(str(file))
    return [sorted(group) for group in groups.values()]


#: `prediction_history` holds runs, not what each entity was served: `prediction_at` and `lookup(at=)` set
#: `variant` as `predictions` does (`batchml.serving.history_arms`).
NO_VARIANT = "CAST(NULL AS VARCHAR)"


def _history_select(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]], table: str) -> str:
    """The rows of runs `rows` (files listed in `table`): runs of one file layout in one joined scan each
    (almost always one), runs that store reasons as names only one branch each."""
    current = [uri(p) for row in rows if not row["reasons_names_only"] for p in row["files"]]
    columns = ", ".join(
        f"f.{name}"
        if name in CONSTANTS
        else "CAST(h.entity_id AS VARCHAR) AS entity_id"
        if name == "entity_id"
        else f"h.{name}"
        for name, _ in PREDICTION_SCHEMA
    )
    columns += f", {NO_VARIANT} AS variant"
    branches = [
        _JOINED.format(columns=columns, table=table, files=", ".join(literal(u) for u in group))
        for group in _layouts(con, current)
    ]
    for row in rows:  # runs that store reasons as names only: converted, as in the serving file
        if row["reasons_names_only"] and row["files"]:
            files = ", ".join(literal(uri(p)) for p in row["files"])
            expressions = {"entity_id": "CAST(entity_id AS VARCHAR)", "reasons": LEGACY_REASONS}
            branches.append(
                prediction_select(row, f"read_parquet([{files}])", expressions, variant=NO_VARIANT)
            )
    names = ", ".join(n for n, _ in PREDICTION_SCHEMA)  # not `*`: files of older builds have no `variant`
    empty = f"SELECT {names}, {NO_VARIANT} AS variant FROM predictions WHERE false"
    return " UNION ALL ".join(branches) or empty


def _lock_down(con: duckdb.DuckDBPyConnection, storage: Storage, paths: list[str]) -> None:
    con.register_filesystem(RunFiles(storage, set(paths)))
    con.execute("SET parquet_metadata_cache = true")  # run files never change: parse each footer once
    con.execute("SET allowed_paths = ?", [[uri(p) for p in paths]])
    con.execute(f"SET dynamic_or_filter_threshold = {LOOKUP_CHUNK}")  # as plain readers: see READER_CONFIG
    con.execute("SET enable_external_access = false")
    con.execute("SET disabled_filesystems = 'LocalFileSystem'")
    con.execute("SET lock_configuration = true")


def _add_runs(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> None:
    """The TEMP table `table`: each file of the runs `rows`, with its run's constants."""
    con.execute(_FILES.format(table=table))
    files = [[uri(p), *(row[n] for n in CONSTANTS)] for row in rows for p in row["files"]]
    if files:
        con.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * (len(CONSTANTS) + 1))})", files)


def connect_history(path: Path, storage: Storage, *, memory_limit: str) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the serving file `path` where the history views and macros work."""
    # The file attached to an in-memory database, not opened directly: DuckDB refuses a second connection to a
    # file open in this process with other settings (a plain reader's), and an attached one is not.
    con = duckdb.connect(config={"memory_limit": memory_limit, "threads": 1})
    try:
        con.execute(f"ATTACH {literal(str(path))} AS serving (READ_ONLY)")
        con.execute("USE serving")
        result = con.execute("SELECT * FROM published_runs ORDER BY model, scored_at, run_id")
        columns = [d[0] for d in result.description or []]
        rows = [dict(zip(columns, r, strict=True)) for r in result.fetchall()]
        segments = history_arms.segment_rows(storage, sorted({str(r["model"]) for r in rows}))
        arms = history_arms.arm_runs(storage, segments, {str(r["run_id"]) for r in rows})
        _lock_down(con, storage, [p for row in rows + arms for p in row["files"]])
        _add_runs(con, "history_files", rows)
        con.execute(f"CREATE TEMP VIEW prediction_history AS {_history_select(con, rows, 'history_files')}")
        _add_runs(con, "served_files", arms)
        served = f" UNION ALL {_history_select(con, arms, 'served_files')}" if arms else ""
        con.execute(f"CREATE TEMP VIEW served_history AS SELECT * FROM prediction_history{served}")
        con.execute(
            "CREATE TEMP VIEW past_predictions AS SELECT * FROM prediction_history "
            "WHERE run_id NOT IN (SELECT run_id FROM runs WHERE published)"
        )
        con.execute(history_arms.SEGMENTS_TABLE)
        if segments:
            con.executemany(f"INSERT INTO served_segments VALUES ({', '.join('?' * 9)})", segments)
        con.execute(_PUBLISHED_RUN_AT)
        con.execute(history_arms.ARM_AT)
        con.execute(history_arms.PREDICTION_AT)
    except duckdb.CatalogException as exc:
        con.close()
        raise ConfigError(
            f"the serving file predates history readers ({exc}): publish or rebuild it"
        ) from None
    except BaseException:
        con.close()
        raise
    return con


def run_at(con: duckdb.DuckDBPyConnection, model: str, at: Any) -> str:
    """The run `model` served at `at` (a time), on a history connection; NotFoundError if none yet."""
    (row,) = con.execute("SELECT published_run_at($model, $at)", {"model": model, "at": at}).fetchall()
    if row[0] is None:
        (first,) = con.execute('SELECT min("at") FROM publications WHERE model = ?', [model]).fetchall()
        if first[0] is None:
            models = [str(m) for (m,) in con.execute("SELECT DISTINCT model FROM published_runs").fetchall()]
            raise NotFoundError("published model", model, sorted(models))
        raise NotFoundError(f"published run of model {model!r} at {at}", str(at), [f"from {first[0]}"])
    return str(row[0])
