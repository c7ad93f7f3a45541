"""Crash safety: kill -9 the pipeline (snapshot → score → publish) at many seeded points, then check.

`tests/crash_driver.py` forks one child per point from a warm parent and SIGKILLs it on the n-th call of a
storage/os/duckdb function in a given phase. After every kill: the previously published run is intact and
readable (through `batchml.connect` and plain DuckDB on the documented path), every file any record references
passes its hash, no partial version is visible, and rerunning the same work publishes exactly once. Then
`gc` (grace 0) removes the crash leftovers without touching anything referenced.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

import batchml
from batchml.cli import app
from batchml.data import datasets
from batchml.models.registry import RegistryReader
from batchml.scoring.publications import PublicationLog
from batchml.scoring.runs import get_run, list_runs
from batchml.serving import gc
from batchml.serving.snapshots import newest_snapshot
from batchml.store.storage import FileEntry, Storage
from batchml.testing import write_loans

DRIVER = Path(__file__).with_name("crash_driver.py")
MODEL = "default_risk"

# (phase, target, when, n): n is a call number, or "mid"/"last" of that target's calls in that phase.
POINTS: list[tuple[str, str, str, int | str]] = [
    ("snapshot", "Storage.open_write", "before", 1),
    ("snapshot", "HashingWriter.write", "after", 1),
    ("snapshot", "HashingWriter.write", "after", "mid"),
    ("snapshot", "HashingWriter.write", "after", "last"),
    ("snapshot", "Storage.create", "before", 1),
    ("snapshot", "os.fsync", "after", 1),
    ("snapshot", "os.link", "after", 1),
    ("score", "Storage.verify", "after", 1),
    ("score", "Storage.open_write", "before", 1),
    ("score", "HashingWriter.write", "after", 1),
    ("score", "HashingWriter.write", "after", "mid"),
    ("score", "HashingWriter.write", "after", "last"),
    ("score", "Storage.create", "before", 1),
    ("score", "os.link", "before", 1),
    ("score", "os.link", "after", 1),
    ("score", "os.unlink", "after", 1),
    ("publish", "Storage.create", "before", 1),
    ("publish", "os.link", "after", 1),
    ("publish", "Storage.verify", "after", 1),
    ("publish", "duckdb.connect", "after", 1),
    ("publish", "os.replace", "before", 1),
    ("publish", "os.replace", "after", 1),
    ("publish", "os.symlink", "after", 1),
    ("publish", "os.replace", "after", 2),
]
QUICK = [POINTS[i] for i in (3, 11, 17, 21)]


def _records(storage: Storage) -> list[Any]:
    """Every JSON record under the store, parsed (IntegrityError if one is damaged)."""
    files = gc._all_files(storage)
    return [
        storage.read_json(p)
        for p in files
        if p.endswith(".json") and not p.rsplit("/", 1)[-1].startswith(".") and not gc._is_data_file(p)
    ]


def _entries(obj: Any) -> list[FileEntry]:
    if isinstance(obj, dict):
        own = [FileEntry.from_dict(obj)] if {"path", "sha256", "size"} <= obj.keys() else []
        return own + [e for v in obj.values() for e in _entries(v)]
    if isinstance(obj, list):
        return [e for v in obj for e in _entries(v)]
    return []


def _served(project: batchml.Project) -> tuple[set[str], int]:
    """Run ids and row count of `predictions`, read through batchml.connect and plain DuckDB (must agree)."""
    sql = "SELECT list(DISTINCT run_id ORDER BY run_id), count(*) FROM predictions"
    con = batchml.connect(project)
    try:
        via_api = con.execute(sql).fetchone()
    finally:
        con.close()
    plain = duckdb.connect(str(batchml.database_path(project)), read_only=True)
    try:
        via_path = plain.execute(sql).fetchone()
    finally:
        plain.close()
    assert via_api == via_path and via_api is not None
    return set(via_api[0]), int(via_api[1])


def _check_consistent(project: batchml.Project, before: dict[str, Any], expected: dict[str, Any]) -> None:
    """Previous published run readable, every referenced file intact, only complete versions visible.

    Referenced means by any record but a replaced snapshot's event: those files are pruned (`snapshots`)."""
    storage = project.storage
    newest = newest_snapshot(storage)
    for record in _records(storage):
        if record.get("action") == "snapshot" and newest is not None and record["seq"] != newest.seq:
            continue
        for entry in _entries(record):
            storage.verify(entry)
    versions = [v.version for v in datasets.list_versions(storage, "loans")]
    assert versions in ([before["dataset"]], [before["dataset"], expected["dataset"]])
    runs = [r.run_id for r in list_runs(storage, MODEL)]
    assert runs in ([before["run_id"]], [before["run_id"], expected["run_id"]])
    stack = PublicationLog(storage).stack(MODEL)
    assert stack in ([before["run_id"]], [before["run_id"], expected["run_id"]])
    served, rows = _served(project)
    assert served in ({before["run_id"]}, {expected["run_id"]})
    assert rows == {before["run_id"]: before["rows"], expected["run_id"]: expected["rows"]}[served.pop()]
    assert [m.version for m in RegistryReader(storage).list_versions(MODEL)] == [1]


def _check_recovered(project: batchml.Project, before: dict[str, Any], expected: dict[str, Any]) -> None:
    """After the rerun: the new run published exactly once, served, and nothing else changed."""
    _check_consistent(project, before, expected)
    storage = project.storage
    publishes = [e for e in PublicationLog(storage).events(MODEL) if e["action"] == "publish"]
    assert [e["run_id"] for e in publishes] == [before["run_id"], expected["run_id"]]
    assert _served(project) == ({expected["run_id"]}, expected["rows"])


def _run_matrix(
    tmp_path: Path, published: batchml.PredictionRun, project: batchml.Project, points: list[Any]
) -> list[dict[str, Any]]:
    base = project.base_dir
    source = write_loans(tmp_path / "loans-2.csv", rows=1500, seed=11)
    dirs = []
    for i in range(len(points) + 1):
        shutil.copytree(base, tmp_path / f"p{i}", symlinks=True)
        dirs.append(tmp_path / f"p{i}")
    plan = {
        "source": str(source),
        "reference_dir": str(dirs[0]),
        "points": [
            {"dir": str(d), "phase": p, "target": t, "when": w, "n": n}
            for d, (p, t, w, n) in zip(dirs[1:], points, strict=True)
        ],
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    return list(_driver("crash", tmp_path / "plan.json"))


def _driver(mode: str, plan: Path) -> Any:
    done = subprocess.run(
        [sys.executable, str(DRIVER), mode, str(plan)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _verify_matrix(
    tmp_path: Path,
    published: batchml.PredictionRun,
    project: batchml.Project,
    points: list[Any],
    open_project: Callable[[Path], batchml.Project],
) -> None:
    before = {
        "dataset": datasets.get_version(project.storage, "loans@latest").version,
        "run_id": published.run_id,
        "rows": published.rows,
    }
    reference, *results = _run_matrix(tmp_path, published, project, points)
    ref_project = open_project(tmp_path / "p0")
    expected = {
        "dataset": datasets.get_version(ref_project.storage, "loans@latest").version,
        "run_id": reference["run_id"],
        "rows": list_runs(ref_project.storage, MODEL)[-1].rows,
    }
    _check_recovered(ref_project, before, expected)
    labels = []
    for i, result in enumerate(results, start=1):
        label = f"{result['phase']}:{result['target']}:{result['when']}:{result['n']} -> {result}"
        labels.append(label)
        assert result["calls"] >= result["n"] >= 1, label  # the point exists in this phase
        assert result["outcome"] == "killed", label
        _check_consistent(open_project(tmp_path / f"p{i}"), before, expected)
    recovered = _driver("recover", tmp_path / "plan.json")
    leftovers: list[set[str]] = []
    for i, (label, (status, run_id)) in enumerate(zip(labels, recovered, strict=True), start=1):
        assert status == "ok" and run_id == expected["run_id"], f"{label}: rerun {status} {run_id}"
        crashed = open_project(tmp_path / f"p{i}")
        _check_recovered(crashed, before, expected)
        report = batchml.api.gc(crashed, grace_seconds=0)
        kinds = {"tmp" if Path(p).name.startswith(".tmp-") else "data" for p in report.deleted if p[0] != "/"}
        assert all(
            Path(p).name.startswith(".tmp-") or gc._is_data_file(p) for p in report.deleted if p[0] != "/"
        )
        leftovers.append(kinds)
        _check_recovered(crashed, before, expected)  # gc removed nothing anything references
        assert batchml.api.gc(crashed, grace_seconds=0).deleted == [], label
    assert set().union(*leftovers) == {"tmp", "data"}  # the kills did leave orphans, and gc found them


@pytest.fixture
def open_project() -> Callable[[Path], batchml.Project]:
    return lambda folder: batchml.Project.open(folder / "batchml.toml")


@pytest.mark.quick_variant_of("test_kill_at_every_seeded_point_then_recover")
def test_kill_at_a_few_points_then_recover(
    tmp_path: Path,
    project: batchml.Project,
    published: batchml.PredictionRun,
    open_project: Callable[[Path], batchml.Project],
) -> None:
    _verify_matrix(tmp_path, published, project, QUICK, open_project)


@pytest.mark.slow
def test_kill_at_every_seeded_point_then_recover(
    tmp_path: Path,
    project: batchml.Project,
    published: batchml.PredictionRun,
    open_project: Callable[[Path], batchml.Project],
) -> None:
    assert len(POINTS) >= 20 and {p[0] for p in POINTS} == {"snapshot", "score", "publish"}
    _verify_matrix(tmp_path, published, project, POINTS, open_project)


# -- corrupted artifacts: detected before use, with an IntegrityError naming the file ----------------------


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "flip":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :])
    else:
        path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_run_file_stops_publish_rebuild_and_explain(
    project: batchml.Project, published: batchml.PredictionRun, how: str
) -> None:
    from batchml.monitoring.audit import explain

    served_before = batchml.database_path(project).resolve()
    entry = published.files[0]
    _damage(Path(project.storage.full_path(entry.path)), how)
    for attempt in (
        lambda: batchml.publish(project, MODEL, published.run_id),
        lambda: batchml.rebuild_catalog(project),
        lambda: explain(project.storage, MODEL, "L000000001"),
    ):
        with pytest.raises(batchml.IntegrityError, match=entry.path):
            attempt()
    assert batchml.database_path(project).resolve() == served_before  # the old file is still served
    assert _served(project) == ({published.run_id}, published.rows)


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("artifact", ["dataset", "model"])
def test_a_damaged_input_stops_scoring(
    project: batchml.Project, champion: batchml.ModelVersion, artifact: str, how: str
) -> None:
    storage = project.storage
    path = (
        datasets.get_version(storage, "loans@latest").files[0].path
        if artifact == "dataset"
        else champion.model_file.path
    )
    _damage(Path(storage.full_path(path)), how)
    with pytest.raises(batchml.IntegrityError, match=path):
        batchml.score(project, MODEL)
    assert list_runs(storage, MODEL) == []


RECORD_KINDS = ["run manifest", "dataset manifest", "model card", "publication event", "alias event"]


def _steps_reading_every_record(project: batchml.Project) -> list[Callable[[], object]]:
    return [
        lambda: batchml.publish(project, MODEL, batchml.score(project, MODEL).run_id),
        lambda: batchml.rebuild_catalog(project),
    ]


def _record(project: batchml.Project, run: batchml.PredictionRun, kind: str) -> str:
    dataset = datasets.get_version(project.storage, "loans@latest").version
    return {
        "run manifest": f"runs/{MODEL}/manifests/{run.run_id}.json",
        "dataset manifest": f"datasets/loans/versions/{dataset}.json",
        "model card": f"models/{MODEL}/versions/000001.json",
        "publication event": f"publications/{MODEL}/events/000000001.json",
        "alias event": f"models/{MODEL}/events/000000001.json",
    }[kind]


@pytest.mark.parametrize("kind", RECORD_KINDS)
def test_an_unparseable_record_stops_scoring_publishing_and_rebuild(
    project: batchml.Project, published: batchml.PredictionRun, kind: str
) -> None:
    relpath = _record(project, published, kind)
    _damage(Path(project.storage.full_path(relpath)), "truncate")
    for attempt in _steps_reading_every_record(project):
        with pytest.raises(batchml.IntegrityError, match=rf"{relpath}.*unparseable JSON"):
            attempt()
    assert _served(project) == ({published.run_id}, published.rows)  # still served, from the old file


def _readers(project: batchml.Project, run: batchml.PredictionRun) -> dict[str, Callable[[], object]]:
    """The library call that reads each kind of record."""
    storage = project.storage
    return {
        "run manifest": lambda: get_run(storage, MODEL, run.run_id),
        "dataset manifest": lambda: datasets.list_versions(storage, "loans"),
        "model card": lambda: RegistryReader(storage).get(MODEL, 1),
        "publication event": lambda: PublicationLog(storage).events(MODEL),
        "alias event": lambda: RegistryReader(storage).events(MODEL),
    }


@pytest.mark.parametrize("kind", RECORD_KINDS)
def test_a_hand_edited_record_is_detected_wherever_it_is_read(
    project: batchml.Project, published: batchml.PredictionRun, kind: str
) -> None:
    """Valid JSON with one value changed (a forged row count, a rewritten actor) fails its own hash."""
    relpath = _record(project, published, kind)
    path = Path(project.storage.full_path(relpath))
    record = json.loads(path.read_text())
    field = "rows" if "rows" in record else "by" if "by" in record else "name"
    record[field] = record[field] + 1 if isinstance(record[field], int) else f"{record[field]}-forged"
    path.write_text(json.dumps(record, indent=1, sort_keys=True))
    for attempt in [_readers(project, published)[kind], *_steps_reading_every_record(project)]:
        with pytest.raises(batchml.IntegrityError, match=rf"{relpath}: expected record_sha256 "):
            attempt()
    result = CliRunner().invoke(
        app, ["--config", str(project.base_dir / "batchml.toml"), "catalog", "rebuild"]
    )
    assert result.exit_code == 1 and result.exception is not None
    assert result.stderr.count("\n") == 1 and relpath in result.stderr, result.stderr
    assert _served(project) == ({published.run_id}, published.rows)  # still served, from the old file


def test_a_record_without_its_own_hash_is_refused(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    """Records written before they carried a hash (or stripped of it) are not trusted: pre-1.0, no upgrade."""
    relpath = f"models/{MODEL}/versions/000001.json"
    path = Path(project.storage.full_path(relpath))
    record = json.loads(path.read_text())
    record.pop("record_sha256", None)
    path.write_text(json.dumps(record))
    with pytest.raises(
        batchml.IntegrityError, match=rf"{relpath}: expected a record_sha256 field, found none"
    ):
        RegistryReader(project.storage).get(MODEL, 1)


# -- mutating commands killed between their event and the serving rebuild, then run again ------------------

#: command → (CLI arguments, how many events it appends). `{r1}` is the first published run.
COMMANDS: dict[str, tuple[list[str], int]] = {
    "models promote": (["models", "promote", MODEL, "4", "--reason", "crash test"], 1),
    "models rollback": (["models", "rollback", MODEL, "--reason", "crash test"], 1),
    "predictions rollback": (["predictions", "rollback", MODEL, "--reason", "crash test"], 1),
    "predictions stage": (["predictions", "stage", MODEL, "{r1}", "--reason", "crash test"], 1),
    "predictions promote": (["predictions", "promote", MODEL, "--reason", "crash test"], 3),
}


def _command_points(events: int) -> list[tuple[str, str, int | str]]:
    """After each event is committed, as the rebuild starts, before the flip, and after the new link.

    Not after the flip: the command is done then, and its rerun is a new request (a second rollback steps
    back again); the publish times such a kill leaves unrecorded are tested in tests/serving/test_run_stats.
    """
    return [
        *(("os.link", "after", k) for k in range(1, events + 1)),
        ("duckdb.connect", "before", "last"),
        ("os.replace", "after", 1),
        ("os.symlink", "after", 1),
    ]


@pytest.fixture
def busy(project: batchml.Project, published: batchml.PredictionRun) -> dict[str, str]:
    """champion v1 -> v2 -> v3, published r1 -> r2 -> r3 (runs of v1..v3), r4 (v4) staged.

    Every mutating command has work to do, and a rollback done twice would still find a step to take.
    """
    runs = {"r1": published.run_id}
    for number, leaves in ((2, 7), (3, 5), (4, 3)):
        version = batchml.train(project, MODEL, params={"num_leaves": leaves}).version
        assert version == number
        run = batchml.score(project, MODEL, version=version)
        runs[f"r{number}"] = run.run_id
        if number < 4:
            batchml.promote(project, MODEL, version, reason=f"v{number}")
            batchml.publish(project, MODEL, run.run_id)
    batchml.api.stage(project, MODEL, runs["r4"])
    return runs


def _moves(events: list[dict[str, Any]], keys: tuple[str, ...]) -> list[tuple[Any, ...]]:
    return [tuple(e.get(k) for k in keys) for e in events]


def _served_state(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    def one(sql: str) -> Any:
        row = con.execute(sql).fetchone()
        assert row is not None
        return row[0]

    aliases = "SELECT alias, version, alias_at(model, alias, now()) FROM model_aliases ORDER BY alias"
    return {
        "predictions": one("SELECT list(DISTINCT run_id ORDER BY run_id) FROM predictions"),
        "staging": one("SELECT list(DISTINCT run_id ORDER BY run_id) FROM predictions_staging"),
        "aliases": con.execute(aliases).fetchall(),
        "alias_events": one("SELECT count(*) FROM alias_events"),
        "publications": one("SELECT count(*) FROM publications"),
        "publish_timed": one("SELECT list(seq ORDER BY seq) FROM publish_timings"),
    }


def _command_state(project: batchml.Project) -> dict[str, Any]:
    """The logs, the holders they give, and what the serving file serves (batchml.connect = plain DuckDB)."""
    storage = project.storage
    reader = RegistryReader(storage)
    published, staging = PublicationLog(storage), PublicationLog(storage, "staging")
    con = batchml.connect(project)
    try:
        served = _served_state(con)
    finally:
        con.close()
    plain = duckdb.connect(str(batchml.database_path(project)), read_only=True)
    try:
        assert _served_state(plain) == served
    finally:
        plain.close()
    return {
        "aliases": reader.aliases(MODEL),
        "alias_moves": _moves(reader.events(MODEL), ("action", "alias", "from_version", "to_version")),
        "published": _moves(published.events(MODEL), ("action", "run_id", "from_run_id")),
        "staged": _moves(staging.events(MODEL), ("action", "run_id", "from_run_id")),
        "served": served,
        "timing_records": sorted(storage.list_dir(f"publications/{MODEL}/timings")),
    }


def _run_commands(
    tmp_path: Path, project: batchml.Project, runs: dict[str, str], *, all_points: bool = True
) -> list[dict[str, Any]]:
    """Kill every command of COMMANDS at its points (or only after its first event), rerun each."""
    cases = []
    for name, (args, events) in COMMANDS.items():
        folder = tmp_path / name.replace(" ", "-")
        points = _command_points(events) if all_points else _command_points(events)[:1]
        dirs = []
        for i in range(len(points) + 1):
            shutil.copytree(project.base_dir, folder / f"p{i}", symlinks=True)
            dirs.append(folder / f"p{i}")
        cases.append(
            {
                "name": name,
                "args": [a.format(**runs) for a in args],
                "reference_dir": str(dirs[0]),
                "points": [
                    {"dir": str(d), "target": t, "when": w, "n": n}
                    for d, (t, w, n) in zip(dirs[1:], points, strict=True)
                ],
            }
        )
    (tmp_path / "commands.json").write_text(json.dumps({"cases": cases}))
    results: list[dict[str, Any]] = _driver("commands", tmp_path / "commands.json")
    return [{**case, **result} for case, result in zip(cases, results, strict=True)]


def _killed(cases: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any], str]]:
    """Every (case, killed point, label) of `_run_commands`' result."""
    for case in cases:
        for point in case["points"]:
            label = f"{case['name']} killed {point['when']} {point['target']} #{point['n']}"
            assert point["calls"] >= point["n"] >= 1 and point["outcome"] == "killed", (label, point)
            yield case, point, label


def _rerun_failures(
    cases: list[dict[str, Any]], before: dict[str, Any], open_project: Callable[[Path], batchml.Project]
) -> list[str]:
    """Each killed point whose rerun did not end as the case's one uninterrupted (reference) run."""
    expected = {}
    for case in cases:
        assert case["reference"]["code"] == 0, (case["name"], case["reference"]["stderr"])
        expected[case["name"]] = _command_state(open_project(Path(case["reference_dir"])))
        assert expected[case["name"]] != before, case["name"]  # the command did change something
    failures = []
    for case, point, label in _killed(cases):
        status, rerun = point["rerun"]
        if status != "ok" or rerun["code"] != 0:
            failures.append(f"{label}: rerun {status} {rerun}")
            continue
        got, want = _command_state(open_project(Path(point["dir"]))), expected[case["name"]]
        if got != want:
            diff = {k: (got[k], want[k]) for k in got if got[k] != want[k]}
            failures.append(f"{label}: rerun ends in {diff} (got, one uninterrupted run)")
    return failures


@pytest.mark.slow
def test_a_mutating_command_killed_anywhere_and_run_again_ends_as_one_uninterrupted_run(
    tmp_path: Path,
    project: batchml.Project,
    busy: dict[str, str],
    open_project: Callable[[Path], batchml.Project],
) -> None:
    before = _command_state(project)
    failures = _rerun_failures(_run_commands(tmp_path, project, busy), before, open_project)
    assert not failures, "\n".join(failures)


def _caught_up(project: batchml.Project) -> bool:
    """True if the serving file serves what a full rebuild from storage would (checked on a copy)."""
    copy = Path(tempfile.mkdtemp(dir=project.base_dir.parent)) / "rebuilt"
    shutil.copytree(project.base_dir, copy, symlinks=True)
    rebuilt = batchml.Project.open(copy / "batchml.toml")
    batchml.rebuild_catalog(rebuilt)
    return _command_state(project)["served"] == _command_state(rebuilt)["served"]


def test_a_killed_mutating_command_is_finished_by_its_rerun_or_caught_up_by_the_next_command(
    tmp_path: Path,
    project: batchml.Project,
    busy: dict[str, str],
    open_project: Callable[[Path], batchml.Project],
) -> None:
    """Killed right after its first event: the rerun ends as one run; a read command catches the file up."""
    before = _command_state(project)
    cases = _run_commands(tmp_path, project, busy, all_points=False)
    failures = _rerun_failures(cases, before, open_project)
    assert not failures, "\n".join(failures)
    stale = 0
    for _, point, label in _killed(cases):
        killed = open_project(Path(f"{point['dir']}-killed"))
        assert _command_state(killed)["served"] == before["served"], label  # the old file, intact
        stale += not _caught_up(killed)
        config = str(killed.base_dir / "batchml.toml")
        listed = CliRunner().invoke(app, ["--config", config, "models", "list"])
        assert listed.exit_code == 0, (label, listed.stderr)
        assert listed.stderr.startswith("note: the serving file was behind the event logs ("), label
        if not _caught_up(killed):
            failures.append(f"{label}: still behind its logs after `batchml models list`")
    assert stale > 0  # the kills did leave serving files behind their logs
    assert not failures, f"{len(failures)} of {stale} stale:\n" + "\n".join(failures)
