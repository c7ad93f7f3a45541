"""`batchml.lookup` answers many ids in one query, with the served rows, and refuses what is not an id."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pytest

import batchml
from batchml.errors import DataError, InvalidNameError, NotFoundError
from batchml.serving import lookup as lookup_module
from batchml.serving import prediction_tables, readers, run_tables
from batchml.testing import write_loans
from tests.scoring.test_reasons import configure
from tests.serving.test_serving import second_run


@pytest.fixture
def without_lookup_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lookups as on a file without lookup files (`[serving] lookup_files = false`): through DuckDB."""
    monkeypatch.setattr(lookup_module, "lookup_files", lambda *_: None)


@pytest.fixture(params=["lookup files", "duckdb"])
def either_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test through the lookup files beside the serving file, and again through DuckDB alone."""
    if request.param == "duckdb":
        monkeypatch.setattr(lookup_module, "lookup_files", lambda *_: None)
    return str(request.param)


def test_lookup_returns_the_served_rows_of_many_ids_in_one_query(
    project: batchml.Project, published: batchml.PredictionRun, either_path: str
) -> None:
    con = batchml.connect(project)
    served = con.execute("SELECT entity_id FROM predictions ORDER BY entity_id").fetchall()
    wanted = [str(r[0]) for r in served[::3]]
    asked = [*reversed(wanted), "missing-1", wanted[0], wanted[0], "'; DROP TABLE runs; --"]
    table = batchml.lookup(con, "default_risk", asked)
    assert isinstance(table, pa.Table)
    run = lookup_module._READERS[con].runs["default_risk"]
    assert run is not None and (run.files is not None) == (either_path == "lookup files")
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
    project: batchml.Project, champion: batchml.ModelVersion, loans_csv: Path, either_path: str
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
        run = lookup_module._READERS[con].runs["default_risk"]
        assert run is not None and (run.files is not None) == (either_path == "lookup files")
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


VIEW_ROWS = "SELECT * FROM predictions WHERE entity_id IN (SELECT unnest(?)) ORDER BY entity_id"


@pytest.mark.parametrize("share", [1.0, lookup_module.SCAN_SHARE])
@pytest.mark.usefixtures("without_lookup_files")
def test_a_batch_probed_through_the_index_in_chunks_or_scanned_is_the_views_rows(
    project: batchml.Project, published: batchml.PredictionRun, monkeypatch: pytest.MonkeyPatch, share: float
) -> None:
    """Many ids go to the run table's ART index in sorted chunks (share 1.0: any batch of this 4k-row run)
    or, beyond `SCAN_SHARE` of its rows, are one scan: either way the rows are the view's, whatever the
    chunk size (here 7 ids a query, two chunks at a time on two threads), for present, absent and repeated
    ids, and DuckDB probes the index."""
    monkeypatch.setattr(lookup_module, "SCAN_SHARE", share)
    path = batchml.database_path(project).resolve()
    config = {**readers.READER_CONFIG, "dynamic_or_filter_threshold": 7, "memory_limit": "2GB", "threads": 2}
    with duckdb.connect(str(path), read_only=True, config=config) as con:
        sql = "SELECT entity_id FROM predictions ORDER BY entity_id"
        served = [str(r[0]) for r in con.execute(sql).fetchall()]
        wanted = served[::5][:40]
        asked = [*reversed(wanted), "missing-1", wanted[3], "L", "~", wanted[3], "missing-0", wanted[-1]]
        table = batchml.lookup(con, "default_risk", asked)
        assert table.column("entity_id").to_pylist() == wanted  # once each, in order, absent ids absent
        assert table.equals(con.sql(VIEW_ROWS, params=[wanted]).to_arrow_table())
        assert batchml.lookup(con, "default_risk", ["missing-1", "missing-2"]).num_rows == 0
        assert (lookup_module._READERS[con].chunk, lookup_module._READERS[con].threads) == (7, 2)
        run = lookup_module._find_run(con, "default_risk", 2**31)
        assert run is not None and run.probes == int(len(served) * share)
        assert lookup_module._READERS[con].memory == pytest.approx(1.8 * 2**30)  # 2GB, as DuckDB shows it
        index_bytes = len(served) * run_tables.ART_BYTES_PER_ROW
        too_small = lookup_module._find_run(con, "default_risk", index_bytes)
        assert too_small is not None and too_small.probes == 0  # an index it could not hold: a scan
        plan = con.execute(f"EXPLAIN ANALYZE {run.many}", [wanted[:7]]).fetchall()[0][1]
        assert "Index Scan" in plan, plan
    with batchml.connect(project) as con:  # batchml's readers: chunks of LOOKUP_CHUNK ids
        table = batchml.lookup(con, "default_risk", [*served, "missing-1", served[0]])
        assert table.equals(con.sql(VIEW_ROWS, params=[served]).to_arrow_table())
        assert lookup_module._READERS[con].chunk == run_tables.LOOKUP_CHUNK


@pytest.mark.usefixtures("without_lookup_files")
def test_a_batch_on_a_connection_that_attached_the_file_is_probed_side_by_side_in_that_file(
    project: batchml.Project, published: batchml.PredictionRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app's own connection that ATTACHed the serving file and USEs it: a batch's chunks, probed on
    cursors of that connection side by side, read the run table of that file (a new cursor starts in the
    in-memory database)."""
    monkeypatch.setattr(lookup_module, "SCAN_SHARE", 1.0)
    path = batchml.database_path(project).resolve()
    with duckdb.connect(config={"threads": 2, "dynamic_or_filter_threshold": 7}) as con:
        con.execute(f"ATTACH '{path}' AS served (READ_ONLY)")
        con.execute("USE served")
        served = con.execute("SELECT entity_id FROM predictions ORDER BY entity_id LIMIT 40").fetchall()
        wanted = [str(r[0]) for r in served]
        table = batchml.lookup(con, "default_risk", wanted)
        assert table.equals(con.sql(VIEW_ROWS, params=[wanted]).to_arrow_table())


def test_a_connection_that_can_attach_a_newer_file_answers_from_the_run_it_reads_now(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    """A connection that can ATTACH is never answered from a kept run: after a publish, with the newer file
    attached in place of the older one on the same connection, a lookup returns the new run's values."""
    ids = ["L000000042", "L000000043"]
    with duckdb.connect() as con:
        con.execute("ATTACH ? AS serving (READ_ONLY)", [str(batchml.database_path(project).resolve())])
        con.execute("USE serving")
        for asked in (ids[:1], ids):
            assert batchml.lookup(con, "default_risk", asked).column("run_id").to_pylist() == [
                published.run_id
            ] * len(asked)
        run = second_run(project)
        batchml.publish(project, "default_risk", run.run_id)
        con.execute("USE memory")
        con.execute("DETACH serving")
        con.execute("ATTACH ? AS serving (READ_ONLY)", [str(batchml.database_path(project).resolve())])
        con.execute("USE serving")
        for asked in (ids[:1], ids):
            table = batchml.lookup(con, "default_risk", asked)
            assert table.column("run_id").to_pylist() == [run.run_id] * len(asked)
            assert table.equals(con.sql(VIEW_ROWS, params=[asked]).to_arrow_table())
        assert not lookup_module._READERS[con].pinned
    assert batchml.lookup(project, "default_risk", ids).column("run_id").to_pylist() == [run.run_id] * 2


def test_run_tables_store_the_fetched_columns_uncompressed(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    """An index lookup fetches rows one by one; compressed segments would be decoded for each row."""
    with batchml.connect(project) as con:
        table = run_tables.run_table_name("default_risk", published.run_id).strip('"')
        stored = con.execute(
            "SELECT DISTINCT column_name, compression FROM pragma_storage_info(?) "
            "WHERE segment_type NOT IN ('VALIDITY')",
            [table],
        ).fetchall()
    assert {c for c, k in stored if k == "Uncompressed"} >= set(prediction_tables.UNCOMPRESSED)


ART_MEMORY = "SELECT memory_usage_bytes FROM duckdb_memory() WHERE tag = 'ART_INDEX'"


@pytest.mark.usefixtures("without_lookup_files")
def test_a_long_lived_reader_that_cannot_hold_the_index_never_runs_out_of_memory(
    project: batchml.Project, champion: batchml.ModelVersion, tmp_path: Path
) -> None:
    """DuckDB keeps every index node a lookup loads in the reader's memory and never evicts it, so point
    lookups through a run's ART index on a reader whose memory limit cannot hold it failed after a few
    ("failed to pin block": at 100M rows and the default 2 GB, after ~4,400). `batchml.lookup` reads such
    a run through the zone maps of its sorted rows instead, for as many lookups as asked, one id or many."""
    version = batchml.snapshot_dataset(project, "loans", str(write_loans(tmp_path / "big.csv", rows=100_000)))
    run = batchml.score(project, "default_risk", dataset=version.ref)
    batchml.publish(project, "default_risk", run.run_id)
    with batchml.connect(project) as con:  # the default limit holds this run's index: it is used
        assert con.execute("SELECT count(*) FROM duckdb_indexes()").fetchone() == (1,)
        served = [str(r[0]) for r in con.execute("SELECT entity_id FROM predictions").fetchall()]
        some = served[::997]
        expected = {key: batchml.lookup(con, "default_risk", [key]) for key in some}
        assert con.execute(ART_MEMORY).fetchone()[0] > 0
    index_bytes = len(served) * run_tables.ART_BYTES_PER_ROW  # ~4.5 MB: more than the reader below can hold
    with batchml.connect(project, memory_limit="4MB") as con:
        for key in [*served[::50], *reversed(served[1::50])]:  # 4,000 lookups spread over the index
            assert batchml.lookup(con, "default_risk", [key]).column("entity_id").to_pylist() == [key]
        for key in some:
            assert batchml.lookup(con, "default_risk", [key]).equals(expected[key])
        assert con.execute(ART_MEMORY).fetchone() == (0,)  # nothing of the index was loaded
        assert lookup_module._READERS[con].memory * run_tables.INDEX_MEMORY_SHARE < index_bytes
    with batchml.connect(project, memory_limit="8MB") as con:  # a batch scans every row group: more memory
        batch = batchml.lookup(con, "default_risk", [some[3], some[1], "nobody"])
        assert batch.equals(pa.concat_tables([expected[some[1]], expected[some[3]]]))
        assert con.execute(ART_MEMORY).fetchone() == (0,)  # the scan of its ids was not handed to the index
        assert lookup_module._READERS[con].memory * run_tables.INDEX_MEMORY_SHARE < index_bytes
