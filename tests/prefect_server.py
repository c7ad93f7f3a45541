"""Real Prefect processes for the deployment tests: a server, a worker or a serving process on loopback.

Every process runs in its own process group with its output in a log file, and an environment built from
scratch (own PREFECT_HOME, analytics off, no PREFECT_* of the test session), so nothing of the session's
Prefect test harness (tests/test_flows.py) reaches them and they never reach it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
T = TypeVar("T")

# Passed through from the parent; every PREFECT_* variable (and the rest) is left out on purpose.
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "OMP_WAIT_POLICY", "TZ")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def subprocess_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    """A subprocess environment built from scratch: a few basics, then Prefect settings of our own."""
    env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


class Proc:
    """A subprocess in its own process group, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return f"--- {self.log.name} (exit {self.popen.poll()}) ---\n" + "\n".join(text[-lines:])

    def stop(self) -> None:
        """SIGTERM the whole group (the serve process pauses its schedules), then SIGKILL what is left."""
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(20)
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # the leader if stuck, and any child left behind
        self.popen.wait(10)


@contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[Proc]:
    """`Proc(args, env, log)`, stopped on exit."""
    proc = Proc(args, env, log)
    try:
        yield proc
    finally:
        proc.stop()


def wait_for(what: str, probe: Callable[[], T | None], procs: list[Proc], timeout: float) -> T:
    """Poll `probe` until it returns something, failing early (with the logs) if a process died."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        dead = [p for p in procs if not p.alive()]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(p.tail() for p in procs)
            pytest.fail(f"{'process died' if dead else 'timed out'} waiting for {what}\n{logs}")
        time.sleep(0.5)


def healthy(api: str) -> bool | None:
    """True when the API at `api` answers /health, else None (for `wait_for`)."""
    try:
        return True if httpx.get(f"{api}/health", timeout=2).status_code == 200 else None
    except httpx.HTTPError:
        return None
