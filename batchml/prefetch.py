"""Run an iterator ahead in a background thread, so reading, predicting and writing overlap.

Parquet decoding, LightGBM prediction and Parquet encoding all release the GIL, so chaining stages with
`prefetch` keeps both cores busy while memory stays bounded by `depth` items per stage.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

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
