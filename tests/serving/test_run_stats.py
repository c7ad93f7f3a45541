"""`run_stats`, a view in the serving file: each run's scoring telemetry and its publish seconds."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import batchml
from batchml.scoring.telemetry import STAGES
from batchml.serving import database
from batchml.serving.publish_timing import record_publish_timings
from batchml.serving.readers import serving_path
from batchml.store.records import seal, unseal

COLUMNS = ", ".join(f"{stage}_s" for stage in STAGES)
EXPECTED = [
    "run_id", "model", "rows", *(f"{s}_s" for s in STAGES), "wall_s", "threads", "rows_per_s",
    "peak_rss_mib", "publish_s", "publish_seq",
]  # fmt: skip
MODEL = "default_risk"


def _timing_records(project: batchml.Project) -> dict[int, dict[str, Any]]:
    """The publish timing records in storage, by publication seq."""
    folder = Path(project.storage.root, f"publications/{MODEL}/timings")
    return {int(p.stem): json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def _stats(project: batchml.Project) -> dict[str, tuple[Any, ...]]:
    rows = batchml.connect(project).execute("SELECT run_id, publish_s, publish_seq FROM run_stats").fetchall()
    return {r[0]: r[1:] for r in rows}


def _second_run(project: batchml.Project) -> batchml.PredictionRun:
    model = batchml.train(project, MODEL, params={"num_leaves": 7})
    return batchml.score(project, MODEL, alias=None, version=model.version)


def test_run_stats_is_a_view_with_the_documented_columns(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    con = batchml.connect(project)
    (kind,) = con.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_name = 'run_stats'"
    ).fetchone() or (None,)
    assert kind == "VIEW"
    assert [d[0] for d in con.execute("SELECT * FROM run_stats").description or []] == EXPECTED
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    (line,) = [row for row in readme.splitlines() if row.startswith("| `run_stats` |")]
    assert all(column in line for column in EXPECTED)


def test_run_stats_has_each_runs_telemetry_and_its_publish_seconds(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    second = _second_run(project)
    batchml.publish(project, MODEL, second.run_id)
    con = batchml.connect(project)
    rows = con.execute(f"SELECT {', '.join(EXPECTED)} FROM run_stats ORDER BY run_id").fetchall()
    assert [r[0] for r in rows] == sorted([published.run_id, second.run_id])
    records = _timing_records(project)
    assert sorted(records) == [1, 2]  # the first publish's record came with it; the second's is in the file
    for row in rows:
        run, seq = (published, 1) if row[0] == published.run_id else (second, 2)
        t = run.telemetry
        assert row[1:3] == (MODEL, run.rows)
        assert row[3:-2] == (*(t["seconds"][s] for s in STAGES), t["wall_seconds"], t["threads"],
                             t["rows_per_s"], t["peak_rss_mib"])  # fmt: skip
        assert row[-2:] == (records[seq]["publish_s"], seq) and row[-2] > 0


def test_a_rollback_is_timed_as_the_publication_of_the_run_it_returns_to(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    second = _second_run(project)
    batchml.publish(project, MODEL, second.run_id)
    batchml.rollback_predictions(project, MODEL)
    stats = _stats(project)
    assert stats[published.run_id][1] == 3 and stats[second.run_id][1] == 2
    timings = batchml.connect(project).execute(
        "SELECT seq, action, run_id FROM publish_timings ORDER BY seq"
    ).fetchall()
    assert timings == [(1, "publish", published.run_id), (2, "publish", second.run_id),
                       (3, "rollback", published.run_id)]  # fmt: skip


def test_publishing_the_current_run_again_times_nothing_new(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    before = (_timing_records(project), serving_path(project.serving_dir).resolve())
    batchml.publish(project, MODEL, published.run_id)
    assert (_timing_records(project), serving_path(project.serving_dir).resolve()) == before


def test_a_rerun_after_a_crash_before_the_timing_record_ends_like_an_uninterrupted_run(
    project: batchml.Project, published: batchml.PredictionRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    second = _second_run(project)
    previous = serving_path(project.serving_dir).resolve()
    real = database.record_publish_timings

    def crash_after_the_flip(storage: batchml.Storage, serving_file: Path) -> int:
        if serving_file != previous:
            raise KeyboardInterrupt("killed after the flip")
        return real(storage, serving_file)

    monkeypatch.setattr(database, "record_publish_timings", crash_after_the_flip)
    with pytest.raises(KeyboardInterrupt):
        batchml.publish(project, MODEL, second.run_id)
    monkeypatch.undo()
    built = serving_path(project.serving_dir).resolve()
    assert built != previous and sorted(_timing_records(project)) == [1]
    in_file = _stats(project)[second.run_id]
    assert in_file[1] == 2 and in_file[0] > 0  # the file already shows its own publish time

    batchml.publish(project, MODEL, second.run_id)  # the re-run: nothing to build, the record to finish
    assert serving_path(project.serving_dir).resolve() == built
    records = _timing_records(project)
    assert sorted(records) == [1, 2]
    assert (records[2]["publish_s"], records[2]["serving_file"]) == (in_file[0], built.name)
    batchml.rebuild_catalog(project)  # a later build reads the record: the same figure
    assert _stats(project)[second.run_id] == in_file


def test_a_crash_before_the_record_is_finished_by_the_next_build(
    project: batchml.Project, published: batchml.PredictionRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    second = _second_run(project)
    monkeypatch.setattr(database, "record_publish_timings", lambda storage, serving_file: 0)
    batchml.publish(project, MODEL, second.run_id)  # as if killed after the flip
    monkeypatch.undo()
    in_file = _stats(project)[second.run_id]
    batchml.rollback_predictions(project, MODEL)  # its build first records what the crash left
    assert sorted(_timing_records(project)) == [1, 2, 3]
    assert _timing_records(project)[2]["publish_s"] == in_file[0]


def test_of_two_racing_record_writers_exactly_one_creates_the_record_with_the_same_bytes(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    served = serving_path(project.serving_dir).resolve()
    record = Path(project.storage.root, f"publications/{MODEL}/timings/000000001.json")
    written = record.read_bytes()
    record.unlink()  # as if the publish had been killed before storing it
    barrier = threading.Barrier(2)

    def finish(_: int) -> int:
        barrier.wait()
        return record_publish_timings(project.storage, served)

    with ThreadPoolExecutor(2) as pool:
        created = list(pool.map(finish, range(2)))
    assert sorted(created) == [0, 1] and record.read_bytes() == written


def test_a_run_committed_before_telemetry_shows_nulls(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    manifest = Path(project.storage.root, f"runs/{MODEL}/manifests/{published.run_id}.json")
    old = unseal(json.loads(manifest.read_text()), str(manifest))
    del old["telemetry"]
    manifest.chmod(0o644)
    manifest.write_text(json.dumps(seal(old)))
    batchml.rebuild_catalog(project)
    sql = f"SELECT run_id, rows, {COLUMNS}, rows_per_s, peak_rss_mib FROM run_stats"
    row = batchml.connect(project).execute(sql).fetchone()
    assert row == (published.run_id, published.rows, *([None] * (len(STAGES) + 2)))
