"""Two real processes run mutating commands on the same state at once: exactly one wins.

Each racer is `tests/crash_driver.py race`, which runs the `batchml` command in-process and waits at a barrier
right after reading the state it acts on, so both decide on the same state whatever the scheduler does. The
loser exits 1 with one `error:` line; the log holds one event; the catalog and `alias_at()` agree.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import batchml
from batchml.models.registry import RegistryReader
from batchml.scoring.publications import PublicationLog

DRIVER = Path(__file__).parents[1] / "crash_driver.py"
MODEL = "default_risk"


def _race(project: batchml.Project, barrier: Path, *commands: list[str]) -> list[dict[str, Any]]:
    """Start one racer per command together; return each one's exit code, stdout and stderr."""
    barrier.mkdir()
    racers = [
        subprocess.Popen(
            [sys.executable, str(DRIVER), "race", str(project.base_dir), str(barrier), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _one_winner(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Exactly one racer succeeded; the other exited 1 with one clear line saying nothing was done."""
    assert sorted(r["code"] for r in results) == [0, 1], results
    loser = next(r for r in results if r["code"] == 1)
    assert loser["stdout"] == "" and loser["stderr"].count("\n") == 1, loser
    assert loser["stderr"].startswith("error: ") and "Traceback" not in loser["stderr"]
    assert "nothing was done" in loser["stderr"], loser
    return next(r for r in results if r["code"] == 0)


def _served_aliases(project: batchml.Project) -> list[tuple[Any, ...]]:
    con = batchml.connect(project)
    try:
        sql = "SELECT alias, version, alias_at(model, alias, now()) FROM model_aliases ORDER BY alias"
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture
def three_versions(project: batchml.Project, champion: batchml.ModelVersion) -> list[int]:
    """champion v1 -> v2 -> v3, and a v4 nobody promoted yet."""
    versions = [champion.version]
    for leaves in (7, 5, 3):
        versions.append(batchml.train(project, MODEL, params={"num_leaves": leaves}).version)
    for version in versions[1:3]:
        batchml.promote(project, MODEL, version)
    return versions


def test_two_concurrent_model_rollbacks_step_back_once(
    project: batchml.Project, three_versions: list[int], tmp_path: Path
) -> None:
    rollback = ["models", "rollback", MODEL, "--reason", "race"]
    _one_winner(_race(project, tmp_path / "barrier", rollback, rollback))
    events = RegistryReader(project.storage).events(MODEL)
    assert [e["action"] for e in events].count("rollback") == 1
    assert RegistryReader(project.storage).aliases(MODEL) == {"champion": 2}
    assert _served_aliases(project) == [("champion", 2, 2)]


def test_two_concurrent_promotions_of_different_versions_land_once(
    project: batchml.Project, three_versions: list[int], tmp_path: Path
) -> None:
    results = _race(
        project,
        tmp_path / "barrier",
        ["models", "promote", MODEL, "1", "--json"],
        ["models", "promote", MODEL, "4", "--json"],
    )
    winner = json.loads(_one_winner(results)["stdout"])
    events = RegistryReader(project.storage).events(MODEL)
    assert len(events) == 4 and events[-1]["to_version"] == winner["to_version"]
    holder = winner["to_version"]
    assert _served_aliases(project) == [("champion", holder, holder)]


def test_two_concurrent_prediction_rollbacks_step_back_once(
    project: batchml.Project, published: batchml.PredictionRun, tmp_path: Path
) -> None:
    log = PublicationLog(project.storage)
    runs = [published.run_id]
    for leaves in (7, 5):
        version = batchml.train(project, MODEL, params={"num_leaves": leaves}).version
        runs.append(batchml.score(project, MODEL, version=version).run_id)
        batchml.publish(project, MODEL, runs[-1])
    rollback = ["predictions", "rollback", MODEL]
    _one_winner(_race(project, tmp_path / "barrier", rollback, rollback))
    assert [e["action"] for e in log.events(MODEL)].count("rollback") == 1
    assert log.current(MODEL) == runs[1]
