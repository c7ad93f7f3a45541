"""Batch lookup: the served predictions of many entity ids in one query, as an Arrow table.

The ids reach DuckDB as one list parameter (`unnest($ids)` joined to `predictions`), so they are never SQL
text and the reader connection needs no file access and no registered object: it stays locked down
(`enable_external_access = false`, `lock_configuration = true`). One query scans the model's run table
once, whatever the number of ids; a single id is faster as `entity_id = ?`, which reads only the row groups
whose zone maps can hold it (run tables are sorted by entity id).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from batchml.errors import ConfigError, DataError, NotFoundError
from batchml.names import check_name
from batchml.serving.readers import connect

if TYPE_CHECKING:
    from batchml.project import Project

#: One row per distinct id found, in entity id order; ids not served are absent.
_LOOKUP = """SELECT * FROM predictions
    WHERE model = $model AND entity_id IN (SELECT unnest(CAST($ids AS VARCHAR[])))
    ORDER BY entity_id"""
#: The same from one run's files: picking the run lets the history scan open only that run's files.
_AT = """SELECT * FROM prediction_history
    WHERE model = $model AND run_id = $run_id AND entity_id IN (SELECT unnest(CAST($ids AS VARCHAR[])))
    ORDER BY entity_id"""
_ALLOWED = "all str ids, or all int ids for integer entity ids (served entity ids are their text)"


def _bad(value: Any) -> DataError:
    return DataError(f"entity id {value!r} ({type(value).__name__}) is invalid: use {_ALLOWED}")


def _arrow_ids(ids: pa.Array | pa.ChunkedArray) -> list[str]:
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type) or pa.types.is_integer(ids.type):
        if ids.null_count:
            raise _bad(None)
        return [str(v) for v in ids.cast(pa.string()).to_pylist()]
    raise DataError(f"entity ids of type {ids.type} are invalid: use {_ALLOWED}")


def entity_ids(ids: Iterable[str] | Iterable[int] | Any) -> list[str]:
    """`ids` (a sequence of str or of int, an Arrow array or a polars Series) as the served entity id text."""
    if isinstance(ids, (str, bytes)):
        raise DataError(f"entity ids {ids!r} are invalid: pass a list of ids, not one {type(ids).__name__}")
    if type(ids).__module__.split(".")[0] == "polars":  # polars is not imported unless the caller did
        ids = ids.to_arrow()  # type: ignore[union-attr]
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        return _arrow_ids(ids)
    values = list(ids)
    if all(type(v) is str for v in values):  # the common case, checked once without a per-id branch
        return values
    if all(type(v) is int for v in values):  # not bool: True is not an entity id
        return [str(v) for v in values]
    first = type(values[0])  # not empty: an empty list passed the str check
    raise _bad(next(v for v in values if type(v) is not first or first not in (str, int)))


def _served_models(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [
        str(r[0]) for r in con.execute("SELECT DISTINCT model FROM predictions ORDER BY model").fetchall()
    ]


def _is_history(con: duckdb.DuckDBPyConnection) -> bool:
    sql = "SELECT count(*) FROM duckdb_views() WHERE temporary AND view_name = 'prediction_history'"
    return bool(con.execute(sql).fetchall()[0][0])


def _run_at(con: duckdb.DuckDBPyConnection, model: str, at: datetime | str) -> str:
    """The run `model` served at `at`, on a history connection."""
    from batchml.serving.history import run_at

    if not _is_history(con):
        raise ConfigError("a lookup at a past time needs a history reader: batchml.connect(history=True)")
    when = at
    if isinstance(at, str):
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            raise DataError(
                f"time {at!r} is invalid: use an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"
            ) from None
    if not isinstance(when, datetime):
        raise DataError(f"time {at!r} is invalid: use an ISO 8601 time or a datetime")
    when = when if when.tzinfo else when.replace(tzinfo=UTC)  # naive: UTC, as every stored time
    return run_at(con, model, when)


def lookup(
    source: Project | duckdb.DuckDBPyConnection | None,
    model: str,
    ids: Iterable[str] | Iterable[int] | Any,
    *,
    at: datetime | str | None = None,
) -> pa.Table:
    """The served predictions of `model` for `ids`, in one query: an Arrow table of `predictions` columns.

    `source` is an open reader connection (`batchml.connect()`, reuse it: opening costs ~15 ms), a project,
    or None for the project of the current directory. The table has one row per distinct id that `model`
    serves, in entity id order; ids it does not serve are absent (duplicates in `ids` give one row).
    `at` (a datetime or ISO 8601 text; naive means UTC): what `model` served at that time instead, read from
    that one run's files; `source` must then be a history reader (`batchml.connect(history=True)`) or a
    project (one is opened).
    """
    check_name("model", model)
    keys = entity_ids(ids)
    history = at is not None
    con = source if isinstance(source, duckdb.DuckDBPyConnection) else connect(source, history=history)
    try:
        if at is not None:
            run_id = _run_at(con, model, at)
            params = {"model": model, "run_id": run_id, "ids": keys}
            return con.sql(_AT, params=params).to_arrow_table()
        table = con.sql(_LOOKUP, params={"model": model, "ids": keys}).to_arrow_table()
        if table.num_rows == 0:  # nothing found: say so if the model itself is not served
            served = _served_models(con)
            if model not in served:
                raise NotFoundError("served model", model, served)
        return table
    finally:
        if con is not source:
            con.close()
