"""`batchml.lookup` answers many ids in one query, with the served rows, and refuses what is not an id."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

import batchml
from batchml.errors import DataError, InvalidNameError, NotFoundError
from batchml.serving import prediction_tables, run_tables
from tests.scoring.test_reasons import configure
from tests.serving.test_serving import second_run


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
        ([42.0], "entity id 42.0 (float) is invalid: use all str ids, or all int ids"),
        ([b"L000000042"], "entity id b'L000000042' (bytes) is invalid"),
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


POINT = "SELECT * FROM predictions WHERE model = ? AND entity_id = ?"


def test_one_id_is_the_views_row_read_from_the_run_table(
    project: batchml.Project, champion: batchml.ModelVersion, loans_csv: Path
) -> None:
    """One id reads the run table (its ART index) and adds the run's constants: the view's row, exactly."""
    project = configure(project, loans_csv, reason_codes=3, reason_rows="top", reason_share=0.2)
    batchml.publish(project, "default_risk", batchml.score(project, "default_risk").run_id)
    with batchml.connect(project) as con:
        picked = (
            "SELECT entity_id FROM predictions ORDER BY reasons IS NULL, len(flags) DESC, entity_id LIMIT 5"
        )
        wanted = [str(r[0]) for r in con.execute(picked).fetchall()]  # rows with reasons and flags first
        assert con.execute(POINT, ["default_risk", wanted[0]]).fetchall()[0][10] is not None  # has reasons
        for entity in wanted:
            table = batchml.lookup(con, "default_risk", [entity])
            assert table.equals(con.sql(POINT, params=["default_risk", entity]).to_arrow_table())
        empty = batchml.lookup(con, "default_risk", ["nobody"])
        assert empty.num_rows == 0 and empty.schema == table.schema
        assert batchml.lookup(con, "default_risk", [42]).num_rows == 0  # an int id is matched as its text
        both = batchml.lookup(con, "default_risk", wanted[:2])
        assert both.schema == table.schema and both.num_rows == 2


def test_a_connection_keeps_answering_from_its_own_file_after_a_publish(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    """The model's run is looked up once per connection: a connection reads one file, never changed."""
    entity = "L000000042"
    with batchml.connect(project) as before:
        assert batchml.lookup(before, "default_risk", [entity]).column("run_id").to_pylist() == [
            published.run_id
        ]
        run = second_run(project)
        batchml.publish(project, "default_risk", run.run_id)
        with batchml.connect(project) as after:
            assert batchml.lookup(after, "default_risk", [entity]).column("run_id").to_pylist() == [
                run.run_id
            ]
        assert batchml.lookup(before, "default_risk", [entity]).column("run_id").to_pylist() == [
            published.run_id
        ]


def test_a_history_reader_answers_one_id_from_the_attached_serving_file(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    with batchml.connect(project, history=True) as con:
        table = batchml.lookup(con, "default_risk", ["L000000042"])
        assert table.equals(con.sql(POINT, params=["default_risk", "L000000042"]).to_arrow_table())


def test_readers_name_the_stored_columns_as_the_builder_stores_them() -> None:
    assert run_tables.STORED_COLUMNS == prediction_tables.STORED
