"""Lookup files: each run table's rows beside the serving file, read by `batchml.lookup` without DuckDB.

They must answer exactly what the `predictions` view answers, appear with their file (before the link flips
to it), be kept by hard links while the run stays, go with their file, and never be half-written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

import batchml
from batchml.errors import BatchMLError
from batchml.serving import lookup as lookup_module
from batchml.serving import lookup_files
from batchml.serving.database import build_serving_db
from batchml.serving.lookup_files import LookupFiles, sidecars, write_lookup_files
from batchml.serving.operations import catch_up
from batchml.serving.run_tables import STORED_COLUMNS, run_table_name
from tests.conftest import PROJECT_TOML
from tests.serving.test_serving import second_run

TABLE = "run__m__r1"
#: Ids that break naive byte handling: prefixes of each other, multi-byte UTF-8, spaces, case.
TRICKY = ["a", "ab", "abc", "a b", " a", "A", "b", "zz", "é1", "Ä", "日本", "ñandú", "~"]
ROWS = """SELECT entity_id, {i} / 7.0, CASE WHEN {i} % 2 = 0 THEN 'yes' ELSE NULL END, CAST({i} AS UBIGINT),
    CASE WHEN {i} % 3 = 0 THEN [{{'feature': 'f' || {i}, 'contribution': {i} / 3.0}}] ELSE NULL END,
    CASE WHEN {i} % 5 = 0 THEN ['flag'] ELSE [] END"""


def run_table_file(path: Path, ids: list[str], order: str = "entity_id") -> Path:
    """A DuckDB file with one run table of `ids` (stored columns, varied values), in `order`."""
    with duckdb.connect(str(path)) as con:
        con.execute(
            f"""CREATE TABLE "{TABLE}" (entity_id VARCHAR, prediction DOUBLE, predicted_class VARCHAR,
            input_hash UBIGINT, reasons STRUCT(feature VARCHAR, contribution DOUBLE)[], flags VARCHAR[])"""
        )
        con.execute("CREATE TEMP TABLE ids AS SELECT unnest(?) AS entity_id", [ids])
        rows = ROWS.format(i="hash(entity_id) % 1000")
        con.execute(f'INSERT INTO "{TABLE}" {rows} FROM ids ORDER BY {order}')
    return path


def expected(path: Path, asked: list[str]) -> pa.Table:
    with duckdb.connect(str(path), read_only=True) as con:
        sql = f'SELECT {", ".join(STORED_COLUMNS)} FROM "{TABLE}" WHERE entity_id IN (SELECT unnest(?))'
        return con.sql(sql + " ORDER BY entity_id", params=[asked]).to_arrow_table()


def test_the_files_answer_exactly_what_duckdb_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Present, absent, repeated and near-miss ids (prefixes, an id with a NUL, wider than any served one),
    one at a time and as one batch, over many small record batches."""
    monkeypatch.setattr(lookup_files, "BATCH_ROWS", 300)
    monkeypatch.setattr(lookup_files, "_SLICE_ROWS", 7)
    served = [*TRICKY, *(f"L{i:05d}" for i in range(0, 5000, 3))]
    path = run_table_file(tmp_path / "serving.duckdb", served)
    assert write_lookup_files(path, path, None) == [TABLE]
    files = LookupFiles.open(path, TABLE)
    assert files is not None and len(files.batches) > 5 and files.width == len("ñandú".encode())
    missing = ["", "a\x00", "abcd", "L00001", "L000010", "ñ", "ñandú!", "x" * 100, "Z"]
    asked = [*reversed(served[::7]), *missing, served[3], served[3], *TRICKY]
    assert files.take(asked).equals(expected(path, asked))  # once each, in entity id order
    assert files.take([]).num_rows == 0 and files.take(missing).num_rows == 0
    for key in [*TRICKY, *served[::97], *missing]:
        row = files.find(key)
        want = expected(path, [key])
        assert (row is None and want.num_rows == 0) or pa.Table.from_batches([row]).equals(want), key
    for name in ("keys", "rows"):  # read-only, as the serving file
        assert oct(sidecars(path, TABLE)[name == "rows"].stat().st_mode & 0o777) == oct(0o444)


@pytest.mark.parametrize(
    ("ids", "order"),
    [
        (["b", "a", "c"], "entity_id DESC"),  # not in id order: another tool's file
        (["a", "a\x00b", "c"], "entity_id"),  # a NUL: fixed-width bytes would lose what follows it
        (["a", "y" * (lookup_files.MAX_KEY_BYTES + 1)], "entity_id"),  # wider than any key is written
        (["a", "a", "b"], "entity_id"),  # not unique
        ([], "entity_id"),  # nothing to find
    ],
)
def test_a_table_the_files_cannot_hold_exactly_gets_none_and_nothing_is_left_behind(
    tmp_path: Path, ids: list[str], order: str
) -> None:
    path = run_table_file(tmp_path / "serving.duckdb", ids, order)
    assert write_lookup_files(path, path, None) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serving.duckdb"]
    assert LookupFiles.open(path, TABLE) is None


def test_an_interrupted_write_leaves_no_file_and_the_next_build_completes(
    project: batchml.Project, published: batchml.PredictionRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash while the files are written (here: the disk fills) fails the publish before its link flips:
    readers keep the previous file, nothing half-written stays, and publishing again ends as one run would."""
    run = second_run(project)
    before = batchml.database_path(project).resolve()

    def disk_full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lookup_files, "_write_batch", disk_full)
    with pytest.raises(OSError, match="No space left"):
        batchml.publish(project, "default_risk", run.run_id)
    assert batchml.database_path(project).resolve() == before
    assert not [p.name for p in project.serving_dir.iterdir() if p.name.startswith((".tmp-", ".building-"))]
    monkeypatch.undo()
    batchml.publish(project, "default_risk", run.run_id)
    after = batchml.database_path(project).resolve()
    table = run_table_name("default_risk", run.run_id).strip('"')
    assert after != before and all(p.exists() for p in sidecars(after, table))
    with batchml.connect(project) as con:
        assert batchml.lookup(con, "default_risk", ["L000000042"]).column("run_id").to_pylist() == [
            run.run_id
        ]


def test_a_kept_run_keeps_its_files_by_hard_link_and_they_go_with_their_file(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    """A rebuild that keeps the run links its files (nothing written); once the older file is collected
    its names go, and the current file's still read."""
    table = run_table_name("default_risk", published.run_id).strip('"')
    first = batchml.database_path(project).resolve()
    keys, rows = sidecars(first, table)
    inodes = [keys.stat().st_ino, rows.stat().st_ino]
    second = build_serving_db(project.storage, project.serving_dir, grace_seconds=0)  # collects the first
    assert [p.stat().st_ino for p in sidecars(second, table)] == inodes  # the same files: nothing written
    assert not first.exists() and not keys.exists() and not rows.exists()
    third = build_serving_db(project.storage, project.serving_dir, grace_seconds=0)
    assert sorted(project.serving_dir.glob(f"*.{lookup_files.SUFFIX}.*")) == sorted(sidecars(third, table))
    assert sidecars(third, table)[0].stat().st_nlink == 1
    with batchml.connect(project) as con:
        found = batchml.lookup(con, "default_risk", ["L000000042", "L000000043"])
        assert lookup_module._READERS[con].runs["default_risk"].files is not None  # type: ignore[union-attr]
        assert found.num_rows == 2


def test_the_setting_off_writes_none_and_lookups_read_duckdb(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    project = make_project(PROJECT_TOML.format(source=loans_csv) + "\n[serving]\nlookup_files = false\n")
    batchml.snapshot_dataset(project, "loans")
    batchml.promote(project, "default_risk", batchml.train(project, "default_risk").version, reason="test")
    batchml.publish(project, "default_risk", batchml.score(project, "default_risk").run_id)
    assert not list(project.serving_dir.glob(f"*.{lookup_files.SUFFIX}.*"))
    with batchml.connect(project) as con:
        found = batchml.lookup(con, "default_risk", ["L000000042", "L000000043"])
        assert found.num_rows == 2 and lookup_module._READERS[con].runs["default_risk"].files is None  # type: ignore[union-attr]


def test_a_bad_setting_is_one_clear_line(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    with pytest.raises(BatchMLError, match=r"serving.lookup_files: must be true or false \(got 'yes'\)"):
        make_project(PROJECT_TOML.format(source=loans_csv) + '\n[serving]\nlookup_files = "yes"\n')


def test_changing_the_setting_rebuilds_the_file_at_the_next_command(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    """Like `reader_memory_limit`: the file follows the setting without waiting for a publish."""
    table = run_table_name("default_risk", published.run_id).strip('"')
    toml = project.base_dir / "batchml.toml"
    toml.write_text(toml.read_text() + "\n[serving]\nlookup_files = false\n")
    off = batchml.Project.open(toml)
    assert catch_up(off) == ["it has lookup files, [serving] lookup_files is false"]
    without = batchml.database_path(off).resolve()
    assert not any(p.exists() for p in sidecars(without, table))
    assert catch_up(off) == []  # as set: nothing to do
    assert catch_up(project) == ["it has no lookup files, [serving] lookup_files is true"]  # the default
    assert all(p.exists() for p in sidecars(batchml.database_path(project).resolve(), table))
