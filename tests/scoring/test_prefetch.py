"""prefetch and ordered_map: order kept, errors reach the consumer, an abandoned stage stops and cleans up."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from batchml.scoring.prefetch import ordered_map, prefetch


def test_items_arrive_in_order() -> None:
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))


def test_a_failing_source_raises_in_the_consumer() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise ValueError("bad batch 2")

    got = []
    with pytest.raises(ValueError, match="bad batch 2"):
        got.extend(prefetch(source()))
    assert got == [1]


def test_stopping_early_stops_and_closes_the_source() -> None:
    closed = threading.Event()
    produced = []

    def source() -> Iterator[int]:
        try:
            for i in range(1_000_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    stream = prefetch(source(), depth=2)
    assert next(stream) == 0
    stream.close()
    assert closed.wait(5) and len(produced) < 10
    assert not any(t.name == "batchml-prefetch" for t in threading.enumerate())


def test_ordered_map_keeps_order_and_runs_calls_at_once() -> None:
    running, most = 0, 0
    lock = threading.Lock()
    both_started = threading.Barrier(2, timeout=5)

    def work(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        if i < 2:
            both_started.wait()  # fails (BrokenBarrierError) unless two calls overlap
        time.sleep(0.001 * (i % 3))
        with lock:
            running -= 1
        return i * i

    assert list(ordered_map(work, iter(range(50)), workers=2)) == [i * i for i in range(50)]
    assert most == 2


def test_ordered_map_bounds_what_it_pulls_ahead() -> None:
    pulled = []

    def source() -> Iterator[int]:
        for i in range(1000):
            pulled.append(i)
            yield i

    stream = ordered_map(lambda i: i, source(), workers=3, depth=2)
    assert next(stream) == 0
    assert len(pulled) <= 3 + 2
    stream.close()


def test_ordered_map_raises_the_failing_call_and_stops_the_source() -> None:
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            yield from range(1_000_000)
        finally:
            closed.set()

    def work(i: int) -> int:
        if i == 5:
            raise ValueError("bad batch 5")
        return i

    got = []
    with pytest.raises(ValueError, match="bad batch 5"):
        got.extend(ordered_map(work, source(), workers=2))
    assert got == [0, 1, 2, 3, 4]
    assert closed.is_set()
    assert not any(t.name.startswith("batchml-map") for t in threading.enumerate())


def test_ordered_map_rejects_zero_workers() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        next(ordered_map(lambda i: i, iter([1]), workers=0))
