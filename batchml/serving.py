"""The serving DuckDB file that downstream apps read, built from storage and swapped in atomically.

Every publish builds a brand-new file (`serving-<time>-<id>.duckdb`) from the records in storage, then flips
the symlink `batchml.duckdb` to it with one `os.replace`. Readers open the link read-only and keep the file
they opened; no writer ever touches a file a reader may hold (DESIGN.md invariant 3). Old files are removed
after a grace period.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from batchml.catalog import build_tables
from batchml.errors import NotFoundError
from batchml.publications import PublicationLog
from batchml.redact import redact_url
from batchml.scoring import get_run
from batchml.storage import Storage
from batchml.validation import EMPTY_QUARANTINE, quarantine_sql

log = logging.getLogger(__name__)

SERVING_FILE = "batchml.duckdb"
GRACE_SECONDS = 3600.0
#: DuckDB's own cap while building (it spills the sort to disk beyond it), so publishing a table of any size
#: stays within bounded memory instead of DuckDB's default of 80% of RAM.
BUILD_MEMORY_LIMIT = "256MB"
#: Reader connections: no file access beyond the open database (no read_csv/COPY/ATTACH/INSTALL/LOAD), and
#: settings locked so that SET/PRAGMA cannot turn it back on.
READER_CONFIG = {"enable_external_access": False, "lock_configuration": True}
_PREDICTION_COLUMNS = (
    "model, model_version, CAST(entity_id AS VARCHAR) AS entity_id, prediction, predicted_class, "
    "dataset_version, code_version, run_id, scored_at, input_hash, reasons, flags"
)
_EMPTY_PREDICTIONS = """CREATE TABLE {table} (model VARCHAR, model_version BIGINT, entity_id VARCHAR,
    prediction DOUBLE, predicted_class VARCHAR, dataset_version VARCHAR, code_version VARCHAR, run_id VARCHAR,
    scored_at TIMESTAMPTZ, input_hash UBIGINT, reasons VARCHAR[], flags VARCHAR[])"""
_ALIAS_AT = """CREATE MACRO alias_at(model_name, alias_name, at_time) AS (
    SELECT to_version FROM alias_events
    WHERE model = model_name AND alias = alias_name AND "at" <= CAST(at_time AS TIMESTAMPTZ)
    ORDER BY seq DESC LIMIT 1)"""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _run_files_sql(storage: Storage, model: str, run_ids: list[str], verify: bool) -> str | None:
    """`SELECT ... FROM read_parquet([...])` over the files of the given runs, or None if there are none."""
    uris = []
    for run_id in run_ids:
        for entry in get_run(storage, model, run_id).files:
            if verify:
                storage.verify(entry)
            uris.append(_literal(storage.uri(entry.path)))
    if not uris:
        return None
    return f"SELECT {_PREDICTION_COLUMNS} FROM read_parquet([{', '.join(uris)}], union_by_name = true)"


@contextlib.contextmanager
def _build_lock(serving_dir: Path) -> Iterator[None]:
    """One builder at a time per serving folder, so the last flip always reflects the latest records."""
    serving_dir.mkdir(parents=True, exist_ok=True)
    with open(serving_dir / ".build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _create_current_table(
    con: duckdb.DuckDBPyConnection, storage: Storage, log: PublicationLog, table: str
) -> None:
    """`table` = the current run of every model on `log`'s channel, sorted for point lookups."""
    selects = []
    for model in log.models():
        run_id = log.current(model)
        selects.append(_run_files_sql(storage, model, [run_id] if run_id else [], verify=True))
    union = " UNION ALL ".join(f"({s})" for s in selects if s)
    if union:
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM ({union}) ORDER BY model, entity_id")
    else:
        con.execute(_EMPTY_PREDICTIONS.format(table=table))


def _create_quarantine_table(con: duckdb.DuckDBPyConnection, storage: Storage, log: PublicationLog) -> None:
    """`quarantine` = the rows each model's published run did not score (entity id, column, rule, value)."""
    uris = []
    for model in log.models():
        run_id = log.current(model)
        for entry in get_run(storage, model, run_id).quarantine_files if run_id else []:
            storage.verify(entry)
            uris.append(_literal(storage.uri(entry.path)))
    select = quarantine_sql(uris)
    sql = f"CREATE TABLE quarantine AS {select} ORDER BY model, entity_id" if select else EMPTY_QUARANTINE
    con.execute(sql)


def _write_database(storage: Storage, path: Path) -> None:
    publications = PublicationLog(storage)
    con = duckdb.connect(str(path))
    try:
        con.execute(f"SET memory_limit = {_literal(BUILD_MEMORY_LIMIT)}")
        con.execute(f"SET temp_directory = {_literal(str(path.parent / '.spill'))}")
        if not storage.is_local:
            con.register_filesystem(storage.fs)
        for name, table in build_tables(storage).items():
            con.register("_records", table)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM _records")
            con.unregister("_records")
        _create_current_table(con, storage, publications, "predictions")
        _create_current_table(con, storage, PublicationLog(storage, "staging"), "predictions_staging")
        _create_quarantine_table(con, storage, publications)
        history = []
        for model in publications.models():
            ever = list(dict.fromkeys(e["run_id"] for e in publications.events(model)))
            history.append(_run_files_sql(storage, model, ever, verify=False))
        past = [s for s in history if s]
        body = " UNION ALL ".join(f"({s})" for s in past) if past else "SELECT * FROM predictions WHERE false"
        # A table, not a view over the run files: readers need no file access at all (see connect_serving).
        con.execute(f"CREATE TABLE prediction_history AS {body}")
        con.execute(_ALIAS_AT)
        con.execute(
            "CREATE TABLE serving_info AS SELECT ? AS storage, ? AS built_at, ? AS file",
            [redact_url(storage.url), datetime.now(UTC), path.name],
        )
        con.execute("CHECKPOINT")
    finally:
        con.close()


def _collect_old_files(serving_dir: Path, keep: Path, grace_seconds: float) -> None:
    cutoff = time.time() - grace_seconds
    for old in serving_dir.glob("serving-*.duckdb*"):
        if old.name.startswith(keep.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            if old.stat().st_mtime < cutoff:
                old.unlink()


def build_serving_db(storage: Storage, serving_dir: Path, grace_seconds: float = GRACE_SECONDS) -> Path:
    """Build a new serving file from storage and atomically make it the current one; return its path."""
    with _build_lock(serving_dir):
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        final = serving_dir / f"serving-{stamp}-{uuid.uuid4().hex[:8]}.duckdb"
        building = serving_dir / f".building-{final.name}"
        try:
            _write_database(storage, building)
            os.replace(building, final)
        finally:
            building.unlink(missing_ok=True)
        link_tmp = serving_dir / f".link-{uuid.uuid4().hex}"
        os.symlink(final.name, link_tmp)
        os.replace(link_tmp, serving_dir / SERVING_FILE)  # the atomic flip readers see
        _collect_old_files(serving_dir, final, grace_seconds)
    log.info("serving database now %s", final)
    return final


def serving_path(serving_dir: Path) -> Path:
    """The documented path readers open: a symlink to the current serving file."""
    return serving_dir / SERVING_FILE


def connect_serving(serving_dir: Path, storage: Storage | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the current serving file (open it once and reuse it: ~15 ms to open)."""
    link = serving_path(serving_dir)
    if not link.exists():
        raise NotFoundError("serving database", str(link), ["none yet: publish a prediction run first"])
    del storage  # every table is inside the file: readers need no access to the store
    return duckdb.connect(str(link.resolve()), read_only=True, config=dict(READER_CONFIG))
