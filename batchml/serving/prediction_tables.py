"""The prediction tables of a new serving file: the runs apps read now, not every run ever published.

    run__<model>__<run_id>  the per-row columns (entity_id, prediction, predicted_class, input_hash, reasons,
                            flags) of each model's current published run and of its staged run, sorted by
                            entity_id, with an ART index on entity_id (a point lookup reads one leaf, not a
                            row group) while the file's indexes fit the memory of a reader with the
                            project's `[serving] reader_memory_limit` (`_indexed`; the sorted rows' zone
                            maps serve the others). The run's
                            constants (model, model_version, dataset_version, code_version, run_id,
                            scored_at) are literals in the views below, not stored per row; not VIRTUAL
                            generated columns: DuckDB 1.4 never uses the index of a table that has one
    predictions             VIEW: the current run of each model on the published channel, in model order
    predictions_staging     VIEW: the same for the staging channel
    published_runs          TABLE: one row per run ever published on the published channel, with its
                            constants and the storage paths of its Parquet files (what history readers open)

So a publish costs the new run and the catalog, never the history (DESIGN.md invariant 9): a run that is no
longer current or staged leaves the file, and `prediction_history` / `past_predictions` / `prediction_at`
exist only on a history connection (`batchml.connect(history=True)`, see `batchml.serving.history`), which
reads the runs named by `published_runs` from their immutable files in storage.

Everything plain readers query is inside the file (they have no file access). A run is immutable, so while
building, the previous serving file is attached read-only and a run table found there with today's columns is
copied if it has the content checksum the run's manifest records (`run_checksum`: row count and a hash over
every stored value). Runs committed before reasons carried contributions stored
`reasons` as names only (VARCHAR[]); their tables hold them converted, each contribution NULL. Anything else
(no previous file, an older layout, an attach error, a checksum that differs or cannot be compared) reads the
run's Parquet files, as a full build (`full=True`) always does. Storage stays the truth: the previous file
only saves reading and sorting, and never fails a publish; an edit made to it does not survive the next build.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb

from batchml.scoring.publications import PublicationLog
from batchml.scoring.run_checksum import (
    LEGACY_FUNCTION,
    REASONS_TYPE,
    STORED_TYPES,
    incomparable,
    mismatch,
    table_checksum,
)
from batchml.scoring.runs import PredictionRun, get_run
from batchml.serving import canary, experiments
from batchml.serving.canary import CONTROL, bucket_sql
from batchml.serving.indexed_fill import fill, indexed_tables, row_ranges, sorted_rows, using_threads
from batchml.serving.run_tables import READER_MEMORY_LIMIT, run_table_name
from batchml.serving.run_tables import literal as literal  # re-exported: the serving modules' SQL quoting
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
STORED_SCHEMA = list(STORED_TYPES.items())
#: Stored as they are, not compressed: a lookup through the ART index fetches each row it finds on its own,
#: and DuckDB decodes a compressed segment (DICT_FSST strings, ALPRD doubles) for every row fetched that way:
#: ~10-25 us per row and column, 5-20x an uncompressed fetch. That made an index lookup of 2,048 ids cost
#: ~55 ms instead of ~8 ms (10M rows; see README "Serving benchmark"); the file grows by ~27%. The nested
#: reasons and flags stay compressed (mostly empty: RLE).
UNCOMPRESSED = ("entity_id", "prediction", "predicted_class", "input_hash")
#: The run's constants, the same for every row (literals in the views, not stored).
CONSTANTS = ("model", "model_version", "dataset_version", "code_version", "run_id", "scored_at")
_READ = "CAST(entity_id AS VARCHAR) AS entity_id, prediction, predicted_class, input_hash, reasons, flags"
#: Runs committed before reasons carried contributions stored names only (VARCHAR[]): same order, the
#: contribution NULL (unknown, not zero).
LEGACY_REASONS = (
    "CAST(list_transform(reasons, lambda r: {'feature': r, 'contribution': NULL::DOUBLE}) "
    f"AS {REASONS_TYPE})"
)
#: `published_runs`: a run's constants, rows, whether it stores reasons as names only, its files' paths.
PUBLISHED_RUNS = (
    "model VARCHAR, model_version BIGINT, dataset_version VARCHAR, code_version VARCHAR, run_id VARCHAR, "
    "scored_at TIMESTAMP WITH TIME ZONE, rows BIGINT, reasons_names_only BOOLEAN, files VARCHAR[]"
)
_EMPTY = "SELECT " + ", ".join(f"CAST(NULL AS {t}) AS {n}" for n, t in PREDICTION_SCHEMA) + " WHERE false"
_PREVIOUS = "previous"


def run_table(run: PredictionRun) -> str:
    """The quoted name of `run`'s table (model and run id are validated names: no quotes inside)."""
    return run_table_name(run.model, run.run_id)


def run_constants(run: PredictionRun) -> dict[str, Any]:
    """The values of `run`'s constant columns, from its manifest."""
    m = run.manifest
    return {
        "model": run.model,
        "model_version": int(m["model_version"]),
        "dataset_version": str(m["dataset_version"]),
        "code_version": str(m["code_version"]),
        "run_id": run.run_id,
        "scored_at": str(m["scored_at"]),
    }


def prediction_select(
    constants: dict[str, Any],
    source: str,
    expressions: dict[str, str] | None = None,
    variant: str | None = None,
) -> str:
    """`SELECT <every prediction column> FROM source`: the constants as typed literals, in schema order.

    `expressions` gives a stored column's SQL where it is not the column itself; `variant`, if given, is
    the SQL of one more column, `variant` (the arm that served the row: `predictions` and history only).
    """
    given = expressions or {}
    columns = [
        f"CAST({literal(str(constants[name]))} AS {kind}) AS {name}"
        if name in constants
        else f"{given[name]} AS {name}"
        if name in given
        else name
        for name, kind in PREDICTION_SCHEMA
    ]
    if variant is not None:
        columns.append(f"CAST({variant} AS VARCHAR) AS variant")
    return f"SELECT {', '.join(columns)} FROM {source}"


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
    columns = ", ".join(
        f"{name} {kind}" + (" USING COMPRESSION uncompressed" if name in UNCOMPRESSED else "")
        for name, kind in STORED_SCHEMA
    )
    con.execute(f"CREATE TABLE {run_table(run)} ({columns})")


class PreviousFile:
    """The previous serving file attached read-only to the building connection, as a source of run rows."""

    def __init__(self, con: duckdb.DuckDBPyConnection, tables: set[str], attached: bool) -> None:
        self.con = con
        self.tables = tables  # quoted names of its run tables that have today's stored columns
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
        return cls(con, {t for t, found in columns.items() if found == STORED_SCHEMA}, attached=True)

    def copy(self, run: PredictionRun, indexed: bool) -> bool:
        """Fill `run`'s new table (`indexed` or not) from the previous file if it holds the run unchanged;
        True if done.

        The previous table is checked against the checksum the run's manifest records before it is copied
        (it is the sorted source the copy reads, in chunks, see `indexed_fill.fill`)."""
        table = run_table(run)
        if table not in self.tables:
            return False
        recorded = run.manifest.get("content_checksum") or {}
        why = incomparable(recorded)
        if why:
            log.info("not copying run %s from the previous serving file: %s", run.run_id, why)
            return False
        source = f"{_PREVIOUS}.{table}"  # scan order is kept (preserve_insertion_order): still sorted
        try:
            why = mismatch(recorded, table_checksum(self.con, source, str(recorded["function"])))
            if not why and indexed:
                fill(self.con, run, row_ranges(self.con, source))
            elif not why:
                stored = ", ".join(STORED)
                self.con.execute(f"INSERT INTO {table} ({stored}) SELECT {stored} FROM {source}")
        except duckdb.Error as exc:
            why = f"could not copy it: {exc}"
        if why:  # the run files fill the table instead
            self.con.execute(f"DROP TABLE IF EXISTS {table}")
            _create_run_table(self.con, run)
            log.warning("run %s in the previous serving file: %s; reading its files", run.run_id, why)
            return False
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
    con: duckdb.DuckDBPyConnection,
    storage: Storage,
    run: PredictionRun,
    previous: PreviousFile,
    indexed: bool,
) -> None:
    _create_run_table(con, run)
    if previous.copy(run, indexed):
        return
    select = run_files_sql(storage, [run], verify=True)
    legacy = select is not None and _stores_names_only(con, select)
    if select is None:  # no rows: the empty table still gets its index
        select = f"SELECT {', '.join(STORED)} FROM {run_table(run)} WHERE false"
    elif legacy:
        select = f"SELECT * REPLACE ({LEGACY_REASONS} AS reasons) FROM ({select})"
    # Scoring recorded that the ids ascend in file order (`IdOrder`): the rows need no sort, and are read
    # in order by one thread: a parallel scan that keeps the order leaves part-filled row groups, which the
    # file would keep (10M rows: 127 row groups, not 82; +60 MB, +3 CPU s); the sort's output is whole ones.
    ascending = run.manifest.get("entity_ids_ascending") is True and not legacy
    order = "" if ascending else " ORDER BY entity_id"
    if not indexed:
        with using_threads(con, 1 if ascending else None):
            stored = ", ".join(STORED)
            con.execute(f"INSERT INTO {run_table(run)} ({stored}) SELECT * FROM ({select}){order}")
        return
    with sorted_rows(con, f"SELECT * FROM ({select}){order}", 1 if ascending else None) as source:
        fill(con, run, row_ranges(con, source))


def _view(con: duckdb.DuckDBPyConnection, name: str, runs: list[PredictionRun]) -> None:
    body = " UNION ALL ".join(prediction_select(run_constants(r), run_table(r)) for r in runs) or _EMPTY
    con.execute(f"CREATE VIEW {name} AS {body}")


#: A served arm beside the published run: (variant, its run, bucket from, bucket to, salt).
ServedArm = tuple[str, PredictionRun, float, float, str]


def served_arms(storage: Storage, model: str, run_id: str | None) -> list[ServedArm]:
    """The arms served beside published run `run_id`: a running experiment's variants, else a canary step
    (an experiment wins if, against `releases`' refusal, both stand)."""
    experiment = experiments.serving(storage, model, run_id)
    if experiment is not None:
        return [
            (a.variant, a.run, a.low, a.high, experiment.salt) for a in experiment.arms if a.run is not None
        ]
    served = canary.serving(storage, model, run_id)
    return [] if served is None else [(served.variant, served.run, 0.0, served.share, served.salt)]


def _predictions_view(
    con: duckdb.DuckDBPyConnection, current: list[PredictionRun], arms: dict[str, list[ServedArm]]
) -> None:
    """`predictions`: each model's published run, with `variant`; with arms served beside it (an experiment
    or a canary step), exactly one row per entity of the published run, from the arm its bucket falls in
    (when that arm's run scored it), else from the published run as `control`."""
    branches = []
    for run in current:
        control, taken = run_table(run), []
        for variant, arm_run, low, high, salt in arms.get(run.model, []):
            inside = f"{bucket_sql(salt)} >= {low!r} AND {bucket_sql(salt)} < {high!r}"
            if arm_run.run_id != run.run_id:
                arm = run_table(arm_run)
                inside = f"{inside} AND entity_id IN (SELECT entity_id FROM {control})"
                taken.append(f"({bucket_sql(salt)} >= {low!r} AND {bucket_sql(salt)} < {high!r} "
                             f"AND entity_id IN (SELECT entity_id FROM {arm}))")  # fmt: skip
            else:
                arm = control
                taken.append(f"({bucket_sql(salt)} >= {low!r} AND {bucket_sql(salt)} < {high!r})")
            branches.append(prediction_select(run_constants(arm_run), f"{arm} WHERE {inside}",
                                              variant=literal(variant)))  # fmt: skip
        rest = f"{control} WHERE NOT ({' OR '.join(taken)})" if taken else control
        branches.append(prediction_select(run_constants(run), rest, variant=literal(CONTROL)))
    empty = _EMPTY.removesuffix(" WHERE false") + ", CAST(NULL AS VARCHAR) AS variant WHERE false"
    body = " UNION ALL ".join(branches) or empty
    con.execute(f"CREATE VIEW predictions AS {body}")


def stores_names_only(run: PredictionRun) -> bool:
    """Whether `run`'s files store reasons as names only, as its manifest's content checksum says."""
    recorded = run.manifest.get("content_checksum") or {}
    return recorded.get("function") == LEGACY_FUNCTION


def _create_published_runs(con: duckdb.DuckDBPyConnection, runs: list[PredictionRun]) -> None:
    """`published_runs`: every run ever published, with what a history reader needs to read its files."""
    con.execute(f"CREATE TABLE published_runs ({PUBLISHED_RUNS})")
    rows = [
        [*run_constants(r).values(), r.rows, stores_names_only(r), [e.path for e in r.files]] for r in runs
    ]
    if rows:
        con.executemany(f"INSERT INTO published_runs VALUES ({', '.join('?' * 9)})", rows)


def create_prediction_tables(
    con: duckdb.DuckDBPyConnection,
    storage: Storage,
    previous: PreviousFile,
    reader_memory_limit: str = READER_MEMORY_LIMIT,
) -> None:
    """The current and staged run tables (indexed while a reader with `reader_memory_limit` can hold their
    indexes), the views over them and `published_runs`."""
    published, staging = PublicationLog(storage), PublicationLog(storage, "staging")
    current, staged, ever = [], [], []
    arms: dict[str, list[ServedArm]] = {}
    for model in sorted(published.models()):
        now = published.current(model)
        current += [get_run(storage, model, now)] if now else []
        arms[model] = served_arms(storage, model, now)
        run_ids = dict.fromkeys(e["run_id"] for e in published.events(model) if e.get("run_id"))
        ever += [get_run(storage, model, run_id) for run_id in run_ids]  # manifests only: no run file
    for model in sorted(staging.models()):
        run_id = staging.current(model)
        staged += [get_run(storage, model, run_id)] if run_id else []
    placed: dict[str, PredictionRun] = {}
    for run in current + staged + [a[1] for served in arms.values() for a in served]:
        placed.setdefault(run_table(run), run)
    indexed = indexed_tables(list(placed.values()), reader_memory_limit)
    for table, run in placed.items():
        _place_run(con, storage, run, previous, table in indexed)
    _predictions_view(con, current, arms)
    _view(con, "predictions_staging", staged)
    _create_published_runs(con, ever)
