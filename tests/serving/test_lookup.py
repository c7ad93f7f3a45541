"""`batchml.lookup` answers many ids in one query, with the served rows, and refuses what is not an id."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest

import batchml
from batchml.errors import DataError, InvalidNameError, NotFoundError


def test_lookup_returns_the_served_rows_of_many_ids_in_one_query(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    con = batchml.connect(project)
    served = con.execute("SELECT entity_id FROM predictions ORDER BY entity_id").fetchall()
    wanted = [str(r[0]) for r in served[::3]]
    asked = [*reversed(wanted), "missing-1", wanted[0], wanted[0], "'; DROP TABLE runs; --"]
    table = batchml.lookup(con, "default_risk", asked)
    assert isinstance(table, pa.Table)
    assert table.column("entity_id").to_pylist() == wanted  # once each, in entity id order, missing absent
    expected = con.sql(
        "SELECT * FROM predictions WHERE entity_id IN (SELECT unnest(?)) ORDER BY entity_id", params=[wanted]
    ).to_arrow_table()
    assert table.equals(expected)
    assert table.schema.names == [d[0] for d in con.execute("SELECT * FROM predictions LIMIT 0").description]
    # Arrow arrays and polars Series are taken as they are; the project opens (and closes) its own connection
    assert batchml.lookup(project, "default_risk", pa.array(wanted[:5])).equals(expected.slice(0, 5))
    assert batchml.lookup(project, "default_risk", pl.Series(wanted[:5])).equals(expected.slice(0, 5))
    assert batchml.lookup(con, "default_risk", []).num_rows == 0
    assert batchml.lookup(con, "default_risk", ["nobody"]).num_rows == 0
    assert con.execute("SELECT count(*) FROM runs").fetchone() == (1,)


def test_integer_ids_are_matched_by_their_text(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    """Served entity ids are text; an integer entity id column is served as CAST(id AS VARCHAR)."""
    with batchml.connect(project) as con:
        assert batchml.lookup(con, "default_risk", [42, 43]).num_rows == 0  # these ids are 'L…' strings
        assert batchml.lookup(con, "default_risk", pa.array([42], pa.int32())).num_rows == 0


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (["L000000042", 42], "entity id 42 (int) is invalid: use all str ids, or all int ids"),
        ([True], "entity id True (bool) is invalid"),
        ([1.5], "entity id 1.5 (float) is invalid"),
        (["L000000042", None], "entity id None (NoneType) is invalid"),
        ("L000000042", "entity ids 'L000000042' are invalid: pass a list of ids, not one str"),
        (pa.array([1.5]), "entity ids of type double are invalid"),
        (pa.array(["L1", None]), "entity id None (NoneType) is invalid"),
    ],
)
def test_ids_of_another_type_are_one_clear_error(
    project: batchml.Project, published: batchml.PredictionRun, ids: object, message: str
) -> None:
    with batchml.connect(project) as con, pytest.raises(DataError) as caught:
        batchml.lookup(con, "default_risk", ids)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_unknown_model_names_the_served_ones(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    with batchml.connect(project) as con:
        with pytest.raises(NotFoundError, match="served model 'churn' not found; available: default_risk"):
            batchml.lookup(con, "churn", ["L000000042"])
        with pytest.raises(InvalidNameError):
            batchml.lookup(con, "x'; --", ["L000000042"])
