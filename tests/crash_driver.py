"""Test-only driver: run snapshot → score → publish in forked children and SIGKILL them at chosen points.

    python tests/crash_driver.py crash PLAN.json     the crash matrix (see tests/test_crash.py)
    python tests/crash_driver.py recover PLAN.json   rerun the same work in every point's project
    python tests/crash_driver.py work PROJECT_DIR START_AT
                                                     score + publish the champion once, starting at START_AT
    python tests/crash_driver.py commands PLAN.json  kill mutating CLI commands at chosen points, then rerun
                                                     each one (see tests/test_crash.py)
    python tests/crash_driver.py race PROJECT_DIR BARRIER_DIR ARGS...
                                                     run `batchml ARGS` once both racers have read the state
                                                     they act on (see tests/serving/test_races.py)

Nothing in batchml knows about this: the hooks are wrappers this script installs around library and os
functions in the child process, counting calls per phase and killing the process (`kill -9` on itself)
before or after the n-th call. The parent imports everything once and forks per point, so a point costs one
pipeline run, not one interpreter start. It starts no threads before forking.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import contextlib
import functools
import io
import json
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import lightgbm  # noqa: F401  (imported before forking so children start warm)

import batchml
from batchml.cli import app as cli_app
from batchml.serving.operations import Mutation
from batchml.store import storage as storage_module

MODEL = "default_risk"

#: name → (owner object, attribute) of every function a point may name.
TARGETS: dict[str, tuple[Any, str]] = {
    "Storage.open_write": (storage_module.Storage, "open_write"),
    "Storage.write_new": (storage_module.Storage, "write_new"),
    "Storage.create": (storage_module.Storage, "create"),
    "Storage.verify": (storage_module.Storage, "verify"),
    "HashingWriter.write": (storage_module._HashingWriter, "write"),
    "os.fsync": (os, "fsync"),
    "os.link": (os, "link"),
    "os.unlink": (os, "unlink"),
    "os.replace": (os, "replace"),
    "os.symlink": (os, "symlink"),
    "duckdb.connect": (duckdb, "connect"),
}

#: Where a racer waits for the other: right after it has read the state it acts on (what its serving file
#: shows), before it takes the operation lock.
RACE_POINT: tuple[Any, str] = (Mutation, "__init__")

_phase = ""
_counts: Counter[tuple[str, str]] = Counter()


def _install(point: dict[str, Any] | None) -> None:
    """Wrap every target: count calls per (phase, target); SIGKILL ourselves at `point` if given."""
    for name, (owner, attr) in TARGETS.items():
        original = getattr(owner, attr)

        def wrapper(*args: Any, __name: str = name, __original: Any = original, **kwargs: Any) -> Any:
            key = (_phase, __name)
            _counts[key] += 1
            hit = (
                point is not None and (point["phase"], point["target"]) == key and _counts[key] == point["n"]
            )
            if hit and point is not None and point["when"] == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = __original(*args, **kwargs)
            if hit:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(owner, attr, functools.wraps(original)(wrapper))


def pipeline(project_dir: str, source: str) -> str:
    """Snapshot `source` as a new loans version, score it with the champion, publish the run."""
    global _phase
    project = batchml.Project.open(Path(project_dir) / "batchml.toml")
    _phase = "snapshot"
    version = batchml.snapshot_dataset(project, "loans", source)
    _phase = "score"
    run = batchml.score(project, MODEL, dataset=version.ref)
    _phase = "publish"
    batchml.publish(project, MODEL, run.run_id, reason="crash test")
    _phase = ""
    return run.run_id


def _in_child(body: Any) -> tuple[str, Any]:
    """Run `body()` in a forked child; return ('killed'|'ok'|'error', what it wrote)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        code = 0
        try:
            out: Any = body()
        except BaseException as exc:  # reported to the parent
            out, code = f"{type(exc).__name__}: {exc}", 1
        with os.fdopen(write_end, "w") as pipe:
            json.dump(out, pipe)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return ("killed" if os.WTERMSIG(status) == signal.SIGKILL else "signal", None)
    return ("ok" if os.WEXITSTATUS(status) == 0 else "error", json.loads(text) if text else None)


def _counting(project_dir: str, source: str) -> dict[str, Any]:
    _install(None)
    run_id = pipeline(project_dir, source)
    return {"run_id": run_id, "counts": {f"{p}|{t}": n for (p, t), n in _counts.items()}}


def crash(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Run the reference (counting) pass in `reference_dir`, then kill one child per point."""
    source = plan["source"]
    status, reference = _in_child(lambda: _counting(plan["reference_dir"], source))
    if status != "ok":
        raise SystemExit(f"reference run failed: {status} {reference}")
    counts = reference["counts"]
    results: list[dict[str, Any]] = [{"reference": True, **reference}]
    for point in plan["points"]:
        total = counts.get(f"{point['phase']}|{point['target']}", 0)
        n = {"last": total, "mid": max(1, total // 2)}.get(str(point["n"]), point["n"])
        resolved = {**point, "n": n}
        started = time.perf_counter()

        def killed_run(p: dict[str, Any] = resolved) -> str:
            _install(p)
            return pipeline(p["dir"], source)

        outcome, detail = _in_child(killed_run)
        results.append(
            {
                **resolved,
                "calls": total,
                "outcome": outcome,
                "detail": detail,
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
    return results


def recover(plan: dict[str, Any]) -> list[list[Any]]:
    """Rerun the same work, without hooks, in every point's project: [status, run id or error] each."""
    return [list(_in_child(lambda p=point: pipeline(p["dir"], plan["source"]))) for point in plan["points"]]


def work(project_dir: str, start_at: float) -> dict[str, Any]:
    """Score and publish the champion once, starting at `start_at` (so two processes start together)."""
    project = batchml.Project.open(Path(project_dir) / "batchml.toml")
    time.sleep(max(0.0, start_at - time.time()))
    run = batchml.score(project, MODEL)
    batchml.publish(project, MODEL, run.run_id, reason="exactly once")
    return {"run_id": run.run_id, "reused": run.reused, "pid": os.getpid()}


def command(project_dir: str, args: list[str]) -> dict[str, Any]:
    """Run `batchml --config PROJECT_DIR/batchml.toml ARGS` in this process: exit code, stdout, stderr."""
    global _phase
    out, err = io.StringIO(), io.StringIO()
    _phase = "command"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli_app(["--config", str(Path(project_dir) / "batchml.toml"), *args], prog_name="batchml")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    _phase = ""
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def commands(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Per case: one uninterrupted run in its reference project, one killed child per point, then a rerun.

    The reference run also counts the calls of every target, so `n` may be "last" (the last such call).
    """
    results = []
    for case in plan["cases"]:
        args = case["args"]

        def counted(c: dict[str, Any] = case) -> dict[str, Any]:
            _install(None)
            result = command(c["reference_dir"], c["args"])
            return {**result, "counts": {f"{p}|{t}": n for (p, t), n in _counts.items() if p == "command"}}

        status, reference = _in_child(counted)
        if status != "ok":
            raise SystemExit(f"reference run of {args} failed: {status} {reference}")
        points = []
        for point in case["points"]:
            total = reference["counts"].get(f"command|{point['target']}", 0)
            n = {"last": total, "mid": max(1, total // 2)}.get(str(point["n"]), point["n"])
            resolved = {**point, "n": n, "phase": "command"}

            def killed(p: dict[str, Any] = resolved, a: list[str] = args) -> dict[str, Any]:
                _install(p)
                return command(p["dir"], a)

            outcome, detail = _in_child(killed)
            shutil.copytree(point["dir"], f"{point['dir']}-killed", symlinks=True)  # as the kill left it
            rerun = _in_child(lambda p=resolved, a=args: command(p["dir"], a))
            points.append({**resolved, "calls": total, "outcome": outcome, "detail": detail, "rerun": rerun})
        results.append({"args": args, "reference": reference, "points": points})
    return results


def race(project_dir: str, barrier: str, args: list[str]) -> dict[str, Any]:
    """Run `batchml ARGS` once, holding at the barrier until the other racer has read its state too.

    The barrier sits right after the command has read the state it acts on (RACE_POINT), so both racers
    decide on the same state whatever the scheduler does; then they proceed together.
    """
    owner, attr = RACE_POINT
    original = getattr(owner, attr)
    here = Path(barrier)

    def wait_for_the_other(*a: Any, **kw: Any) -> Any:
        result = original(*a, **kw)
        setattr(owner, attr, original)  # only the first call waits
        (here / str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(list(here.iterdir())) < 2:
            if time.monotonic() > deadline:
                raise SystemExit("the other racer never arrived")
            time.sleep(0.005)
        return result

    setattr(owner, attr, wait_for_the_other)
    return command(project_dir, args)


if __name__ == "__main__":
    if sys.argv[1] == "crash":
        print(json.dumps(crash(json.loads(Path(sys.argv[2]).read_text()))))
    elif sys.argv[1] == "recover":
        print(json.dumps(recover(json.loads(Path(sys.argv[2]).read_text()))))
    elif sys.argv[1] == "work":
        print(json.dumps(work(sys.argv[2], float(sys.argv[3]))))
    elif sys.argv[1] == "commands":
        print(json.dumps(commands(json.loads(Path(sys.argv[2]).read_text()))))
    elif sys.argv[1] == "race":
        print(json.dumps(race(sys.argv[2], sys.argv[3], sys.argv[4:])))
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}: use crash, recover, work, commands or race")
