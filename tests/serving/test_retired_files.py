"""Old serving files go once a newer file has replaced them for the grace period; readers never notice.

The grace counts from when a file stopped being current, not from when it was built: a file served for
hours and replaced a moment ago stays. Readers hold the file they opened (POSIX keeps an unlinked file
readable), and one that resolved the link just before the file was collected opens the newer file instead.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import duckdb

import batchml
from batchml.serving.database import build_serving_db
from batchml.serving.gc import collect
from batchml.serving.lookup_files import SUFFIX, sidecars
from batchml.serving.pointer import GRACE_SECONDS, serving_path
from batchml.serving.readers import open_current
from batchml.serving.run_tables import run_table_name

HOUR = 3600.0


def _age(path: Path, seconds: float) -> Path:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))
    return path


def _serving_names(project: batchml.Project) -> set[str]:
    return {p.name for p in project.serving_dir.glob("serving-*")}


def _own(path: Path, run: batchml.PredictionRun) -> set[str]:
    """The names of serving file `path` and of its sidecars: its log state and the run's lookup files."""
    table = run_table_name("default_risk", run.run_id).strip('"')
    return {path.name, f"{path.name}.logs", *(p.name for p in sidecars(path, table))}


def _build(project: batchml.Project, **kwargs: float) -> Path:
    return build_serving_db(project.storage, project.serving_dir, **kwargs)


def _count(con: duckdb.DuckDBPyConnection) -> tuple[int, float]:
    row = con.execute("SELECT count(*), sum(prediction) FROM predictions").fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


def test_a_replaced_file_stays_for_the_grace_period_counted_from_its_replacement(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    first = _age(serving_path(project.serving_dir).resolve(), 2 * HOUR)  # built long ago, current until now
    second = _build(project)
    assert _own(first, published) <= _serving_names(project)  # replaced a moment ago: kept

    _age(second, GRACE_SECONDS + 5)  # `first` was replaced when `second` was installed: that long ago
    third = _build(project)
    assert _serving_names(project) == _own(second, published) | _own(third, published)


def test_publishing_many_times_keeps_only_the_files_within_the_grace_period(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    for _ in range(5):
        current = _build(project, grace_seconds=0)
    assert _serving_names(project) == _own(current, published)


def test_a_reader_keeps_reading_the_file_it_opened_after_it_is_collected(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    held = batchml.connect(project)
    opened = serving_path(project.serving_dir).resolve()
    before = _count(held)
    _build(project, grace_seconds=0)
    assert not opened.exists()
    assert _count(held) == before
    held.close()


def test_a_reader_that_resolved_a_file_collected_before_it_opened_opens_the_newer_one(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    resolved: list[Path] = []

    def open_after_a_publish(path: Path) -> duckdb.DuckDBPyConnection:
        resolved.append(path)
        if len(resolved) == 1:  # the race: a publish replaces and collects the file just resolved
            _build(project, grace_seconds=0)
        return duckdb.connect(str(path), read_only=True)

    con = open_current(project.serving_dir, open_after_a_publish)
    assert len(resolved) == 2 and not resolved[0].exists()
    assert resolved[1] == serving_path(project.serving_dir).resolve()
    assert _count(con)[0] == published.rows
    con.close()


def test_gc_collects_replaced_files_by_their_replacement_time_and_orphaned_sidecars(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    first = _build(project, grace_seconds=0)  # the only file
    second = _build(project)
    orphan = project.serving_dir / "serving-20000101T000000000000-deadbeef.duckdb.logs"
    lookup = orphan.with_name(f"serving-20000101T000000000000-deadbeef.duckdb.run__m__r.{SUFFIX}.keys")
    for leftover in (orphan, lookup):  # of a build that crashed before its flip
        leftover.write_text("{}")
        _age(leftover, 2 * HOUR)
    young = collect(project.storage, project.serving_dir, grace_seconds=HOUR)
    assert young.deleted == [str(orphan), str(lookup)] and str(first) in young.kept_young

    _age(second, 2 * HOUR)
    report = collect(project.storage, project.serving_dir, grace_seconds=HOUR)
    assert report.deleted == [str(first)]
    assert _serving_names(project) == _own(second, published)
    assert _count(batchml.connect(project))[0] == published.rows
