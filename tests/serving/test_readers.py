"""Many readers: reader processes query `predictions` in a loop while a writer publishes over and over.

Each publish builds a new serving file and flips the `batchml.duckdb` symlink; readers (through
`batchml.connect()` and through the plain duckdb client on the documented path) reopen every few queries.
Every read must see exactly one whole published run: its row count, checksum and single run id.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

import batchml
from batchml.testing import write_loans

PUBLISHES = 50
READER = r"""
import json, os, sys, time
from pathlib import Path
import duckdb

kind, config, path, stop, out = sys.argv[1:6]
# Below the writer: three readers spinning on two cores would otherwise take most of the writer's CPU and
# stretch the publishes (the checks are per read, not per second); they still read whenever a core is free.
os.nice(5)
if kind == "batchml":
    import batchml
    project = batchml.Project.open(config)
reads, errors, con = [], [], None
SQL = "SELECT count(*), sum(prediction), min(run_id), max(run_id), count(DISTINCT run_id) FROM predictions"
while not Path(stop).exists():
    try:
        if con is None or len(reads) % 5 == 0:  # reopen now and then to see newer publishes (README)
            if con is not None:
                con.close()
            con = batchml.connect(project) if kind == "batchml" else duckdb.connect(path, read_only=True)
        reads.append(list(con.execute(SQL).fetchone()))
        if len(reads) == 1:
            Path(out + ".ready").touch()  # the writer starts once every reader has read
    except Exception as exc:  # every error counts, lock conflicts included
        errors.append(f"{type(exc).__name__}: {exc}")
        con = None
        time.sleep(0.01)
Path(out).write_text(json.dumps({"reads": reads, "errors": errors}))
"""


def _runs(project: batchml.Project, tmp_path: Path) -> dict[str, tuple[int, float]]:
    """Three scored runs of different sizes: run id -> (rows, sum of prediction) read from its files."""
    known = {}
    for rows in (300, 500, 700):
        source = write_loans(tmp_path / f"loans-{rows}.csv", rows=rows, seed=rows)
        version = batchml.snapshot_dataset(project, "loans", str(source))
        if rows == 300:
            model = batchml.train(project, "default_risk", dataset=version.ref)
            batchml.promote(project, "default_risk", model.version, reason="readers test")
        run = batchml.score(project, "default_risk", dataset=version.ref)
        files = [project.storage.uri(e.path) for e in run.files]
        count, total = duckdb.execute(
            f"SELECT count(*), sum(prediction) FROM read_parquet({files})"
        ).fetchone()
        assert count == run.rows
        known[run.run_id] = (count, total)
    assert len({rows for rows, _ in known.values()}) == 3
    return known


@pytest.mark.slow
def test_readers_see_whole_runs_while_a_writer_publishes(
    make_project: Callable[..., batchml.Project], tmp_path: Path
) -> None:
    project = make_project()
    known = _runs(project, tmp_path)
    run_ids = list(known)
    batchml.publish(project, "default_risk", run_ids[0])
    path = batchml.database_path(project)
    config = str(project.base_dir / "batchml.toml")
    stop = tmp_path / "stop"
    readers = []
    for i, kind in enumerate(["batchml", "batchml", "duckdb"]):
        out = tmp_path / f"reader-{i}.json"
        args = [sys.executable, "-c", READER, kind, config, str(path), str(stop), str(out)]
        readers.append((subprocess.Popen(args), out))
    deadline = time.monotonic() + 120  # the readers import and read once before the first publish
    while not all(out.with_name(out.name + ".ready").exists() for _, out in readers):
        assert all(process.poll() is None for process, _ in readers), "a reader died before reading"
        assert time.monotonic() < deadline, "the readers never started reading"
        time.sleep(0.05)
    started = time.perf_counter()
    for n in range(PUBLISHES):
        batchml.publish(project, "default_risk", run_ids[(n + 1) % len(run_ids)])
    publish_seconds = time.perf_counter() - started
    stop.touch()
    results = []
    for process, out in readers:
        assert process.wait(timeout=60) == 0
        results.append(json.loads(out.read_text()))

    reads = [read for result in results for read in result["reads"]]
    errors = [error for result in results for error in result["errors"]]
    print(f"{PUBLISHES} publishes in {publish_seconds:.1f}s; {len(reads)} reads; {len(errors)} errors")
    assert errors == []
    for result in results:
        assert len(result["reads"]) >= 20
        assert len({read[2] for read in result["reads"]}) >= 2  # reopening picked up new publishes
    for count, total, first, last, distinct in reads:
        assert first == last and distinct == 1, "a read mixed runs"
        assert first in known
        rows, checksum = known[first]
        assert count == rows
        assert total == pytest.approx(checksum, rel=1e-9)
    with batchml.connect(project) as con:
        assert con.execute("SELECT count(*) FROM publications").fetchone() == (PUBLISHES + 1,)
