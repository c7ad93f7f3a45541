"""Any host: a serving file published with object storage is fetched by a folder sharing only the bucket.

Project folder A publishes on a real S3-protocol server (moto on loopback); folder B has nothing but the same
`[storage]` table in its batchml.toml, as another host would, and reads through `batchml serving pull` and
`batchml.connect()`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

import batchml
from batchml.cli import app
from batchml.errors import IntegrityError, NotFoundError
from batchml.scoring.publications import PublicationLog
from batchml.serving import database, gc, snapshots
from batchml.serving import lookup as lookup_module
from batchml.serving.lookup_files import sidecars
from batchml.serving.pointer import serving_path
from batchml.serving.run_tables import run_table_name
from batchml.serving.snapshots import SNAPSHOT_FILES, SNAPSHOT_LOG, commit_snapshot, newest_snapshot
from batchml.store.eventlog import EventLog
from batchml.store.storage import Storage
from tests.s3_server import MotoS3, s3_toml

MODEL = "default_risk"
VIEW_ROWS = "SELECT * FROM predictions WHERE entity_id IN (SELECT unnest(?)) ORDER BY entity_id"
Hosts = Callable[[str], batchml.Project]
#: Every host has its own filesystem instance and listings, as separate processes would.
pytestmark = pytest.mark.usefixtures("no_cached_s3fs")


@pytest.fixture
def host(tmp_path: Path, loans_csv: Path, moto: MotoS3, bucket: str) -> Hosts:
    """A project folder `name` (with its own serving folder) on the test's bucket; only "a" has models."""

    def make(name: str) -> batchml.Project:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        toml = s3_toml(f"s3://{bucket}/store", moto.endpoint, loans_csv)
        if name != "a":  # only the bucket: no datasets, no models
            toml = toml.split("[datasets", 1)[0]
        (folder / "batchml.toml").write_text(toml)
        return batchml.Project.open(folder / "batchml.toml")

    return make


@pytest.fixture
def publisher(host: Hosts) -> batchml.Project:
    """Folder A with the champion scored and published."""
    a = host("a")
    batchml.snapshot_dataset(a, "loans")
    batchml.promote(a, MODEL, batchml.train(a, MODEL).version, reason="first")
    batchml.publish(a, MODEL, batchml.score(a, MODEL).run_id)
    return a


def cli(project: batchml.Project, *args: str) -> tuple[int, list[str], list[str]]:
    """Run `batchml --config <project's toml> ARGS` in-process: exit code, stdout lines, stderr lines."""
    result = CliRunner().invoke(app, ["--config", str(project.base_dir / "batchml.toml"), *args])
    return result.exit_code, result.stdout.strip().splitlines(), result.stderr.strip().splitlines()


def fingerprint(project: batchml.Project, *, pull: bool = True) -> tuple[str, int, float]:
    con = batchml.connect(project, pull=pull)
    try:
        row = con.execute("SELECT any_value(run_id), count(*), sum(prediction) FROM predictions").fetchone()
    finally:
        con.close()
    assert row is not None
    return row[0], row[1], round(row[2], 9)


def rescore(a: batchml.Project, num_leaves: int = 7) -> str:
    """Train, promote and publish a new champion from folder A; return its run id."""
    challenger = batchml.train(a, MODEL, params={"num_leaves": num_leaves})
    batchml.promote(a, MODEL, challenger.version, reason="second")
    run = batchml.score(a, MODEL)
    batchml.publish(a, MODEL, run.run_id)
    return run.run_id


def test_a_second_folder_sharing_only_the_bucket_pulls_and_reads_the_same_predictions(
    publisher: batchml.Project, host: Hosts
) -> None:
    a, b = publisher, host("b")
    snap = newest_snapshot(a.storage)
    assert snap is not None and snap.file.path == f"{SNAPSHOT_FILES}/{snap.file.sha256}.duckdb"
    assert snap.state[(MODEL, "published")] == 1  # references the publication event it reflects
    a.storage.verify(snap.file)

    code, out, err = cli(b, "serving", "pull")
    assert code == 0 and err == [], err
    assert out == [f"pulled {snap.name}: {snap.file.size:,} bytes into {serving_path(b.serving_dir)}"]
    pulled = serving_path(b.serving_dir).resolve()
    assert pulled.parent == b.serving_dir and oct(pulled.stat().st_mode & 0o777) == oct(0o444)
    assert fingerprint(b) == fingerprint(a)
    # The pull wrote the run's lookup files beside the file (a snapshot is the file alone); lookups use them
    run_table = run_table_name(MODEL, fingerprint(a)[0]).strip('"')
    assert all(path.exists() for path in sidecars(pulled, run_table))
    with batchml.connect(b) as con:
        found = batchml.lookup(con, MODEL, ["L000000042", "L000000043"])
        assert lookup_module._READERS[con].runs[MODEL].files is not None  # type: ignore[union-attr]
        assert found.equals(con.sql(VIEW_ROWS, params=[["L000000042", "L000000043"]]).to_arrow_table())

    code, out, _ = cli(b, "serving", "pull")  # a re-pull fetches nothing and flips nothing
    assert code == 0 and out == [f"already current: {serving_path(b.serving_dir)} reflects {snap.name}"]
    assert serving_path(b.serving_dir).resolve() == pulled

    held = batchml.connect(b)  # a reader holding the first file while A publishes again
    second = rescore(a)
    assert fingerprint(b)[0] == second  # connect() fetched the newer snapshot on its own
    assert fingerprint(b) == fingerprint(a)
    assert held.execute("SELECT any_value(run_id) FROM predictions").fetchone() != (second,)
    assert pulled.exists()  # kept for its grace period: the reader above still reads it
    held.close()


def test_commands_on_another_host_pull_the_snapshot_instead_of_building(
    publisher: batchml.Project, host: Hosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_build(*args: object, **kwargs: object) -> Path:
        raise AssertionError("built a serving file that storage already holds")

    monkeypatch.setattr(database, "build_serving_db", no_build)
    sql = "SELECT count(DISTINCT run_id) AS runs FROM predictions"
    code, out, err = cli(host("b"), "query", sql, "--json")
    assert code == 0 and [line.split(" (")[0] for line in err] == [
        "note: the serving file was behind the event logs"
    ]
    assert '"runs": 1' in "\n".join(out)


def test_a_corrupted_snapshot_is_refused_and_the_previous_file_stays(
    publisher: batchml.Project, host: Hosts
) -> None:
    a, b = publisher, host("b")
    assert cli(b, "serving", "pull")[0] == 0
    first, before = fingerprint(b, pull=False), serving_path(b.serving_dir).resolve()
    rescore(a)
    snap = newest_snapshot(a.storage)
    assert snap is not None and snap.state[(MODEL, "published")] == 2
    stored = a.storage.full_path(snap.file.path)
    data = bytearray(a.storage.fs.cat_file(stored))
    data[len(data) // 2] ^= 0xFF  # one byte changed in the bucket
    a.storage.fs.pipe_file(stored, bytes(data))

    code, out, err = cli(b, "serving", "pull")
    assert code == 1 and out == [] and len(err) == 1, (out, err)
    assert err[0].startswith(f"error: integrity check failed for {a.storage.uri(snap.file.path)}")
    assert f"expected sha256 {snap.file.sha256}" in err[0] and "local serving file is unchanged" in err[0]
    with pytest.raises(IntegrityError, match="refused, the local serving file is unchanged"):
        batchml.connect(b)
    assert serving_path(b.serving_dir).resolve() == before
    assert fingerprint(b, pull=False) == first
    assert not [p.name for p in b.serving_dir.iterdir() if p.name.startswith(".tmp-")]


def test_no_snapshot_yet_says_to_publish_first(host: Hosts) -> None:
    b = host("b")
    code, out, err = cli(b, "serving", "pull")
    assert code == 1 and out == [] and len(err) == 1, (out, err)
    assert err[0].startswith(f"error: serving snapshot '{b.storage.uri(SNAPSHOT_LOG)}' not found")
    assert "publish a prediction run first" in err[0]
    with pytest.raises(NotFoundError, match="publish a prediction run first"):
        batchml.connect(b)


class Killed(BaseException):
    """Stands for the process dying: nothing in batchml catches it."""


def test_a_crash_between_upload_and_event_is_completed_by_rerunning(
    host: Hosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = host("a")
    batchml.snapshot_dataset(a, "loans")
    batchml.promote(a, MODEL, batchml.train(a, MODEL).version, reason="first")
    run = batchml.score(a, MODEL)
    before = newest_snapshot(a.storage)  # the promotion's
    assert before is not None and (MODEL, "published") not in before.state
    known = set(a.storage.list_dir(SNAPSHOT_FILES))
    append = EventLog.append

    def dies_on_snapshot_event(self: EventLog, *args: object, **kwargs: object) -> object:
        if self.folder == SNAPSHOT_LOG:
            raise Killed
        return append(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(EventLog, "append", dies_on_snapshot_event)
    with pytest.raises(Killed):
        batchml.publish(a, MODEL, run.run_id)
    monkeypatch.undo()

    uploaded = sorted(set(a.storage.list_dir(SNAPSHOT_FILES)) - known)
    assert len(uploaded) == 1 and newest_snapshot(a.storage) == before  # an object no record references
    assert PublicationLog(a.storage).current(MODEL) == run.run_id
    assert not gc.collect(a.storage, a.serving_dir, dry_run=True).deleted  # consistent: nothing to repair
    snapshots.pull(a.storage, host("b").serving_dir)  # another host still gets the newest committed one
    con = batchml.connect(host("b"), pull=False)  # the promotion's file: nothing published in it yet
    assert con.execute("SELECT count(*) FROM predictions").fetchone() == (0,)
    con.close()

    batchml.publish(a, MODEL, run.run_id)  # the rerun: publishes nothing new, completes the commit
    snap = newest_snapshot(a.storage)
    assert snap is not None and snap.seq == before.seq + 1 and uploaded == [f"{snap.file.sha256}.duckdb"]
    assert fingerprint(host("b"))[0] == run.run_id
    batchml.publish(a, MODEL, run.run_id)  # and again: nothing at all
    assert newest_snapshot(a.storage) == snap
    assert a.storage.list_dir(SNAPSHOT_FILES) == sorted([*known, f"{snap.file.sha256}.duckdb"])
    assert not gc.collect(a.storage, grace_seconds=3600).deleted  # replaced a moment ago, or newest


def test_racing_publishers_make_exactly_one_snapshot_newest(
    publisher: batchml.Project, host: Hosts, moto: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = publisher
    stale = host("stale")
    assert snapshots.pull(stale.storage, stale.serving_dir) is not None  # holds the first state
    # A second run is published; two hosts build the same new state, and commit at the same moment.
    challenger = batchml.train(a, MODEL, params={"num_leaves": 7})
    batchml.promote(a, MODEL, challenger.version, reason="second")
    run = batchml.score(a, MODEL)
    PublicationLog(a.storage).publish(MODEL, run.run_id)
    promoted = newest_snapshot(a.storage)
    assert promoted is not None
    known = a.storage.list_dir(SNAPSHOT_FILES)
    racers = [host("x"), host("y")]
    monkeypatch.setattr(database, "commit_snapshot", lambda storage, serving_dir: None)
    for racer in racers:
        database.build_serving_db(racer.storage, racer.serving_dir)
    monkeypatch.undo()
    barrier = threading.Barrier(len(racers))
    results: dict[str, object] = {}

    def commit(project: batchml.Project) -> None:
        storage = Storage(project.storage.url, endpoint_url=moto.endpoint, skip_instance_cache=True)
        barrier.wait()
        results[project.base_dir.name] = commit_snapshot(storage, project.serving_dir)

    threads = [threading.Thread(target=commit, args=(r,)) for r in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [name for name, snap in results.items() if snap is not None]
    assert len(results) == 2 and len(winners) == 1, results
    newest = newest_snapshot(a.storage)
    assert newest is not None and newest.seq == promoted.seq + 1 and newest == results[winners[0]]
    kept = set(known) | {f"{newest.file.sha256}.duckdb"}
    lost = sorted(set(a.storage.list_dir(SNAPSHOT_FILES)) - kept)  # the loser's upload, if it got that far
    assert len(lost) <= 1
    replaced = sorted(kept - {f"{newest.file.sha256}.duckdb"})  # snapshots the winner replaced
    deleted = gc.collect(a.storage, grace_seconds=0).deleted
    assert sorted(deleted) == sorted(f"{SNAPSHOT_FILES}/{name}" for name in [*lost, *replaced])
    assert a.storage.list_dir(SNAPSHOT_FILES) == [f"{newest.file.sha256}.duckdb"]
    # The stale host's older file never becomes newest, and a reader on it is brought forward.
    assert commit_snapshot(stale.storage, stale.serving_dir) is None
    assert newest_snapshot(a.storage) == newest
    assert fingerprint(stale)[0] == run.run_id


def test_replaced_snapshots_are_pruned_after_their_grace_period_and_the_newest_still_pulls(
    publisher: batchml.Project, host: Hosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = publisher
    first = newest_snapshot(a.storage)
    assert first is not None
    rescore(a)  # promote + publish: two more snapshots, the first replaced a moment ago
    files = a.storage.list_dir(SNAPSHOT_FILES)
    assert f"{first.file.sha256}.duckdb" in files and len(files) >= 3  # within the grace period: kept

    monkeypatch.setattr(snapshots, "SNAPSHOT_GRACE_SECONDS", 0.0)
    third = rescore(a, num_leaves=5)  # each commit prunes what was replaced before the grace period
    newest = newest_snapshot(a.storage)
    assert newest is not None and a.storage.list_dir(SNAPSHOT_FILES) == [f"{newest.file.sha256}.duckdb"]
    assert len(EventLog(a.storage, SNAPSHOT_LOG).read()) == newest.seq  # the events stay: what was served
    assert fingerprint(host("b"))[0] == third  # another host pulls the newest
    assert not gc.collect(a.storage, grace_seconds=0).deleted  # nothing left to prune


def test_local_storage_keeps_no_snapshot_copy(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    root = Path(project.storage.root)
    assert not (root / SNAPSHOT_LOG).exists() and not (root / SNAPSHOT_FILES).exists()
    code, out, _ = cli(project, "serving", "pull")
    link = serving_path(project.serving_dir)
    assert code == 0 and out == [f"nothing to pull: storage is on this disk, readers open {link}"]
    assert os.path.islink(serving_path(project.serving_dir))


def test_pulling_and_querying_on_another_host_import_no_heavy_library(
    publisher: batchml.Project, host: Hosts
) -> None:
    from tests.cli.test_startup import HEAVY, _imported

    b = host("b")  # fresh processes: the moto fixture's AWS environment is inherited
    with open(b.base_dir / "batchml.toml", "a", encoding="utf-8") as toml:
        toml.write("\n[serving]\nlookup_files = false\n")
    for args in (["query", "SELECT count(*) FROM predictions"], ["serving", "pull"]):  # query pulls first
        assert sorted(set(HEAVY) & _imported(args, b.base_dir)) == [], args
    assert serving_path(b.serving_dir).exists()
    # With lookup files (the default) a pull that fetches writes them: numpy and pyarrow, nothing else
    c = host("c")
    assert sorted(set(HEAVY) & _imported(["serving", "pull"], c.base_dir)) == ["numpy", "pyarrow"]
