"""History: the serving file holds the runs served now; every run ever published is read from its files."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

import batchml
from batchml import api
from batchml.cli import app
from batchml.errors import BatchMLError, NotFoundError
from batchml.serving import prediction_tables
from tests.serving.test_serving import run_rows, second_run

PAST = "SELECT * EXCLUDE (variant) FROM {} ORDER BY ALL"  # history has no arms: variant is NULL


def run_tables(project: batchml.Project) -> set[str]:
    with batchml.connect(project) as con:
        rows = con.execute("SELECT table_name FROM duckdb_tables() WHERE starts_with(table_name, 'run__')")
        return {f'"{t}"' for (t,) in rows.fetchall()}


def test_the_serving_file_holds_the_current_and_staged_runs_and_history_reads_the_run_files(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    first = datetime.now(UTC)
    run = second_run(project)
    batchml.publish(project, "default_risk", run.run_id)
    third = batchml.score(project, "default_risk", alias=None, version=1, dataset="loans@latest")
    assert third.run_id == published.run_id  # the same work: the same run
    assert run_tables(project) == {prediction_tables.run_table(run)}  # the past run left the file
    with batchml.connect(project) as con:
        names = {t for (t,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert {"predictions", "predictions_staging", "published_runs"} <= names
        assert not names & {"prediction_history", "past_predictions"}  # history is not in the file
        ever = con.execute("SELECT run_id, rows FROM published_runs ORDER BY scored_at").fetchall()
        assert ever == [(published.run_id, published.rows), (run.run_id, run.rows)]
    api.stage(project, "default_risk", published.run_id)  # staged: back in the file, beside the current
    assert run_tables(project) == {prediction_tables.run_table(r) for r in (published, run)}
    with batchml.connect(project, history=True) as con:
        assert con.execute(PAST.format("prediction_history")).fetchall() == run_rows(project, published, run)
        assert con.execute(PAST.format("past_predictions")).fetchall() == run_rows(project, published)
        at_first = "SELECT run_id, prediction FROM prediction_at('default_risk', 'L000000042', ?)"
        got = con.execute(at_first, [first]).fetchall()
        want = [(r[7], r[3]) for r in run_rows(project, published) if r[2] == "L000000042"]
        assert got == want
        assert con.execute(at_first, [datetime.now(UTC)]).fetchall()[0][0] == run.run_id
        assert con.execute("SELECT count(*) FROM predictions").fetchone() == (run.rows,)  # the file as well


def test_prediction_at_follows_publishes_and_rollbacks(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    run = second_run(project)
    times = [datetime.now(UTC)]
    batchml.publish(project, "default_risk", run.run_id)
    times.append(datetime.now(UTC))
    batchml.rollback_predictions(project, "default_risk")
    times.append(datetime.now(UTC))
    with batchml.connect(project, history=True) as con:
        served = [con.execute("SELECT published_run_at('default_risk', ?)", [t]).fetchone() for t in times]
        assert served == [(published.run_id,), (run.run_id,), (published.run_id,)]
        ids = ["L000000042", "L000000007", "nobody"]
        table = batchml.lookup(con, "default_risk", ids, at=times[1])
        assert table.column("entity_id").to_pylist() == ["L000000007", "L000000042"]
        assert set(table.column("run_id").to_pylist()) == {run.run_id}
        assert table.schema == batchml.lookup(con, "default_risk", ids).schema  # the same columns as today's
        # the scan opens the chosen run's files only (the join pushes their names into it), at any depth
        plan = con.execute(
            "EXPLAIN ANALYZE SELECT * FROM prediction_at('default_risk', 'L000000042', ?)", [times[0]]
        ).fetchall()[0][1]
        assert "Total Files Read: 1 " in plan


def test_bad_history_input_is_one_clear_line(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    with batchml.connect(project, history=True) as con:
        with pytest.raises(NotFoundError, match=r"published model 'nope' not found; available: default_risk"):
            batchml.lookup(con, "nope", ["L000000042"], at=datetime.now(UTC))
        with pytest.raises(NotFoundError, match=r"published run of model 'default_risk' at 2001-01-01"):
            batchml.lookup(con, "default_risk", ["L000000042"], at="2001-01-01")
        with pytest.raises(BatchMLError, match=r"time 'yesterday' is invalid: use an ISO 8601 time"):
            batchml.lookup(con, "default_risk", ["L000000042"], at="yesterday")
    with batchml.connect(project) as con, pytest.raises(BatchMLError, match=r"connect\(history=True\)"):
        batchml.lookup(con, "default_risk", ["L000000042"], at=datetime.now(UTC))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_history_reader_reads_only_the_published_run_files(
    project: batchml.Project, published: batchml.PredictionRun, tmp_path: Path
) -> None:
    storage = project.storage
    unpublished = second_run(project)  # scored, never published: not history
    run_file = Path(storage.full_path(published.files[0].path))
    other_run = Path(storage.full_path(unpublished.files[0].path))
    dataset_file = next(Path(storage.full_path("datasets")).rglob("*.parquet"))
    before = sha(run_file)
    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n")
    with batchml.connect(project, history=True) as con:
        assert con.execute("SELECT count(*) FROM prediction_history").fetchone() == (published.rows,)
        refused = [
            f"SELECT * FROM read_parquet('{other_run}')",
            f"SELECT * FROM read_parquet('batchml-runs://{unpublished.files[0].path}')",
            f"SELECT * FROM read_parquet('{dataset_file}')",
            f"SELECT * FROM read_parquet('{run_file}')",  # even a run file: only through the read-only view
            f"SELECT * FROM read_csv('{outside}')",
            f"SELECT * FROM glob('{run_file.parent}/*')",
            "SELECT * FROM glob('batchml-runs://*')",
            f"COPY (SELECT 1 AS x) TO 'batchml-runs://{published.files[0].path}' (FORMAT parquet)",
            f"COPY (SELECT 1 AS x) TO 'batchml-runs://{published.files[0].path}' (USE_TMP_FILE false)",
            f"COPY (SELECT 1 AS x) TO '{run_file}' (FORMAT csv, USE_TMP_FILE false)",
            f"ATTACH '{tmp_path / 'new.duckdb'}'",
            "SET enable_external_access = true",
            "SET disabled_filesystems = ''",
            f"SET allowed_paths = ['{dataset_file}']",
            "SET threads = 8",
        ]
        for sql in refused:
            with pytest.raises(duckdb.Error):
                con.execute(sql).fetchall()
                pytest.fail(f"not refused: {sql}")
        assert con.execute("SELECT count(*) FROM prediction_history").fetchone() == (published.rows,)
    assert sha(run_file) == before
    assert not (tmp_path / "new.duckdb").exists()


def test_batchml_query_history_answers_from_the_run_files(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    sql = "SELECT run_id, count(*) AS n FROM prediction_history GROUP BY ALL"
    args = ["--config", str(project.base_dir / "batchml.toml"), "query", "--json"]
    done = CliRunner().invoke(app, [*args, "--history", sql])
    assert done.exit_code == 0, done.output
    assert '"n": ' + str(published.rows) in done.output
    plain = CliRunner().invoke(app, [*args, sql])
    assert plain.exit_code != 0 and "prediction_history" in plain.output  # not in the serving file


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folders` (hidden ones too) with its size and mtime in ns."""
    return {
        str(p): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if not p.is_dir()
    }


def test_scoring_or_publishing_what_is_already_published_changes_no_file(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    store = Path(project.storage.root)
    before = snapshot(store, project.serving_dir)
    args = ["--config", str(project.base_dir / "batchml.toml")]
    done = CliRunner().invoke(app, [*args, "score", "default_risk"])
    assert done.exit_code == 0, done.output
    assert snapshot(store, project.serving_dir) == before
    current = batchml.database_path(project).resolve()
    assert batchml.publish(project, "default_risk", published.run_id) == current
    assert snapshot(store, project.serving_dir) == before
    api.stage(project, "default_risk", published.run_id)  # staging is a channel of its own: it changes
    staged = snapshot(store, project.serving_dir)
    assert staged != before
    done = CliRunner().invoke(app, [*args, "score", "default_risk", "--stage"])
    assert done.exit_code == 0, done.output
    assert snapshot(store, project.serving_dir) == staged
