"""prefetch: order kept, errors surface in the consumer, an abandoned producer stops and cleans up."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from batchml.prefetch import prefetch


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
