"""Publishing: atomic swaps of a read-only DuckDB file derived from storage, with stable views."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest
from typer.testing import CliRunner

import batchml
from batchml import api
from batchml.cli import app
from batchml.config import ServingConfig
from batchml.errors import NotFoundError, ReadOnlyError
from batchml.scoring import run_checksum
from batchml.serving import indexed_fill, lookup, prediction_tables, run_tables
from batchml.serving.database import build_serving_db
from batchml.serving.lookup_files import sidecars
from batchml.serving.prediction_tables import PREDICTION_SCHEMA
from batchml.serving.readers import connect_serving
from tests.conftest import PROJECT_TOML

VIEWS = {
    "predictions", "published_runs", "models", "model_aliases", "alias_events",
    "datasets", "runs", "publications",
}  # fmt: skip


def fingerprint(con: duckdb.DuckDBPyConnection) -> tuple[int, str, float]:
    row = con.execute("SELECT count(*), any_value(run_id), sum(prediction) FROM predictions").fetchone()
    assert row is not None
    return row[0], row[1], round(row[2], 9)


def second_run(project: batchml.Project) -> batchml.PredictionRun:
    model = batchml.train(project, "default_risk", params={"num_leaves": 7})
    batchml.promote(project, "default_risk", model.version, reason="challenger won")
    return batchml.score(project, "default_risk")


def readers_of(project: batchml.Project, memory_limit: str) -> batchml.Project:
    """`project` with `[serving] reader_memory_limit = memory_limit`: its builds size indexes by it."""
    serving = ServingConfig(reader_memory_limit=memory_limit)
    return dataclasses.replace(project, config=msgspec.structs.replace(project.config, serving=serving))


def test_published_tables_answer_sql(project: batchml.Project, published: batchml.PredictionRun) -> None:
    con = batchml.connect(project)
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert names >= VIEWS
    assert fingerprint(con)[:2] == (published.rows, published.run_id)
    row = con.execute(
        "SELECT prediction, run_id FROM predictions WHERE model = 'default_risk' AND entity_id = 'L000000042'"
    ).fetchone()
    assert row is not None and 0.0 <= row[0] <= 1.0 and row[1] == published.run_id
    assert con.execute("SELECT run_id, rows FROM published_runs").fetchall() == [
        (published.run_id, published.rows)
    ]
    assert con.execute("SELECT alias_at('default_risk', 'champion', now())").fetchone() == (1,)
    assert con.execute("SELECT published FROM runs").fetchall() == [(True,)]


def test_documented_path_opens_with_plain_duckdb(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    path = batchml.database_path(project)
    assert path == project.serving_dir / "batchml.duckdb"
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM predictions").fetchone() == (published.rows,)


def test_open_readers_keep_their_snapshot_while_a_new_one_is_published(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    before = batchml.connect(project)
    old = fingerprint(before)
    run = second_run(project)
    batchml.publish(project, "default_risk", run.run_id)
    assert fingerprint(before) == old  # the file this reader holds was never touched
    after = batchml.connect(project)
    assert fingerprint(after)[1] == run.run_id and fingerprint(after) != old
    assert after.execute("SELECT count(*) FROM published_runs").fetchone() == (2,)


def test_rollback_returns_to_the_previous_published_run(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    run = second_run(project)
    batchml.publish(project, "default_risk", run.run_id)
    batchml.rollback_predictions(project, "default_risk", reason="bad scores")
    con = batchml.connect(project)
    assert fingerprint(con)[1] == published.run_id
    actions = con.execute("SELECT action, run_id, reason FROM publications ORDER BY seq").fetchall()
    assert actions == [
        ("publish", published.run_id, ""),
        ("publish", run.run_id, ""),
        ("rollback", published.run_id, "bad scores"),
    ]
    with pytest.raises(NotFoundError, match="previously published"):
        batchml.rollback_predictions(project, "default_risk")


def test_alias_history_is_answerable_in_sql(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    between = datetime.now(UTC)
    second_run(project)
    con = batchml.connect(project)
    assert con.execute("SELECT alias_at('default_risk', 'champion', ?)", [between]).fetchone() == (1,)
    assert con.execute("SELECT version FROM model_aliases WHERE alias = 'champion'").fetchone() == (2,)


def test_serving_file_is_rebuilt_identically_from_storage(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    old = fingerprint(batchml.connect(project))
    shutil.rmtree(project.serving_dir)
    batchml.rebuild_catalog(project)
    assert fingerprint(batchml.connect(project)) == old


def test_an_indexed_run_table_filled_in_chunks_is_whole_sorted_and_indexed(
    project: batchml.Project,
    champion: batchml.ModelVersion,
    run_file_reads: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(indexed_fill, "INDEX_CHUNK_ROWS", 37)  # many chunks, the last one partial
    run = batchml.score(project, "default_risk")
    assert run.manifest["entity_ids_ascending"] is True  # the loans are in id order: served without a sort
    batchml.publish(project, "default_risk", run.run_id)
    staged = second_run(project)
    api.stage(project, "default_risk", staged.run_id)  # the first run's table is copied, in chunks too
    assert run_file_reads == [run.run_id, staged.run_id]
    with connect_serving(project.serving_dir) as con:
        for r in (run, staged):
            table = prediction_tables.run_table(r)
            order = "SELECT count(*), list(entity_id ORDER BY rowid) = list(entity_id ORDER BY entity_id) "
            assert con.execute(order + f"FROM {table}").fetchone() == (r.rows, True)
            found = con.execute(
                "SELECT index_name, expressions FROM duckdb_indexes() WHERE table_name = ?", [table[1:-1]]
            )
            assert found.fetchall() == [(indexed_fill.index_name(r)[1:-1], "[entity_id]")]
        row = "SELECT prediction FROM predictions WHERE model = 'default_risk' AND entity_id = 'L000000042'"
        assert con.execute(row).fetchall() == batchml.connect(project).execute(row).fetchall()
        assert len(con.execute(row).fetchall()) == 1
    assert (
        run_checksum.table_checksum(connect_serving(project.serving_dir), prediction_tables.run_table(run))
        == run.manifest["content_checksum"]
    )


def test_a_run_whose_ids_do_not_ascend_is_sorted_before_it_is_indexed(
    project: batchml.Project,
    champion: batchml.ModelVersion,
    loans_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(indexed_fill, "INDEX_CHUNK_ROWS", 37)
    shuffled = tmp_path / "shuffled.csv"
    with duckdb.connect() as con:
        con.execute(f"COPY (SELECT * FROM read_csv('{loans_csv}') ORDER BY hash(loan_id)) TO '{shuffled}'")
    version = batchml.snapshot_dataset(project, "loans", str(shuffled))
    run = batchml.score(project, "default_risk", dataset=version.ref)
    assert run.manifest["entity_ids_ascending"] is False
    batchml.publish(project, "default_risk", run.run_id)
    table = prediction_tables.run_table(run)
    with connect_serving(project.serving_dir) as con:
        order = "SELECT count(*), list(entity_id ORDER BY rowid) = list(entity_id ORDER BY entity_id) FROM "
        assert con.execute(order + table).fetchone() == (run.rows, True)
        assert con.execute("SELECT count(*) FROM duckdb_indexes()").fetchone() == (1,)
        assert run_checksum.table_checksum(con, table) == run.manifest["content_checksum"]


def test_runs_whose_indexes_a_default_reader_cannot_hold_are_served_without_them(
    project: batchml.Project,
    champion: batchml.ModelVersion,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DuckDB keeps what a reader loads of an index for good, so a serving file indexes its runs (current
    ones first) only while a reader with the project's `[serving] reader_memory_limit` can hold all their
    indexes together; the others are served through the zone maps of their sorted rows, by SQL and by
    `batchml.lookup` alike."""
    run = batchml.score(project, "default_risk")
    one_index = run.rows * run_tables.ART_BYTES_PER_ROW / run_tables.INDEX_MEMORY_SHARE
    small = readers_of(project, f"{int(one_index * 1.5)}B")  # room for one, not two
    batchml.publish(small, "default_risk", run.run_id)
    staged = second_run(project)
    with caplog.at_level(logging.WARNING):
        api.stage(small, "default_risk", staged.run_id)
    assert f"run {staged.run_id}: indexing its {staged.rows} rows on entity_id would leave" in caplog.text
    with batchml.connect(project) as con:
        indexed = con.execute("SELECT table_name FROM duckdb_indexes()").fetchall()
        assert indexed == [(prediction_tables.run_table(run)[1:-1],)]
        sql = "SELECT run_id FROM predictions_staging WHERE entity_id = 'L000000042'"
        assert con.execute(sql).fetchall() == [(staged.run_id,)]

    batchml.publish(readers_of(project, "1B"), "default_risk", staged.run_id)  # no index at all
    con = batchml.connect(project)
    assert con.execute("SELECT count(*) FROM duckdb_indexes()").fetchone() == (0,)
    sql = "SELECT run_id FROM predictions WHERE model = 'default_risk' AND entity_id = 'L000000042'"
    assert con.execute(sql).fetchall() == [(staged.run_id,)]
    assert batchml.lookup(con, "default_risk", ["L000000042"]).column("run_id").to_pylist() == [staged.run_id]
    # a batch never probes a table without an index in chunks (each chunk would scan it): one scan
    batch = batchml.lookup(con, "default_risk", ["L000000043", "L000000042", "nobody"])
    assert batch.column("entity_id").to_pylist() == ["L000000042", "L000000043"]
    served = lookup._find_run(con, "default_risk", 2**31)
    assert served is not None and served.probes == 0 and "rowid" not in served.one  # no index to keep off


def test_serving_info_names_the_file_it_is_in(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    con = batchml.connect(project)
    file = batchml.database_path(project).resolve().name
    assert con.execute("SELECT file FROM serving_info").fetchone() == (file,)


def test_old_serving_files_are_collected_after_the_grace_period(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    current = build_serving_db(project.storage, project.serving_dir, grace_seconds=0)
    beside = f"{current.name}.logs"  # the log state it reflects (see `batchml.serving.logstate`)
    table = run_tables.run_table_name("default_risk", published.run_id).strip('"')
    lookup_files = [p.name for p in sidecars(current, table)]  # the run's lookup files (`lookup_files`)
    assert sorted(p.name for p in project.serving_dir.glob("serving-*")) == sorted(
        [current.name, beside, *lookup_files]
    )


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM predictions",
        "COPY (SELECT 1) TO '/tmp/batchml-escape.csv'",
        "ATTACH '/tmp/batchml-other.duckdb'",
        "SELECT 1; DROP TABLE predictions",
        "CREATE TABLE x AS SELECT 1",
    ],
)
def test_query_refuses_anything_that_writes(
    project: batchml.Project, published: batchml.PredictionRun, sql: str
) -> None:
    con = batchml.connect(project)
    with pytest.raises(ReadOnlyError, match="only one SELECT"):
        batchml.query(con, sql)
    assert batchml.query(con, "SELECT count(*) AS n FROM predictions") == (["n"], [(published.rows,)])


def test_connect_before_any_publish_says_what_to_do(project: batchml.Project) -> None:
    with pytest.raises(NotFoundError, match="publish a prediction run first"):
        batchml.connect(project)


def test_the_same_path_works_on_a_remote_filesystem(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    toml = PROJECT_TOML.format(source=loans_csv).replace(
        'root = "store"', 'root = "memory://serving-test/store"'
    )
    project = make_project(toml)
    assert not project.storage.is_local
    batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    batchml.promote(project, "default_risk", model.version)
    run = batchml.score(project, "default_risk")
    batchml.publish(project, "default_risk", run.run_id)
    con = batchml.connect(project)
    assert fingerprint(con)[:2] == (run.rows, run.run_id)
    with batchml.connect(project, history=True) as history:  # run files read through the store's fsspec
        assert history.execute("SELECT count(*) FROM prediction_history").fetchone() == (run.rows,)


# -- building from the previous serving file -----------------------------------------------------------------

PREDICTION_TABLES = (
    "predictions", "predictions_staging", "past_predictions", "prediction_history", "quarantine",
)  # fmt: skip


def tables(project: batchml.Project) -> dict[str, list[tuple[Any, ...]]]:
    """The prediction tables of the serving file, and history (from the run files) beside them (the
    columns every one has: not `variant`, which `predictions` and history add)."""
    sql = "SELECT COLUMNS(lambda c: c != 'variant') FROM {} ORDER BY ALL"
    with batchml.connect(project, history=True) as con:
        return {t: con.execute(sql.format(t)).fetchall() for t in PREDICTION_TABLES}


def run_rows(project: batchml.Project, *runs: batchml.PredictionRun) -> list[tuple[Any, ...]]:
    """The rows of `runs` read straight from their Parquet files (constants included, as stored per row)."""
    files = [project.storage.uri(entry.path) for run in runs for entry in run.files]
    columns = ", ".join(n if n != "entity_id" else "CAST(entity_id AS VARCHAR)" for n, _ in PREDICTION_SCHEMA)
    return duckdb.connect().execute(f"SELECT {columns} FROM read_parquet(?) ORDER BY ALL", [files]).fetchall()


def test_publishing_copies_unchanged_runs_and_matches_a_full_rebuild(
    project: batchml.Project, published: batchml.PredictionRun, run_file_reads: list[str]
) -> None:
    run_file_reads.clear()
    run = second_run(project)
    batchml.publish(project, "default_risk", run.run_id)
    assert run_file_reads == [run.run_id]  # the first run left the file: not current, not staged
    api.stage(project, "default_risk", published.run_id)
    assert run_file_reads == [run.run_id, published.run_id]  # staged: back in from its files
    batchml.rollback_predictions(project, "default_risk")
    assert run_file_reads == [run.run_id, published.run_id]  # both copied
    incremental = tables(project)
    assert len(incremental["prediction_history"]) == published.rows + run.rows
    with connect_serving(project.serving_dir) as con:  # still sorted for point lookups, without a sort
        order = "SELECT list(entity_id ORDER BY rowid) = list(entity_id ORDER BY entity_id) FROM {}"
        assert con.execute(order.format(prediction_tables.run_table(published))).fetchone() == (True,)
    batchml.rebuild_catalog(project, full=True)
    assert run_file_reads[2:] == [published.run_id]  # current and staged: the same run, one table
    assert tables(project) == incremental


def damage_previous(project: batchml.Project, how: str) -> None:
    """Point the serving link at a file that is not a faithful previous build."""
    link = project.serving_dir / "batchml.duckdb"
    target = project.serving_dir / f"serving-damaged-{how}.duckdb"
    if how == "garbage":
        target.write_bytes(b"not a duckdb file" * 1000)
    elif how == "empty":
        duckdb.connect(str(target)).close()
    else:
        shutil.copy(link.resolve(), target)
        target.chmod(0o644)
        with duckdb.connect(str(target)) as con:
            runs = [t for (t,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
            runs = [f'"{t}"' for t in runs if t.startswith("run__")]
            assert len(runs) == 1  # the current run; the past one is not in the file
            if how == "old_schema":  # an older layout: one predictions table, fewer columns
                for view in ("predictions", "predictions_staging"):
                    con.execute(f"DROP VIEW {view}")
                for (index,) in con.execute("SELECT index_name FROM duckdb_indexes()").fetchall():
                    con.execute(f'DROP INDEX "{index}"')  # an indexed column cannot be dropped
                for table in runs:
                    con.execute(f"ALTER TABLE {table} DROP COLUMN flags")
                con.execute(f"CREATE TABLE predictions AS SELECT * FROM {runs[0]}")
            else:  # rows missing: the count no longer matches the run's manifest
                for table in runs:
                    con.execute(f"DELETE FROM {table} WHERE entity_id < 'L000000100'")
    link.unlink()
    link.symlink_to(target.name)


@pytest.mark.parametrize("how", ["garbage", "empty", "old_schema", "rows_missing"])
def test_a_damaged_or_foreign_previous_file_falls_back_to_storage(
    project: batchml.Project, published: batchml.PredictionRun, run_file_reads: list[str], how: str
) -> None:
    run = second_run(project)
    batchml.publish(project, "default_risk", run.run_id)
    expected = tables(project)
    damage_previous(project, how)
    run_file_reads.clear()
    batchml.rebuild_catalog(project, full=False)
    assert run_file_reads == [run.run_id]
    assert tables(project) == expected


def test_the_previous_file_is_reused_while_a_reader_holds_it(
    project: batchml.Project, published: batchml.PredictionRun, run_file_reads: list[str]
) -> None:
    reader = batchml.connect(project)  # read-only, external access off, in this process
    old = fingerprint(reader)
    run_file_reads.clear()
    batchml.rebuild_catalog(project, full=False)
    assert run_file_reads == []
    assert fingerprint(reader) == old
    assert fingerprint(batchml.connect(project)) == old


def test_catalog_rebuild_is_full_unless_asked_for_incremental(
    project: batchml.Project, published: batchml.PredictionRun, run_file_reads: list[str]
) -> None:
    config = ["--config", str(project.base_dir / "batchml.toml")]
    run_file_reads.clear()
    full = CliRunner().invoke(app, [*config, "catalog", "rebuild", "--json"], env={"BATCHML_CONFIG": None})
    assert full.exit_code == 0 and json.loads(full.stdout)["full"] is True
    assert run_file_reads == [published.run_id]
    args = [*config, "catalog", "rebuild", "--incremental", "--json"]
    incremental = CliRunner().invoke(app, args, env={"BATCHML_CONFIG": None})
    assert incremental.exit_code == 0 and json.loads(incremental.stdout)["full"] is False
    assert run_file_reads == [published.run_id]
    assert fingerprint(batchml.connect(project))[:2] == (published.rows, published.run_id)


# -- the serving file cannot be edited, and an edit does not survive -----------------------------------------

_OPEN_AS = """
import json, os, sys
import duckdb
path, uid = sys.argv[1], int(sys.argv[2])
if os.geteuid() != uid:
    os.setgid(uid)
    os.setuid(uid)
outcome = {}
for mode, read_only in (("read-write", False), ("read-only", True)):
    try:
        duckdb.connect(path, read_only=read_only).close()
        outcome[mode] = "opened"
    except duckdb.Error as exc:
        outcome[mode] = str(exc)
print(json.dumps(outcome))
"""
NOBODY = 65534


@pytest.fixture
def shared_serving_dir() -> Iterator[Path]:
    """A serving folder other users can reach (pytest's own folders are closed to them)."""
    folder = Path(tempfile.mkdtemp(prefix="batchml-serving-"))
    folder.chmod(0o755)
    yield folder / "serving"
    shutil.rmtree(folder)


def test_serving_files_are_read_only_on_disk(
    make_project: Callable[..., batchml.Project], loans_csv: Path, shared_serving_dir: Path
) -> None:
    """Mode 0444: even the account that owns the file (root aside) cannot open it read-write; readers can."""
    toml = PROJECT_TOML.format(source=loans_csv).replace(
        'root = "store"', f'root = "store"\nserving_dir = "{shared_serving_dir}"'
    )
    project = make_project(toml)
    batchml.snapshot_dataset(project, "loans")
    batchml.promote(project, "default_risk", batchml.train(project, "default_risk").version, reason="test")
    batchml.publish(project, "default_risk", batchml.score(project, "default_risk").run_id)
    current = batchml.database_path(project).resolve()
    owner = NOBODY if os.geteuid() == 0 else os.geteuid()  # root ignores modes: test as a non-root owner
    os.chown(current, owner, -1)
    found = subprocess.run(
        [sys.executable, "-c", _OPEN_AS, str(current), str(owner)],
        capture_output=True,
        text=True,
        check=True,
    )
    outcome = json.loads(found.stdout)
    assert outcome["read-only"] == "opened"
    assert "Permission denied" in outcome["read-write"], outcome
    assert current.parent == shared_serving_dir and current.stat().st_mode & 0o777 == 0o444
    assert current.name.startswith("serving-") and not list(shared_serving_dir.glob(".building-*"))


def test_a_forged_prediction_does_not_survive_the_next_publish(
    project: batchml.Project,
    published: batchml.PredictionRun,
    run_file_reads: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Row counts still match after an UPDATE; the run's content checksum does not, so the run is re-read."""
    current = batchml.database_path(project).resolve()
    current.chmod(0o644)  # root, or the file's owner, can always do this
    with duckdb.connect(str(current)) as con:
        con.execute(f"UPDATE {prediction_tables.run_table(published)} SET prediction = 0.123456789")
    run_file_reads.clear()
    run = second_run(project)
    with caplog.at_level(logging.WARNING, logger="batchml.serving.prediction_tables"):
        batchml.publish(project, "default_risk", run.run_id)
    assert sorted(run_file_reads) == sorted([published.run_id, run.run_id])
    assert f"run {published.run_id}" in caplog.text and "content checksum" in caplog.text
    got = tables(project)
    assert got["prediction_history"] == run_rows(project, published, run)
    assert all(row[3] != 0.123456789 for row in got["past_predictions"])
    run_file_reads.clear()
    batchml.rebuild_catalog(project, full=False)  # the repaired file is copied again
    assert run_file_reads == []


def test_a_checksum_from_an_engine_that_hashes_differently_reads_the_run_files(
    project: batchml.Project,
    published: batchml.PredictionRun,
    run_file_reads: list[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a DuckDB upgrade that changes `hash`, builds cannot compare checksums: slower, never wrong."""
    expected = tables(project)
    monkeypatch.setattr(run_checksum, "_probe", lambda *_: "0123456789abcdef")  # the new engine's probe value
    run_file_reads.clear()
    with caplog.at_level(logging.INFO, logger="batchml.serving.prediction_tables"):
        batchml.rebuild_catalog(project, full=False)
    assert run_file_reads == [published.run_id]
    assert f"duckdb {duckdb.__version__}, which hashes differently" in caplog.text
    assert tables(project) == expected
