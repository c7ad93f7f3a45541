"""Exactly once: the same work scored and published twice, even by two processes at once, counts once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import batchml
from batchml.errors import ConflictError
from batchml.scoring.publications import PublicationLog
from batchml.scoring.runs import list_runs
from batchml.store.eventlog import EventLog
from batchml.store.storage import Storage
from batchml.testing import write_loans

DRIVER = Path(__file__).parents[1] / "crash_driver.py"
MODEL = "default_risk"


def test_append_with_expected_seq_conflicts_instead_of_retrying(tmp_path: Path) -> None:
    log = EventLog(Storage(str(tmp_path)), "log")
    assert log.append({"n": 1}, expected_seq=1)["seq"] == 1
    with pytest.raises(ConflictError, match=r"000000001\.json already exists"):
        log.append({"n": 2}, expected_seq=1)
    assert log.append({"n": 3})["seq"] == 2 and [e["n"] for e in log.read()] == [1, 3]


def test_next_seq_ignores_temp_files_and_gaps(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / ".tmp-leftover").write_bytes(b"{")  # a crash between write and link
    storage.create_json("log/000000003.json", {"seq": 3})
    assert EventLog(storage, "log").append({"n": 4})["seq"] == 4


def test_publishing_the_current_run_again_appends_nothing(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    log = PublicationLog(project.storage)
    first = log.events(MODEL)
    assert log.publish(MODEL, published.run_id) == first[-1]
    batchml.publish(project, MODEL, published.run_id)
    assert log.events(MODEL) == first


def test_a_publish_that_loses_the_race_sees_the_winner_and_appends_nothing(
    project: batchml.Project, champion: batchml.ModelVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both read the log before either appends: the loser's create conflicts, it re-reads, and stops."""
    run = batchml.score(project, MODEL)
    original = EventLog.append
    raced: list[dict[str, Any]] = []

    def append_after_the_other_writer(self: EventLog, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if not raced:  # the other process publishes the same run between our read and our append
            monkeypatch.setattr(EventLog, "append", original)
            raced.append(PublicationLog(project.storage).publish(MODEL, run.run_id, "other"))
            monkeypatch.setattr(EventLog, "append", append_after_the_other_writer)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EventLog, "append", append_after_the_other_writer)
    event = PublicationLog(project.storage).publish(MODEL, run.run_id, "mine")
    events = PublicationLog(project.storage).events(MODEL)
    assert event == raced[0] and [(e["run_id"], e["reason"]) for e in events] == [(run.run_id, "other")]


def test_two_rollbacks_that_race_step_back_once(
    project: batchml.Project, champion: batchml.ModelVersion, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Both read the log before either appends: the loser fails instead of rolling back a second step."""
    log = PublicationLog(project.storage)
    sources = [write_loans(tmp_path / f"loans{seed}.csv", rows=300, seed=seed) for seed in (1, 2, 3)]
    refs = [batchml.snapshot_dataset(project, "loans", str(source)).ref for source in sources]
    runs = [batchml.score(project, MODEL, dataset=ref) for ref in refs]
    for run in runs:
        log.publish(MODEL, run.run_id)
    original = EventLog.append
    raced: list[dict[str, Any]] = []

    def append_after_the_other_rollback(self: EventLog, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if not raced:
            monkeypatch.setattr(EventLog, "append", original)
            raced.append(PublicationLog(project.storage).rollback(MODEL, "other"))
            monkeypatch.setattr(EventLog, "append", append_after_the_other_rollback)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EventLog, "append", append_after_the_other_rollback)
    with pytest.raises(ConflictError, match=r"changed while this command was deciding.*nothing was done"):
        log.rollback(MODEL, "mine")
    assert raced[0]["run_id"] == runs[1].run_id
    assert log.current(MODEL) == runs[1].run_id and len(log.events(MODEL)) == 4


def test_two_processes_scoring_and_publishing_the_same_work_end_with_one_run_and_one_event(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    start_at = time.time() + 4.0  # both interpreters are up by then; they start the work together
    workers = [
        subprocess.Popen(
            [sys.executable, str(DRIVER), "work", str(project.base_dir), str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["run_id"] == results[1]["run_id"]
    runs = list_runs(project.storage, MODEL)
    assert [r.run_id for r in runs] == [results[0]["run_id"]]
    events = PublicationLog(project.storage).events(MODEL)
    assert [(e["action"], e["run_id"]) for e in events] == [("publish", results[0]["run_id"])]
    # The loser of the manifest race (if both scored) removed its part files: only the winner's remain.
    on_disk = sorted(p.name for p in (Path(project.storage.root) / "runs" / MODEL / runs[0].run_id).iterdir())
    assert on_disk == sorted(f.path.rsplit("/", 1)[-1] for f in runs[0].files + runs[0].quarantine_files)
    con = batchml.connect(project)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT run_id) FROM predictions").fetchone() == (
            runs[0].rows,
            1,
        )
    finally:
        con.close()
