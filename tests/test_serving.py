"""Publishing: atomic swaps of a read-only DuckDB file derived from storage, with stable views."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

import batchml
from batchml.errors import NotFoundError, ReadOnlyError
from batchml.serving import build_serving_db
from tests.conftest import PROJECT_TOML

VIEWS = {
    "predictions", "prediction_history", "models", "model_aliases", "alias_events",
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


def test_published_tables_answer_sql(project: batchml.Project, published: batchml.PredictionRun) -> None:
    con = batchml.connect(project)
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert names >= VIEWS
    assert fingerprint(con)[:2] == (published.rows, published.run_id)
    row = con.execute(
        "SELECT prediction, run_id FROM predictions WHERE model = 'default_risk' AND entity_id = 'L000000042'"
    ).fetchone()
    assert row is not None and 0.0 <= row[0] <= 1.0 and row[1] == published.run_id
    assert con.execute("SELECT count(*) FROM prediction_history").fetchone() == (published.rows,)
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
    assert after.execute("SELECT count(DISTINCT run_id) FROM prediction_history").fetchone() == (2,)


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


def test_old_serving_files_are_collected_after_the_grace_period(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    current = build_serving_db(project.storage, project.serving_dir, grace_seconds=0)
    assert sorted(p.name for p in project.serving_dir.glob("serving-*")) == [current.name]


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
    assert con.execute("SELECT count(*) FROM prediction_history").fetchone() == (run.rows,)
