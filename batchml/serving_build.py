"""The prediction tables of a new serving file, copied from the previous file where it already holds a run.

A prediction run is immutable, so its rows in the previous serving file are the rows of its Parquet files.
While building, the previous file is attached read-only as `previous`, and a run's rows are copied from it
(already sorted, no re-read of Parquet) when a table there has today's columns and holds exactly the run
manifest's row count; anything else (no previous file, an older layout, an attach error, a count mismatch)
reads the run files, as a full build (`full=True`, `batchml catalog rebuild`) always does. Storage stays the
truth: the cache only saves reading and sorting, and never fails a publish.

    predictions          the current run of each model on the published channel, sorted by (model, entity_id)
    predictions_staging  the same for the staging channel
    past_predictions     every other run ever published on the published channel
    prediction_history   VIEW: predictions UNION ALL past_predictions (inside the file: readers need no files)
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb

from batchml.publications import PublicationLog
from batchml.scoring import PredictionRun, get_run
from batchml.storage import Storage

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = (
    "model, model_version, CAST(entity_id AS VARCHAR) AS entity_id, prediction, predicted_class, "
    "dataset_version, code_version, run_id, scored_at, input_hash, reasons, flags"
)
#: Columns of every prediction table, as DuckDB names their types (a previous file's tables must match).
PREDICTION_SCHEMA = [
    ("model", "VARCHAR"), ("model_version", "BIGINT"), ("entity_id", "VARCHAR"), ("prediction", "DOUBLE"),
    ("predicted_class", "VARCHAR"), ("dataset_version", "VARCHAR"), ("code_version", "VARCHAR"),
    ("run_id", "VARCHAR"), ("scored_at", "TIMESTAMP WITH TIME ZONE"), ("input_hash", "UBIGINT"),
    ("reasons", "VARCHAR[]"), ("flags", "VARCHAR[]"),
]  # fmt: skip
EMPTY_PREDICTIONS = "CREATE TABLE {table} (" + ", ".join(f"{n} {t}" for n, t in PREDICTION_SCHEMA) + ")"
HISTORY_VIEW = """CREATE VIEW prediction_history AS
    SELECT * FROM predictions UNION ALL SELECT * FROM past_predictions"""
#: Tables of a previous serving file that may hold a run's rows. Each stores a run's rows together, sorted by
#: entity_id, so a copy (scan order is kept: preserve_insertion_order) needs no sort. An older file's
#: prediction_history table is not sorted that way and is not used.
_SOURCES = ("predictions", "predictions_staging", "past_predictions")
_PREVIOUS = "previous"


def literal(text: str) -> str:
    """`text` as a quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def run_files_sql(storage: Storage, runs: list[PredictionRun], verify: bool) -> str | None:
    """`SELECT ... FROM read_parquet([...])` over the files of `runs`, or None if there are none."""
    uris = []
    for run in runs:
        for entry in run.files:
            if verify:
                storage.verify(entry)
            uris.append(literal(storage.uri(entry.path)))
    if not uris:
        return None
    return f"SELECT {PREDICTION_COLUMNS} FROM read_parquet([{', '.join(uris)}], union_by_name = true)"


def _columns(con: duckdb.DuckDBPyConnection, database: str, table: str) -> list[tuple[str, str]]:
    """Names and types of base table `table` (not a view) of `database`; empty if there is none."""
    sql = """SELECT c.column_name, c.data_type FROM duckdb_columns() c JOIN duckdb_tables() t
        USING (database_name, schema_name, table_name)
        WHERE database_name = ? AND schema_name = 'main' AND table_name = ? ORDER BY c.column_index"""
    return [(str(n), str(t)) for n, t in con.execute(sql, [database, table]).fetchall()]


class PreviousFile:
    """The previous serving file attached read-only to the building connection, as a source of run rows."""

    def __init__(self, con: duckdb.DuckDBPyConnection, sources: list[str], attached: bool) -> None:
        self.con = con
        self.sources = sources  # tables of the previous file with today's columns
        self.attached = attached

    @classmethod
    def attach(cls, con: duckdb.DuckDBPyConnection, path: Path | None) -> PreviousFile:
        """Attach `path` (None or missing: nothing to reuse); tables with other columns are left unused."""
        if path is None or not path.is_file():
            return cls(con, [], attached=False)
        try:
            con.execute(f"ATTACH {literal(str(path))} AS {_PREVIOUS} (READ_ONLY)")
        except duckdb.Error as exc:
            log.info("not reusing previous serving file %s: %s", path.name, exc)
            return cls(con, [], attached=False)
        try:
            sources = [t for t in _SOURCES if _columns(con, _PREVIOUS, t) == PREDICTION_SCHEMA]
        except duckdb.Error as exc:
            log.info("not reusing previous serving file %s: %s", path.name, exc)
            sources = []
        log.debug("reusing tables %s of %s", sources, path.name)
        return cls(con, sources, attached=True)

    def copy(self, table: str, run: PredictionRun) -> bool:
        """Append `run`'s rows from the previous file to `table` if they are there in full; True if done."""
        where = f"WHERE model = {literal(run.model)} AND run_id = {literal(run.run_id)}"
        for source in self.sources:
            try:
                # zone maps on model/run_id skip the row groups of other runs: a cheap check
                found = self.con.execute(f"SELECT count(*) FROM {_PREVIOUS}.{source} {where}").fetchone()
                if not found or not found[0]:
                    continue
                if found[0] != run.rows:
                    log.info("previous %s: %d rows of run %s, not %d", source, found[0], run.run_id, run.rows)
                    continue
                self.con.execute(f"INSERT INTO {table} SELECT * FROM {_PREVIOUS}.{source} {where}")
                return True
            except duckdb.Error as exc:  # a failed INSERT is rolled back whole: the run files fill it instead
                log.info("could not copy run %s from previous %s: %s", run.run_id, source, exc)
                return False
        return False

    def detach(self) -> None:
        """Detach the previous file (before the new one is checkpointed and closed)."""
        if self.attached:
            self.con.execute(f"DETACH {_PREVIOUS}")
            self.attached = False


def create_current_table(
    con: duckdb.DuckDBPyConnection, storage: Storage, channel: PublicationLog, table: str, prev: PreviousFile
) -> None:
    """`table` = the current run of every model on `channel`, sorted by (model, entity_id) for point lookups.

    Filled model by model in name order, each model's rows sorted by entity_id: the same order as one global
    sort, without sorting the rows of all models at once.
    """
    con.execute(EMPTY_PREDICTIONS.format(table=table))
    for model in sorted(channel.models()):
        run_id = channel.current(model)
        if run_id is None:
            continue
        run = get_run(storage, model, run_id)
        if prev.copy(table, run):
            continue
        select = run_files_sql(storage, [run], verify=True)
        if select:
            con.execute(f"INSERT INTO {table} SELECT * FROM ({select}) ORDER BY entity_id")


def create_past_table(
    con: duckdb.DuckDBPyConnection, storage: Storage, publications: PublicationLog, previous: PreviousFile
) -> None:
    """`past_predictions` = rows of every run ever published per model that is not its current run now."""
    con.execute(EMPTY_PREDICTIONS.format(table="past_predictions"))
    for model in sorted(publications.models()):
        current = publications.current(model)
        ever = dict.fromkeys(e["run_id"] for e in publications.events(model) if e.get("run_id"))
        runs = [get_run(storage, model, run_id) for run_id in ever if run_id != current]
        missing = [run for run in runs if not previous.copy("past_predictions", run)]
        # one read over a model's runs (union_by_name fills columns older runs lack), each run's rows together
        # and sorted, as in `predictions`: later copies need no sort, and lookups by entity skip row groups
        select = run_files_sql(storage, missing, verify=False)
        if select:
            con.execute(f"INSERT INTO past_predictions SELECT * FROM ({select}) ORDER BY run_id, entity_id")
