"""What orchestration costs: the same score + publish through the CLI and through the Prefect flow.

    python benchmarks/flows.py [--rows 2000000] [--repeat 3] [--warm]

A Prefect server is started on loopback first (its own PREFECT_HOME, analytics off) and stays up: the flow
runs as it would against a server already running in production, so the server's start-up is not counted.
Each measured command is a fresh process, as an operator or a scheduler starts it:

    cli   batchml score default_risk
    flow  batchml run score -p model=default_risk     (the `score_and_publish` flow, tracked by the server)

Scoring the same data with the same model is a no-op by design (the run is reused), so every measurement
starts from its own copy of a project where the dataset is snapshotted and the model trained and promoted;
copying is not timed. The paths alternate (A B A B ...) and the best wall time of each is kept. Prefect's
share is (flow - cli) / flow: what the flow adds (importing Prefect, creating the flow and task runs over
HTTP, task orchestration, artifacts) as a fraction of the flow's wall time.

With --warm the same run also measures orchestration alone: ONE long-lived child process, pointed at the same
server, imports batchml, Prefect and the flows first, then alternates on fresh project copies (copying not
timed) between

    plain       batchml.score(project, model) + batchml.publish(...)   (what `batchml score` calls)
    flow-call   score_and_publish(model=..., config=...)               (a flow run tracked by the server)

Each flow call is timed until Prefect's log and event workers have sent what the run queued (what a fresh
process waits for at exit), so nothing a run leaves behind overlaps the next measurement. Its share,
(flow-call - plain) / flow-call, is what Prefect's orchestration costs once an interpreter is up; the fresh
share minus it is the price of a new interpreter that imports Prefect per flow run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _harness import sample_project_toml

TOML = sample_project_toml(num_iterations=200)
MODEL = "default_risk"


def batchml(*args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    """Run `batchml ARGS` in `cwd` (it must succeed)."""
    command = [sys.executable, "-m", "batchml", *args]
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)


def make_project(folder: Path, rows: int) -> None:
    """A project with `rows` rows snapshotted and one model trained and promoted (nothing scored yet)."""
    folder.mkdir(parents=True)
    (folder / "batchml.toml").write_text(TOML)
    batchml("sample-data", "loans.csv", "--rows", str(rows), cwd=folder)
    batchml("datasets", "snapshot", "loans", cwd=folder)
    batchml("train", MODEL, cwd=folder)
    batchml("models", "promote", MODEL, "1", "--reason", "benchmark", cwd=folder)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prefect_env(home: Path, api: str | None = None) -> dict[str, str]:
    """This environment without Prefect settings or batchml overrides, with Prefect's home at `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BATCHML_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if api:
        env["PREFECT_API_URL"] = api
    return env


def start_server(home: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`prefect server start` on loopback; returns the process and its API URL once it answers."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, env=prefect_env(home), stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                if response.status == 200:
                    return server, api
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise RuntimeError(f"prefect server did not answer within 180 s; see {log}")


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of one run of `batchml COMMAND` in `cwd`."""
    argv = [sys.executable, "-m", "batchml", *command]
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def warm_child(template: Path, repeat: int) -> None:
    """In this one process: import everything, then time `plain` and `flow-call` alternately (see above).

    Prints one JSON line: every run's seconds per path. Runs in the child started by `warm`.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    # This script is benchmarks/flows.py: with its folder first on sys.path, `flows` would name it.
    here = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    import batchml
    from flows.score import score_and_publish

    def plain(folder: Path) -> bool:
        project = batchml.Project.open(folder / "batchml.toml")
        run = batchml.score(project, MODEL, alias="champion")
        batchml.publish(project, MODEL, run.run_id)
        return run.reused

    def flow_call(folder: Path) -> bool:
        result = score_and_publish(model=MODEL, config=str(folder / "batchml.toml"))
        APILogWorker.drain_all(at_exit=False)  # what a fresh process waits for at exit
        EventsWorker.drain_all(at_exit=False)
        return bool(result["reused"])

    paths = {"plain": plain, "flow-call": flow_call}
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for attempt in range(repeat):
        for name, call in paths.items():
            folder = template.parent / f"warm-{name}-{attempt}"
            shutil.copytree(template, folder, symlinks=True)
            started = time.perf_counter()
            reused = call(folder)
            seconds[name].append(time.perf_counter() - started)
            shutil.rmtree(folder)
            if reused:  # a reused run measures nothing: the copy was not fresh
                raise RuntimeError(f"{name}: the run was reused; the project copy was not fresh")
    print(json.dumps(seconds))


def warm(template: Path, repeat: int, env: dict[str, str], log: Path) -> dict[str, list[float]]:
    """Run `warm_child` in one child process with `env`; its seconds per path."""
    command = [sys.executable, __file__, "--warm-child", str(template), "--repeat", str(repeat)]
    with log.open("wb") as stderr:
        proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=stderr, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"warm child failed with exit code {proc.returncode}: {log.read_text()[-2000:]}")
    seconds: dict[str, list[float]] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return seconds


def share(flow: float, plain: float) -> float:
    """What the flow adds as a fraction of its wall time."""
    return round((flow - plain) / flow, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of a table.")
    parser.add_argument(
        "--warm", action="store_true", help="Also time plain vs flow call inside one long-lived process."
    )
    parser.add_argument("--warm-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warm_child:
        warm_child(args.warm_child, args.repeat)
        return
    with tempfile.TemporaryDirectory(prefix="batchml-flows-") as tmp:
        root = Path(tmp)
        make_project(root / "template", args.rows)
        server, api = start_server(root / "prefect-home", root / "server.log")
        try:
            env = prefect_env(root / "prefect-home", api)
            paths = {"cli": ["score", MODEL], "flow": ["run", "score", "-p", f"model={MODEL}"]}
            seconds: dict[str, list[float]] = {name: [] for name in paths}
            for attempt in range(args.repeat):
                for name, command in paths.items():
                    project = root / f"{name}-{attempt}"
                    shutil.copytree(root / "template", project, symlinks=True)
                    seconds[name].append(timed(command, project, env))
                    shutil.rmtree(project)
            if args.warm:
                seconds.update(warm(root / "template", args.repeat, env, root / "warm.log"))
        finally:
            server.terminate()
            server.wait(timeout=30)
    best = {name: min(values) for name, values in seconds.items()}
    result: dict[str, Any] = {
        "rows": args.rows,
        "repeat": args.repeat,
        "cli_seconds": round(best["cli"], 3),
        "flow_seconds": round(best["flow"], 3),
        "prefect_share": share(best["flow"], best["cli"]),
        "runs_seconds": {name: [round(s, 3) for s in values] for name, values in seconds.items()},
    }
    if args.warm:
        result.update(
            plain_seconds=round(best["plain"], 3),
            flow_call_seconds=round(best["flow-call"], 3),
            warm_prefect_share=share(best["flow-call"], best["plain"]),
        )
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'path':<10} {'best s':>8}  runs (s)  [{args.rows:,} rows, best of {args.repeat}, alternating]")
    for name in seconds:
        print(f"{name:<10} {best[name]:>8.2f}  {result['runs_seconds'][name]}")
    print(f"Prefect's share of the flow's wall time, fresh process each: {result['prefect_share']:.1%}")
    if args.warm:
        warm_share = result["warm_prefect_share"]
        print(f"Prefect's share inside one warm process (orchestration only): {warm_share:.1%}")


if __name__ == "__main__":
    main()
