"""The prediction tables of a new serving file: one table per prediction run, and views over them.

    run__<model>__<run_id>  a run's rows sorted by entity_id (zone maps make a point lookup ~1 ms); the
                            run's constants (model, model_version, dataset_version, code_version, run_id,
                            scored_at) are VIRTUAL generated columns, so every run table has the full
                            prediction columns while storing only the per-row ones
    predictions             VIEW: the current run of each model on the published channel, in model order
    predictions_staging     VIEW: the same for the staging channel
    past_predictions        VIEW: every other run ever published on the published channel
    prediction_history      VIEW: predictions UNION ALL past_predictions

Everything readers query is inside the file (they have no file access). A run is immutable, so while building,
the previous serving file is attached read-only and a run table found there with today's columns is copied,
and kept only if the copy has the content checksum the run's manifest records (`run_checksum`: row count and a
hash over every stored value). Runs committed before reasons carried contributions stored `reasons` as names
only (VARCHAR[]); their tables hold them converted, each contribution NULL. Anything else (no previous file,
an older layout, an attach error, a checksum that differs or cannot be compared) reads the run's Parquet
files, as a full build (`full=True`) always does. Storage stays the truth: the previous file only saves
reading and sorting, and never fails a publish; an edit made to it does not survive the next build.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb

from batchml.scoring.publications import PublicationLog
from batchml.scoring.run_checksum import REASONS_TYPE, STORED_TYPES, incomparable, mismatch, table_checksum
from batchml.scoring.runs import PredictionRun, get_run
from batchml.store.storage import Storage

log = logging.getLogger(__name__)

#: Columns of every prediction table and view, as DuckDB names their types.
PREDICTION_SCHEMA = [
    ("model", "VARCHAR"), ("model_version", "BIGINT"), ("entity_id", "VARCHAR"), ("prediction", "DOUBLE"),
    ("predicted_class", "VARCHAR"), ("dataset_version", "VARCHAR"), ("code_version", "VARCHAR"),
    ("run_id", "VARCHAR"), ("scored_at", "TIMESTAMP WITH TIME ZONE"), ("input_hash", "UBIGINT"),
    ("reasons", REASONS_TYPE), ("flags", "VARCHAR[]"),
]  # fmt: skip
#: The columns stored per row (the others are the run's constants) and how they are read from run files.
STORED = tuple(STORED_TYPES)
_READ = "CAST(entity_id AS VARCHAR) AS entity_id, prediction, predicted_class, input_hash, reasons, flags"
#: Runs committed before reasons carried contributions stored names only (VARCHAR[]): same order, the
#: contribution NULL (unknown, not zero).
_LEGACY_REASONS = (
    "list_transform(reasons, lambda r: {'feature': r, 'contribution': NULL::DOUBLE})"
    f"::{REASONS_TYPE} AS reasons"
)
_EMPTY = "SELECT " + ", ".join(f"CAST(NULL AS {t}) AS {n}" for n, t in PREDICTION_SCHEMA) + " WHERE false"
_PREVIOUS = "previous"


def literal(text: str) -> str:
    """`text` as a quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def run_table(run: PredictionRun) -> str:
    """The quoted name of `run`'s table (model and run id are validated names: no quotes inside)."""
    return f'"run__{run.model}__{run.run_id}"'


def run_files_sql(storage: Storage, runs: list[PredictionRun], verify: bool) -> str | None:
    """`SELECT <stored columns> FROM read_parquet([...])` over the files of `runs`, or None if none."""
    uris = []
    for run in runs:
        for entry in run.files:
            if verify:
                storage.verify(entry)
            uris.append(literal(storage.uri(entry.path)))
    if not uris:
        return None
    return f"SELECT {_READ} FROM read_parquet([{', '.join(uris)}], union_by_name = true)"


def _create_run_table(con: duckdb.DuckDBPyConnection, run: PredictionRun) -> None:
    m = run.manifest
    constants = {
        "model": literal(run.model),
        "model_version": str(int(m["model_version"])),
        "dataset_version": literal(str(m["dataset_version"])),
        "code_version": literal(str(m["code_version"])),
        "run_id": literal(run.run_id),
        "scored_at": literal(str(m["scored_at"])),
    }
    columns = [
        f"{name} {kind} GENERATED ALWAYS AS (CAST({constants[name]} AS {kind})) VIRTUAL"
        if name in constants
        else f"{name} {kind}"
        for name, kind in PREDICTION_SCHEMA
    ]
    con.execute(f"CREATE TABLE {run_table(run)} ({', '.join(columns)})")


class PreviousFile:
    """The previous serving file attached read-only to the building connection, as a source of run rows."""

    def __init__(self, con: duckdb.DuckDBPyConnection, tables: set[str], attached: bool) -> None:
        self.con = con
        self.tables = tables  # quoted names of its run tables that have today's columns
        self.attached = attached

    @classmethod
    def attach(cls, con: duckdb.DuckDBPyConnection, path: Path | None) -> PreviousFile:
        """Attach `path` (None or missing: nothing to reuse); run tables with other columns stay unused."""
        if path is None or not path.is_file():
            return cls(con, set(), attached=False)
        try:
            con.execute(f"ATTACH {literal(str(path))} AS {_PREVIOUS} (READ_ONLY)")
        except duckdb.Error as exc:
            log.info("not reusing previous serving file %s: %s", path.name, exc)
            return cls(con, set(), attached=False)
        columns: dict[str, list[tuple[str, str]]] = {}
        sql = """SELECT table_name, column_name, data_type FROM duckdb_columns()
            WHERE database_name = ? AND schema_name = 'main' AND starts_with(table_name, 'run__')
            ORDER BY table_name, column_index"""
        for table, name, kind in con.execute(sql, [_PREVIOUS]).fetchall():
            columns.setdefault(f'"{table}"', []).append((str(name), str(kind)))
        return cls(con, {t for t, found in columns.items() if found == PREDICTION_SCHEMA}, attached=True)

    def copy(self, run: PredictionRun) -> bool:
        """Fill `run`'s new table from the previous file if it holds the run unchanged; True if done."""
        table = run_table(run)
        if table not in self.tables:
            return False
        recorded = run.manifest.get("content_checksum") or {}
        why = incomparable(recorded)
        if why:
            log.info("not copying run %s from the previous serving file: %s", run.run_id, why)
            return False
        stored = ", ".join(STORED)  # scan order is kept (preserve_insertion_order): still sorted
        self.con.begin()
        try:
            self.con.execute(f"INSERT INTO {table} ({stored}) SELECT {stored} FROM {_PREVIOUS}.{table}")
            why = mismatch(recorded, table_checksum(self.con, table, str(recorded["function"])))
        except duckdb.Error as exc:
            why = f"could not copy it: {exc}"
        if why:  # rolled back whole: the run files fill the table instead
            self.con.rollback()
            log.warning("run %s in the previous serving file: %s; reading its files", run.run_id, why)
            return False
        self.con.commit()
        return True

    def detach(self) -> None:
        """Detach the previous file (before the new one is checkpointed and closed)."""
        if self.attached:
            self.con.execute(f"DETACH {_PREVIOUS}")
            self.attached, self.tables = False, set()


def _stores_names_only(con: duckdb.DuckDBPyConnection, select: str) -> bool:
    """Whether the run files `select` reads store reasons as names only (runs from before contributions)."""
    described = con.execute(f"DESCRIBE SELECT reasons FROM ({select})").fetchone()
    return described is not None and str(described[1]) == "VARCHAR[]"


def _place_run(
    con: duckdb.DuckDBPyConnection, storage: Storage, run: PredictionRun, previous: PreviousFile, verify: bool
) -> None:
    _create_run_table(con, run)
    if previous.copy(run):
        return
    select = run_files_sql(storage, [run], verify=verify)
    if select and _stores_names_only(con, select):
        select = f"SELECT * REPLACE ({_LEGACY_REASONS}) FROM ({select})"
    if select:
        stored = ", ".join(STORED)
        con.execute(f"INSERT INTO {run_table(run)} ({stored}) SELECT * FROM ({select}) ORDER BY entity_id")


def _view(con: duckdb.DuckDBPyConnection, name: str, runs: list[PredictionRun]) -> None:
    body = " UNION ALL ".join(f"SELECT * FROM {run_table(r)}" for r in runs) or _EMPTY
    con.execute(f"CREATE VIEW {name} AS {body}")


def create_prediction_tables(
    con: duckdb.DuckDBPyConnection, storage: Storage, previous: PreviousFile
) -> None:
    """Every run table the views need (current, staged and past runs), then the views over them."""
    published, staging = PublicationLog(storage), PublicationLog(storage, "staging")
    current, staged, past = [], [], []
    for model in sorted(published.models()):
        now = published.current(model)
        current += [get_run(storage, model, now)] if now else []
        ever = dict.fromkeys(e["run_id"] for e in published.events(model) if e.get("run_id"))
        past += [get_run(storage, model, run_id) for run_id in ever if run_id != now]
    for model in sorted(staging.models()):
        run_id = staging.current(model)
        staged += [get_run(storage, model, run_id)] if run_id else []
    placed: set[str] = set()
    for runs, verify in ((current, True), (staged, True), (past, False)):
        for run in runs:
            if run_table(run) not in placed:
                _place_run(con, storage, run, previous, verify)
                placed.add(run_table(run))
    _view(con, "predictions", current)
    _view(con, "predictions_staging", staged)
    _view(con, "past_predictions", past)
    con.execute(
        "CREATE VIEW prediction_history AS SELECT * FROM predictions UNION ALL SELECT * FROM past_predictions"
    )
