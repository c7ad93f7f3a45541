"""The serving DuckDB file that downstream apps read, built from storage and swapped in atomically.

Every publish builds a brand-new file (`serving-<time>-<id>.duckdb`) from the records in storage, then flips
the symlink `batchml.duckdb` to it with one `os.replace`. Readers open the link read-only and keep the file
they opened; no writer ever touches a file a reader may hold (DESIGN.md invariant 3). Old files are removed
after a grace period (`pointer`). Runs the current file already holds are copied from it (see
`prediction_tables`). With object storage the new file is also committed there as a snapshot, so that any
host can fetch it (`snapshots`).
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from batchml.checks.validation import EMPTY_QUARANTINE, quarantine_sql
from batchml.redact import redact_url
from batchml.scoring.publications import PublicationLog
from batchml.scoring.runs import get_run
from batchml.serving.catalog import build_tables
from batchml.serving.experiments import ASSIGNMENTS_VIEW
from batchml.serving.logstate import (
    LOOKUP_FILES,
    SIZED_FOR,
    LogState,
    log_state,
    served_state,
    write_state,
    write_state_file,
)
from batchml.serving.lookup_files import write_lookup_files
from batchml.serving.pointer import GRACE_SECONDS, install, new_serving_file, serving_lock
from batchml.serving.prediction_tables import PreviousFile, create_prediction_tables, literal
from batchml.serving.publish_timing import RUN_STATS_VIEW, add_own_rows, newly_served, record_publish_timings
from batchml.serving.publish_timing import TABLE as TIMINGS
from batchml.serving.readers import SERVING_FILE
from batchml.serving.run_tables import READER_MEMORY_LIMIT, count_indexed_rows
from batchml.serving.snapshots import commit_snapshot
from batchml.sizes import size_bytes
from batchml.store.storage import Storage

log = logging.getLogger(__name__)

#: DuckDB's own cap while building (it spills the sort to disk beyond it), so publishing a table of any size
#: stays within bounded memory instead of DuckDB's default of 80% of RAM.
BUILD_MEMORY_LIMIT = "256MB"
#: The storage version serving files are written in: the oldest DuckDB that reads it is the long-term-support
#: release 1.4 (DESIGN.md invariant 10). DuckDB 2.0's own default (version 69) is refused by 1.4, the 1.5
#: CLI and the Node client; 'v1.4.0' keeps views, macros and virtual columns readable by them.
SERVING_STORAGE_VERSION = "v1.4.0"
#: The version an alias held at a time: the same replay as `RegistryReader.aliases(at=...)`, i.e. the holder
#: after the longest prefix of the model's log stamped no later than `at_time` (`version_after` is replayed).
_ALIAS_AT = """CREATE MACRO alias_at(model_name, alias_name, at_time) AS (
    SELECT version_after FROM alias_events
    WHERE model = model_name AND alias = alias_name AND seq < coalesce((
        SELECT min(seq) FROM alias_events
        WHERE model = model_name AND "at" > CAST(at_time AS TIMESTAMPTZ)), 9223372036854775807)
    ORDER BY seq DESC LIMIT 1)"""


def _create_quarantine_table(con: duckdb.DuckDBPyConnection, storage: Storage, log: PublicationLog) -> None:
    """`quarantine` = the rows each model's published run did not score (entity id, column, rule, value)."""
    uris = []
    for model in log.models():
        run_id = log.current(model)
        for entry in get_run(storage, model, run_id).quarantine_files if run_id else []:
            storage.verify(entry)
            uris.append(literal(storage.uri(entry.path)))
    select = quarantine_sql(uris)
    sql = f"CREATE TABLE quarantine AS {select} ORDER BY model, entity_id" if select else EMPTY_QUARANTINE
    con.execute(sql)


def _write_database(
    storage: Storage,
    path: Path,
    final: Path,
    previous_path: Path | None,
    before: LogState | None,
    started: float,
    reader_memory_limit: str,
) -> tuple[LogState, list[dict[str, Any]]]:
    """Write every serving table into the new file `path` (to become `final`), copying runs from
    `previous_path` where it can. `before`: the log state the current file reflects; `started`: when the
    build began (`time.perf_counter`); `reader_memory_limit`: the readers its indexes are sized for.

    Returns the state of the event logs the file reflects and its own publish timing rows
    (`publish_timing`)."""
    state = log_state(storage)  # before reading any log: the file reflects at least this state
    publications = PublicationLog(storage)
    con = duckdb.connect(str(path), config={"storage_compatibility_version": SERVING_STORAGE_VERSION})
    try:
        con.execute(f"SET memory_limit = {literal(BUILD_MEMORY_LIMIT)}")
        con.execute(f"SET temp_directory = {literal(str(path.parent / '.spill'))}")
        if not storage.is_local:
            con.register_filesystem(storage.fs)
        for name, table in build_tables(storage).items():
            con.register("_records", table)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM _records")
            con.unregister("_records")
        previous = PreviousFile.attach(con, previous_path)
        try:  # tables inside this file, not views over the run files: readers need no file access at all
            create_prediction_tables(con, storage, previous, reader_memory_limit)
        finally:
            previous.detach()
        _create_quarantine_table(con, storage, publications)
        con.execute(_ALIAS_AT)
        con.execute(RUN_STATS_VIEW)
        con.execute(ASSIGNMENTS_VIEW)
        built_at = datetime.now(UTC)
        con.execute(  # the reader memory it was sized for: a reader can tell whether it holds the indexes
            "CREATE TABLE serving_info AS SELECT ? AS storage, ? AS built_at, ? AS file, "
            "? AS reader_memory_limit, CAST(? AS BIGINT) AS reader_memory_bytes, "
            "CAST(? AS BIGINT) AS indexed_rows",
            [redact_url(storage.url), built_at, final.name, reader_memory_limit,
             size_bytes(reader_memory_limit), count_indexed_rows(con)],
        )  # fmt: skip
        write_state(con, state)
        con.execute("CHECKPOINT")
        # The publish time is measured up to here (the data is on disk); what follows is a few rows.
        seconds = time.perf_counter() - started
        timings = add_own_rows(con, newly_served(before, state), seconds, final.name, built_at)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return state, timings


def build_serving_db(
    storage: Storage,
    serving_dir: Path,
    grace_seconds: float = GRACE_SECONDS,
    *,
    full: bool = False,
    reader_memory_limit: str = READER_MEMORY_LIMIT,
    lookup_files: bool = True,
) -> Path:
    """Build a new serving file from storage and atomically make it the current one; return its path.

    Its run tables are indexed while a reader with `reader_memory_limit` (the project's `[serving]` setting)
    can hold every index of the file; the file records that limit (`serving_info`, and beside it). With
    `lookup_files` (`[serving] lookup_files`) each run table gets its lookup files beside the file
    (`lookup_files`): written for new runs, linked for the runs the current file has (written anew with
    `full`, as its tables are).

    Runs the current serving file already holds are copied from it (checked against the content checksums
    in their manifests) instead of re-read from their Parquet files; `full=True` reads everything from
    storage. The new file is read-only on disk before it becomes current.
    """
    with serving_lock(serving_dir):
        started = time.perf_counter()
        link = serving_dir / SERVING_FILE
        current = link.resolve() if link.exists() else None
        if current is not None:  # a crash after its flip may have kept its publish times from storage
            record_publish_timings(storage, current)
        previous = None if full else current
        final = new_serving_file(serving_dir, uuid.uuid4().hex[:8])
        building = serving_dir / f".building-{final.name}"
        try:
            before = served_state(serving_dir)
            state, timings = _write_database(
                storage, building, final, previous, before, started, reader_memory_limit
            )
            # Before the file: whoever finds the file finds its state (and its publish times, see
            # `publish_timing`: they become storage records once the file is current), and the readers
            # it was sized for (`operations` rebuilds a file sized for others).
            if lookup_files:  # before the file too: a reader that finds the file finds them
                write_lookup_files(building, final, previous)  # `full`: all written anew, none linked
            recorded = {TIMINGS: timings, SIZED_FOR: reader_memory_limit, LOOKUP_FILES: lookup_files}
            write_state_file(final, state, **recorded)
            install(serving_dir, building, final, grace_seconds)
        finally:
            building.unlink(missing_ok=True)
        record_publish_timings(storage, final)
        if not storage.is_local:  # for other hosts; under the lock, so one commit at a time
            commit_snapshot(storage, serving_dir)
    log.info("serving database now %s", final)
    return final
