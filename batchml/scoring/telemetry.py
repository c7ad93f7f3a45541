"""Per-run telemetry: each pipeline stage's busy seconds, rows per second and the process's peak RSS.

The stages overlap (read and encode in one thread, predict in several, write in the caller's), so the wall
time between them says nothing about any one of them: each stage adds the time it spends inside its own work,
and waiting for another stage is not counted. The stage seconds therefore sum to at most the wall time times
the threads that ran them (`threads`).

The run manifest records it under `telemetry`; it is not part of the run's content key, so a reused run keeps
the telemetry of the run that did the work. Publish time is not in the manifest: a run is committed before
it is published (and may be published many times), so publishing is timed by the publication, not the run.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

#: The stages timed in a run's manifest, in pipeline order.
STAGES = ("read", "encode", "predict", "write")


def peak_rss_mib() -> float:
    """The peak resident memory of this process so far, in MiB.

    It is the process's peak, not the run's: a process that scored a bigger run before reports that peak.
    On Linux it is `VmHWM`: `ru_maxrss` survives `exec`, so a process started by a bigger one (a worker,
    a benchmark's child) would report its parent's size at the fork.
    """
    try:
        with open("/proc/self/status") as status:
            return round(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024, 1)
    except (OSError, StopIteration):  # not Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # macOS: bytes


class StageClock:
    """Busy seconds per stage, added to from any thread."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        """Count `seconds` of work in `stage`."""
        with self._lock:
            self.seconds[stage] += seconds

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Count the time spent inside the block as work in `stage`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def iterate(self, stage: str, source: Iterator[T]) -> Iterator[T]:
        """The items of `source`, counting the time spent producing each as work in `stage`."""
        while True:
            with self.timed(stage):
                item = next(source, _END)
            if item is _END:
                return
            yield item  # type: ignore[misc]

    def wrap(self, stage: str, fn: Callable[[T], Any]) -> Callable[[T], Any]:
        """`fn`, counting the time of each call as work in `stage`."""

        def timed_fn(item: T) -> Any:
            with self.timed(stage):
                return fn(item)

        return timed_fn


_END = object()


def telemetry(seconds: dict[str, float], wall: float, rows: int, threads: int) -> dict[str, Any]:
    """The manifest's `telemetry` for a pipeline that ran `wall` seconds on `threads` threads."""
    wall = round(wall, 6)  # rows per second from the wall time as stored, so the two always agree
    return {
        "seconds": {s: round(seconds.get(s, 0.0), 6) for s in STAGES},
        "wall_seconds": wall,
        "threads": threads,
        "rows_per_s": round(rows / wall, 1) if wall > 0 else None,
        "peak_rss_mib": peak_rss_mib(),
    }


def merge(parts: list[dict[str, Any]], rows: int) -> dict[str, Any] | None:
    """One run's telemetry from its partitions' (None when no partition scored anything here).

    Stage seconds and threads are summed (the work the run cost, comparable with a sequential run); the
    wall time is the longest partition's (they run in parallel), which rows per second is computed from;
    the peak RSS is the largest of the partitions' processes.
    """
    parts = [p for p in parts if p]
    if not parts:
        return None
    wall = max(float(p["wall_seconds"]) for p in parts)
    merged = telemetry(
        {s: sum(float(p["seconds"][s]) for p in parts) for s in STAGES},
        wall,
        rows,
        sum(int(p["threads"]) for p in parts),
    )
    merged["peak_rss_mib"] = max(float(p["peak_rss_mib"]) for p in parts)
    return merged
