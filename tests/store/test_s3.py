"""The same pipeline against a real S3-protocol server on loopback (moto), through configuration only."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import duckdb
import pytest

import batchml
from batchml.errors import ConflictError
from batchml.monitoring.audit import explain
from batchml.monitoring.drift import monitor_run
from batchml.store.storage import Storage
from tests.s3_server import FAKE_KEY_ID, FAKE_SECRET, MotoS3, s3_toml

MODEL = "default_risk"
pytestmark = pytest.mark.usefixtures("no_cached_s3fs")


@pytest.fixture
def s3_project(tmp_path: Path, loans_csv: Path, moto: MotoS3, bucket: str) -> batchml.Project:
    """The loans project stored under s3://<bucket>/prefix."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "batchml.toml").write_text(s3_toml(f"s3://{bucket}/prefix", moto.endpoint, loans_csv))
    return batchml.Project.open(folder / "batchml.toml")


def all_objects(storage: Storage) -> dict[str, bytes]:
    """Every object under the storage root, by path relative to it."""
    storage.fs.invalidate_cache()
    return {
        path.removeprefix(storage.root + "/"): bytes(storage.fs.cat_file(path))
        for path in storage.fs.find(storage.root)
    }


def fingerprint(con: duckdb.DuckDBPyConnection) -> tuple[int, str, float]:
    row = con.execute("SELECT count(*), any_value(run_id), sum(prediction) FROM predictions").fetchone()
    assert row is not None
    return row[0], row[1], round(row[2], 9)


# -- storage primitives --------------------------------------------------------------------------------------
def test_create_is_put_if_absent_on_s3(moto: MotoS3, bucket: str) -> None:
    storage = Storage(f"s3://{bucket}/p", endpoint_url=moto.endpoint)
    storage.create("m/one.json", b"first")
    with pytest.raises(ConflictError, match=f"s3://{bucket}/p/m/one.json already exists"):
        storage.create("m/one.json", b"second")
    assert storage.read_bytes("m/one.json") == b"first"
    assert storage.list_dir("m") == ["one.json"]
    storage.create("m/two.json", b"x")  # a listing taken before must not hide the new file
    assert storage.list_dir("m") == ["one.json", "two.json"]


def race(url: str, endpoint: str, key: str, writers: int) -> dict[int, str]:
    """`writers` threads, each with its own filesystem instance, create `key` at the same moment."""
    barrier = threading.Barrier(writers)
    outcomes: dict[int, str] = {}

    def create(i: int) -> None:
        store = Storage(url, endpoint_url=endpoint, skip_instance_cache=True)
        barrier.wait()
        try:
            store.create(key, f"writer {i}".encode())
            outcomes[i] = "won"
        except ConflictError:
            outcomes[i] = "conflict"

    threads = [threading.Thread(target=create, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_concurrent_creates_of_one_key_have_exactly_one_winner(moto: MotoS3, bucket: str) -> None:
    url = f"s3://{bucket}/p"
    storage = Storage(url, endpoint_url=moto.endpoint)
    for attempt in range(5):
        key = f"race/{attempt}.json"
        outcomes = race(url, moto.endpoint, key, writers=4)
        winners = [i for i, o in outcomes.items() if o == "won"]
        assert len(outcomes) == 4 and len(winners) == 1, outcomes
        assert storage.read_bytes(key) == f"writer {winners[0]}".encode()


def test_endpoint_may_come_from_the_aws_environment(
    moto: MotoS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    storage = Storage(f"s3://{bucket}/env")
    storage.create("a.json", b"{}")
    assert Storage(f"s3://{bucket}/env", endpoint_url=moto.endpoint).read_bytes("a.json") == b"{}"


# -- the whole path ------------------------------------------------------------------------------------------
def test_pipeline_on_s3_through_configuration_only(
    s3_project: batchml.Project, loans_csv: Path, moto: MotoS3, bucket: str
) -> None:
    project = s3_project
    storage = project.storage
    assert not storage.is_local and storage.uri("x") == f"s3://{bucket}/prefix/x"
    assert project.serving_dir == (project.base_dir / ".batchml" / "serving").resolve()

    local = batchml.snapshot_dataset(project, "loans")
    assert batchml.snapshot_dataset(project, "loans").reused
    # An s3:// source: the same bytes uploaded elsewhere in the bucket are the same version.
    storage.fs.put_file(str(loans_csv), f"{bucket}/incoming/loans.csv")
    remote = batchml.snapshot_dataset(project, "loans", f"s3://{bucket}/incoming/loans.csv")
    assert remote.version == local.version and remote.reused

    model = batchml.train(project, MODEL)
    batchml.promote(project, MODEL, model.version, reason="first")
    run = batchml.score(project, MODEL)
    assert batchml.score(project, MODEL).reused
    serving = batchml.publish(project, MODEL, run.run_id)
    assert serving.parent == project.serving_dir

    con = batchml.connect(project)
    assert fingerprint(con)[:2] == (run.rows, run.run_id) and run.rows == local.rows
    assert con.execute("SELECT published FROM runs").fetchall() == [(True,)]
    first = fingerprint(con)

    challenger = batchml.train(project, MODEL, params={"num_leaves": 7})
    batchml.promote(project, MODEL, challenger.version, reason="challenger")
    second = batchml.score(project, MODEL)
    batchml.publish(project, MODEL, second.run_id)
    after = batchml.connect(project)
    assert fingerprint(after)[1] == second.run_id
    assert fingerprint(con) == first  # the reader's file was never touched
    with batchml.connect(project, history=True) as history:  # both runs, read from S3 through s3fs
        runs = history.execute("SELECT run_id, count(*) FROM prediction_history GROUP BY ALL ORDER BY ALL")
        assert runs.fetchall() == sorted([(run.run_id, run.rows), (second.run_id, second.rows)])

    batchml.rollback_predictions(project, MODEL, reason="bad scores")
    assert fingerprint(batchml.connect(project)) == first

    receipt = explain(storage, MODEL, "L000000042")
    assert receipt["receipt"]["run_id"] == run.run_id and receipt["rederived"]["matches"]

    drift = monitor_run(storage, MODEL, run.run_id)
    assert drift.summary["features"] > 0 and not drift.reused
    assert monitor_run(storage, MODEL, run.run_id).reused

    # The serving file holds nothing storage does not: delete it and rebuild it from S3.
    shutil.rmtree(project.serving_dir)
    batchml.rebuild_catalog(project)
    assert fingerprint(batchml.connect(project)) == first

    objects = all_objects(storage)
    assert any(p.startswith("runs/default_risk/manifests/") for p in objects)
    for path, data in objects.items():  # credentials never reach what batchml stores
        assert FAKE_SECRET.encode() not in data and FAKE_KEY_ID.encode() not in data, path
    for path in project.serving_dir.rglob("*"):
        if path.is_file():
            assert FAKE_SECRET.encode() not in path.read_bytes(), path


def test_commits_by_another_writer_are_seen_at_once(moto: MotoS3, bucket: str) -> None:
    """No listing cache: a file committed by another process is visible to exists, open and verify."""
    url = f"s3://{bucket}/p"
    mine = Storage(url, endpoint_url=moto.endpoint)
    mine.create_json("runs/m/manifests/a.json", {})
    assert mine.list_dir("runs/m/manifests") == ["a.json"]
    assert not mine.exists("runs/m/manifests/b.json")
    other = Storage(url, endpoint_url=moto.endpoint, skip_instance_cache=True)  # as another process would
    other.create_json("runs/m/manifests/b.json", {"b": 1})
    entry = other.write_new("runs/m/r/part-0.parquet", b"data")
    assert mine.exists("runs/m/manifests/b.json")
    assert mine.read_json("runs/m/manifests/b.json") == {"b": 1}
    mine.verify(entry)
    assert mine.list_dir("runs/m/manifests") == ["a.json", "b.json"]


# -- crash safety --------------------------------------------------------------------------------------------
# Points that exist on S3 (no os.link/os.fsync there): mid-upload, around the manifest put-if-absent and
# around the publication event. Building and flipping the serving file happen on local disk with S3 too, and
# tests/test_crash.py kills at those points already.
S3_POINTS: list[tuple[str, str, str, int | str]] = [
    ("snapshot", "HashingWriter.write", "after", "mid"),
    ("snapshot", "Storage.create", "before", 1),
    ("score", "HashingWriter.write", "after", "last"),
    ("score", "Storage.create", "after", 1),
    ("publish", "Storage.create", "before", 1),
    ("publish", "Storage.create", "after", 1),
]
S3_QUICK = [S3_POINTS[i] for i in (1, 3, 5)]


@pytest.mark.parametrize(
    "points",
    [
        pytest.param(
            S3_QUICK,
            id="quick",
            marks=pytest.mark.quick_variant_of("test_kill_minus_9_on_s3_then_recover[all]"),
        ),
        pytest.param(S3_POINTS, id="all", marks=pytest.mark.slow),
    ],
)
def test_kill_minus_9_on_s3_then_recover(
    tmp_path: Path, loans_csv: Path, moto: MotoS3, bucket: str, points: list[tuple[str, str, str, int | str]]
) -> None:
    """tests/crash_driver.py kills the pipeline at S3 points; each point has its own copy of the store."""
    from batchml.data import datasets
    from batchml.scoring.runs import list_runs
    from batchml.serving import gc
    from batchml.testing import write_loans
    from tests.test_crash import _check_consistent, _check_recovered, _driver

    def make(i: int) -> batchml.Project:
        folder = tmp_path / f"p{i}"
        folder.mkdir(exist_ok=True)
        (folder / "batchml.toml").write_text(s3_toml(f"s3://{bucket}/p{i}", moto.endpoint, loans_csv))
        return batchml.Project.open(folder / "batchml.toml")

    base = make(0)
    batchml.snapshot_dataset(base, "loans")
    model = batchml.train(base, MODEL)
    batchml.promote(base, MODEL, model.version)
    published = batchml.score(base, MODEL)
    batchml.publish(base, MODEL, published.run_id)
    before = {
        "dataset": datasets.get_version(base.storage, "loans@latest").version,
        "run_id": published.run_id,
        "rows": published.rows,
    }
    projects = [base]
    for i in range(1, len(points) + 1):  # the published state, copied object by object to its own prefix
        base.storage.fs.copy(f"{bucket}/p0", f"{bucket}/p{i}", recursive=True)
        shutil.copytree(base.serving_dir, tmp_path / f"p{i}" / ".batchml" / "serving", symlinks=True)
        projects.append(make(i))
    # p0 is the reference (counting) run, so it gets the published state under its own prefix as well.
    base.storage.fs.copy(f"{bucket}/p0", f"{bucket}/ref", recursive=True)
    shutil.copytree(base.base_dir / ".batchml", tmp_path / "ref" / ".batchml", symlinks=True)
    (tmp_path / "ref" / "batchml.toml").write_text(s3_toml(f"s3://{bucket}/ref", moto.endpoint, loans_csv))
    source = write_loans(tmp_path / "loans-2.csv", rows=1500, seed=11)
    plan = {
        "source": str(source),
        "reference_dir": str(tmp_path / "ref"),
        "points": [
            {"dir": str(tmp_path / f"p{i}"), "phase": p, "target": t, "when": w, "n": n}
            for i, (p, t, w, n) in enumerate(points, start=1)
        ],
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    reference, *results = _driver("crash", tmp_path / "plan.json")
    ref = batchml.Project.open(tmp_path / "ref" / "batchml.toml")
    expected = {
        "dataset": datasets.get_version(ref.storage, "loans@latest").version,
        "run_id": reference["run_id"],
        "rows": list_runs(ref.storage, MODEL)[-1].rows,
    }
    _check_recovered(ref, before, expected)
    labels = []
    for project, result in zip(projects[1:], results, strict=True):
        label = f"{result['phase']}:{result['target']}:{result['when']}:{result['n']} -> {result}"
        labels.append(label)
        assert result["calls"] >= result["n"] >= 1, label  # the point exists on S3
        assert result["outcome"] == "killed", label
        _check_consistent(project, before, expected)  # no partial version; previous run still served
    recovered = _driver("recover", tmp_path / "plan.json")
    for project, label, (status, run_id) in zip(projects[1:], labels, recovered, strict=True):
        assert status == "ok" and run_id == expected["run_id"], f"{label}: rerun {status} {run_id}"
        _check_recovered(project, before, expected)  # hashes pass, published exactly once
        report = gc.collect(project.storage, project.serving_dir, grace_seconds=0)
        assert not any("manifests" in p or "versions" in p or "events" in p for p in report.deleted), label
        _check_recovered(project, before, expected)  # gc removed nothing any record references


def test_every_cli_failure_is_one_secret_free_line(tmp_path: Path, moto: MotoS3, bucket: str) -> None:
    from typer.testing import CliRunner

    from batchml.cli import app

    (tmp_path / "batchml.toml").write_text(s3_toml(f"s3://{bucket}/store", moto.endpoint, "unused.csv"))
    secret_root = f"s3://{FAKE_KEY_ID}:{FAKE_SECRET}@{bucket}/store"
    runs = {
        "credentials in the storage URL": (["--storage", secret_root, "datasets", "list"], "has credentials"),
        "... when scoring": (["--storage", secret_root, "score", MODEL], "has credentials"),
        "credentials in a source URL": (
            ["datasets", "snapshot", "loans", f"s3://{FAKE_KEY_ID}:{FAKE_SECRET}@{bucket}/x.csv"],
            "has credentials",
        ),
        "a missing source object": (["datasets", "snapshot", "loans", f"s3://{bucket}/no.csv"], "not found"),
        "a missing bucket": (["--storage", "s3://no-such-bucket-x1/p", "score", MODEL], "error: "),
        "a storage library's own error": (["--storage", "s3://Bad_Bucket!/p", "datasets", "list"], "storage"),
    }
    runner = CliRunner()
    config = ["--config", str(tmp_path / "batchml.toml")]
    for what, (args, expected) in runs.items():
        result = runner.invoke(app, [*config, *args])
        assert result.exit_code == 1, (what, result.stdout, result.stderr, result.exception)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (what, lines)
        assert FAKE_SECRET not in result.stdout + result.stderr and FAKE_KEY_ID not in result.stderr, what
        debug = runner.invoke(app, [*config, "--debug", *args])
        assert debug.exit_code == 1 and "Traceback (most recent call last)" in debug.stderr, what
        assert debug.stderr.strip().splitlines()[-1] == lines[0]
        assert FAKE_SECRET not in debug.stdout + debug.stderr, what
    stored = all_objects(Storage(f"s3://{bucket}", endpoint_url=moto.endpoint))
    assert all(FAKE_SECRET.encode() not in data for data in stored.values())
