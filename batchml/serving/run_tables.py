"""Names in the serving file shared by the builder (`prediction_tables`) and the readers (`lookup`).

Its own module because readers must stay light: the builder imports polars and the scoring stack.
"""

from __future__ import annotations

import duckdb

#: The suffix of a run table's lookup files (`lookup_files`): a new layout gets a new suffix, so old readers
#: never misread one. Here because commands that only check the serving folder must not import numpy.
LOOKUP_FILES_SUFFIX = "lookup-v1"
#: The columns a run table stores per row, in table order (the run's constants are literals in the views).
STORED_COLUMNS = ("entity_id", "prediction", "predicted_class", "input_hash", "reasons", "flags")


def literal(text: str) -> str:
    """`text` as a quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def database_file(con: duckdb.DuckDBPyConnection) -> str:
    """The file of the database `con` uses now ('' for an in-memory one)."""
    sql = "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    found = con.execute(sql).fetchall()  # not fetchone: it leaves the result open
    return str(found[0][0] or "") if found else ""


def run_table_name(model: str, run_id: str) -> str:
    """The quoted name of the table holding run `run_id` of `model` (validated names: no quotes inside)."""
    return f'"run__{model}__{run_id}"'


#: Ids per query of a batch lookup, and the reader connections' `dynamic_or_filter_threshold`. DuckDB reads
#: `entity_id = ANY($ids)` through a run table's ART index only when the ids reach its table scan as a
#: filter, which a join does for at most `dynamic_or_filter_threshold` distinct keys (DuckDB's default: 50),
#: and when they match at most max(`index_scan_max_count`, `index_scan_percentage` x rows) rows (DuckDB's
#: default count is this one, 2,048, so a chunk always qualifies); otherwise it scans every row of the table.
LOOKUP_CHUNK = 2048

#: The default memory limit of a reader connection (`readers.connect`; `[serving] reader_memory_limit`).
READER_MEMORY_LIMIT = "2GB"
#: DuckDB (2.0) keeps every ART index buffer a lookup loads pinned in the connection's memory and never evicts
#: it (a loaded buffer is copied into memory that is not backed by the file: `FixedSizeBuffer::LoadFromDisk`,
#: with "FIXME: Enable unpinning buffers" in its source), whatever the memory limit or temp directory. Random
#: point lookups touch every buffer soon, so a reader ends up holding each index it reads whole: measured
#: 40 bytes per indexed row at 10M and 100M rows, 45 at 100k. A reader whose memory limit cannot hold them
#: fails after a few thousand lookups ("failed to pin block"), and stays failed.
ART_BYTES_PER_ROW = 45
#: The share of a reader's memory limit that the indexes it loads may take; the rest is for its queries.
INDEX_MEMORY_SHARE = 0.5


#: The indexed tables of the file (`duckdb_tables().estimated_size` would cost ~17 ms: it reads every
#: table's row group metadata; `count(*)` of a table reads its row count only).
_INDEXED_TABLES = """SELECT DISTINCT table_name FROM duckdb_indexes()
    WHERE database_name = current_database() AND schema_name = 'main'"""


def count_indexed_rows(con: duckdb.DuckDBPyConnection) -> int:
    """The rows of every indexed table in the file `con` uses: what a reader ends up holding the indexes of
    if it reads every run (table names are validated names: no quotes inside)."""
    tables = [str(t) for (t,) in con.execute(_INDEXED_TABLES).fetchall()]
    return sum(int(con.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0]) for t in tables)


def indexed_rows(con: duckdb.DuckDBPyConnection) -> int:
    """`count_indexed_rows`, as the serving build recorded it in `serving_info` (one small read at connect);
    counted for a file built before it was recorded."""
    try:
        return int(con.execute("SELECT indexed_rows FROM serving_info").fetchall()[0][0])
    except duckdb.Error:  # no such column or table: an older file
        return count_indexed_rows(con)


def minimum_memory(indexed_rows: int) -> int:
    """The least memory limit (bytes) of a reader that can hold indexes over `indexed_rows` rows for good."""
    return int(indexed_rows * ART_BYTES_PER_ROW / INDEX_MEMORY_SHARE)


def index_fits(indexed_rows: int, memory_bytes: float) -> bool:
    """Whether a reader with `memory_bytes` of memory can hold ART indexes over `indexed_rows` rows for good
    (with the default limit: ~22M rows; a reader needs 90 bytes of memory_limit per indexed row)."""
    return indexed_rows * ART_BYTES_PER_ROW <= memory_bytes * INDEX_MEMORY_SHARE
