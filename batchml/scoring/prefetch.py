"""Run pipeline stages in background threads, so reading, predicting and writing overlap.

Parquet decoding, LightGBM prediction and Parquet encoding all release the GIL, so chaining stages with
`prefetch` (one thread ahead) and `ordered_map` (several items at once) keeps every core busy while memory
stays bounded by a few items per stage.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


class _Failure:
    """An exception raised by the source, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(source: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Yield the items of `source`, produced up to `depth` items ahead by a background thread.

    An exception in `source` is re-raised here; if the consumer stops early, the producer stops too.
    """
    items: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Failure(exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # release open files of an abandoned generator in its own thread

    thread = threading.Thread(target=produce, name="batchml-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


def ordered_map(fn: Callable[[T], R], source: Iterator[T], workers: int, depth: int = 2) -> Iterator[R]:
    """Yield `fn(item)` for the items of `source` in order, computing up to `workers` of them at once.

    At most `workers + depth` items are in flight, so memory stays bounded. Work on several items at once
    keeps every core busy even when another stage takes a core for a while (one call spread over all
    cores would wait for its slowest thread). An exception in `fn` or `source` is re-raised here; if the
    consumer stops early, pending work is cancelled and the running calls are awaited.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    pending: deque[Future[R]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="batchml-map")
    try:
        for item in source:
            pending.append(pool.submit(fn, item))
            if len(pending) >= workers + depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
        close = getattr(source, "close", None)
        if close is not None:
            close()
