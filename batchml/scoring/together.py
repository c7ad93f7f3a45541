"""Scoring several model versions on one dataset version with one read of its data (shadow scoring).

    read (once) ──▶ fan out ──▶ per version: check + encode (shared when equal) ──▶ predict ──▶ write

Each version gets its own run, exactly as `runs.score` would make it (same content key, same files, same
run id), so a version scored in shadow and later scored alone finds its run. The read is shared; so is the
encoding of versions with the same features and rules, and the entity-id duplicate scan. A version whose
scoring fails stops alone: the others finish (the served version must not depend on a shadow).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from batchml.checks.entity_ids import DuplicateIds, find_duplicates
from batchml.data.datasets import DatasetVersion, iter_batches
from batchml.errors import BatchMLError
from batchml.models.lineage import code_version
from batchml.models.registry import ModelVersion
from batchml.scoring.engines import Engine
from batchml.scoring.pipeline import BATCH_ROWS, Progress, SharedBatch, check_input, score_batches
from batchml.scoring.runs import (
    PredictionRun,
    ScoringOptions,
    check_engine,
    commit_run,
    delete_parts,
    engine_facts,
    get_run,
    new_checks,
    new_stamp,
    no_rows_error,
    run_id_of,
    run_key,
)
from batchml.store.eventlog import now
from batchml.store.storage import Storage

if TYPE_CHECKING:
    import lightgbm as lgb

log = logging.getLogger(__name__)
_DONE = object()


@dataclass(frozen=True)
class Scorer:
    """One model version to score, with what predicts it and its scoring options."""

    model: ModelVersion
    booster: lgb.Booster
    engine: Engine | None
    options: ScoringOptions


class _Fanout:
    """Hands every batch of one source to several consumers; each gets its own bounded queue.

    The producer waits for the slowest consumer that is still reading (memory stays bounded by `depth`
    batches per consumer); a consumer that stops is dropped, the others carry on.
    """

    def __init__(self, source: Iterator[SharedBatch], consumers: int, depth: int = 2) -> None:
        self.queues: list[queue.Queue[object]] = [queue.Queue(maxsize=depth) for _ in range(consumers)]
        self.closed = [threading.Event() for _ in range(consumers)]
        self.source = source
        self.thread = threading.Thread(target=self._produce, name="batchml-fanout", daemon=True)

    def start(self) -> None:
        """Start reading."""
        self.thread.start()

    def _put(self, index: int, item: object) -> None:
        while not self.closed[index].is_set():
            try:
                self.queues[index].put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _produce(self) -> None:
        try:
            for item in self.source:
                if all(c.is_set() for c in self.closed):
                    return
                for index in range(len(self.queues)):
                    self._put(index, item)
            for index in range(len(self.queues)):
                self._put(index, _DONE)
        except BaseException as exc:  # every consumer re-raises the read's failure
            for index in range(len(self.queues)):
                self._put(index, exc)
        finally:
            close = getattr(self.source, "close", None)
            if close is not None:
                close()

    def consume(self, index: int) -> Iterator[SharedBatch]:
        """The batches for consumer `index`; stopping early drops this consumer."""
        try:
            while True:
                item = self.queues[index].get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            self.closed[index].set()

    def join(self) -> None:
        """Wait for the reader (after every consumer finished or stopped)."""
        self.thread.join()


def encoding_key(model: ModelVersion, options: ScoringOptions) -> str:
    """What decides which rows a version scores and how it encodes them: equal keys share the matrix."""
    features = [f.to_dict() for f in model.features]
    rules = {c: e.to_dict() for c, e in sorted(options.expectations.items())}
    target = str(model.card.get("target"))  # skipped by the checks: scoring needs no labels
    return json.dumps([str(model.card["entity_id"]), target, rules, features], sort_keys=True, default=str)


def score_together(
    storage: Storage,
    scorers: list[Scorer],
    dataset: DatasetVersion,
    *,
    progress: Progress | None = None,
) -> list[PredictionRun | BatchMLError]:
    """Score `dataset` with every scorer from one read; per scorer its run (reused if it exists) or the
    error that stopped it. `progress` counts the first scorer's rows."""
    results: list[PredictionRun | BatchMLError | None] = [None] * len(scorers)
    code = code_version()
    keys = []
    for i, s in enumerate(scorers):
        check_engine(s.options, s.engine)
        key = run_key(s.model, dataset, code, s.options)
        keys.append(key)
        with contextlib.suppress(BatchMLError):  # not scored yet
            results[i] = PredictionRun(get_run(storage, s.model.name, run_id_of(key)).manifest, reused=True)
    todo = [i for i, r in enumerate(results) if r is None]
    duplicates: dict[str, DuplicateIds] = {}
    inputs = {}
    for i in list(todo):
        s = scorers[i]
        checks = new_checks(s.model, dataset, s.options, run_id_of(keys[i]))
        entity_id = str(s.model.card["entity_id"])
        try:
            if entity_id not in duplicates:
                duplicates[entity_id] = find_duplicates(storage, dataset, entity_id)
            scoring = check_input(storage, s.model, dataset, dataset.files[0], checks, duplicates[entity_id])
        except BatchMLError as exc:
            results[i] = exc
            todo.remove(i)
            continue
        inputs[i] = (checks, scoring)
    if todo:
        columns = list(dict.fromkeys(c for i in todo for c in inputs[i][1].columns))
        source = (SharedBatch(b) for b in iter_batches(storage, dataset, columns, BATCH_ROWS))
        fanout = _Fanout(source, len(todo))
        started, scored_at = now(), datetime.now(UTC)

        def run(slot: int) -> PredictionRun | BatchMLError:
            i = todo[slot]
            s, (checks, scoring) = scorers[i], inputs[i]
            try:
                parts = score_batches(
                    storage,
                    f"runs/{s.model.name}/{run_id_of(keys[i])}/{uuid.uuid4().hex[:8]}",
                    fanout.consume(slot),
                    model=s.model,
                    booster=s.booster,
                    scoring=scoring,
                    checks=checks,
                    stamp=new_stamp(s.model, dataset, keys[i], scored_at),
                    reasons=s.options.reasons,
                    progress=progress if i == 0 else None,
                    engine=s.engine,
                    encoding_key=encoding_key(s.model, s.options),
                )
            except BatchMLError as exc:
                log.warning("scoring %s on %s failed: %s", s.model.ref, dataset.ref, exc)
                return exc
            finally:
                fanout.closed[slot].set()  # also when it failed before reading: the reader must not wait
            if not parts.files:
                delete_parts(storage, parts)
                return no_rows_error(dataset, checks)
            return commit_run(
                storage,
                keys[i],
                s.model,
                parts,
                checks.summary(),
                started_at=started,
                scored_at=scored_at.isoformat(),
                telemetry=parts.telemetry,
                **engine_facts(s.options),
            )

        fanout.start()
        with ThreadPoolExecutor(len(todo), thread_name_prefix="batchml-version") as pool:
            done = list(pool.map(run, range(len(todo))))
        fanout.join()
        for slot, result in enumerate(done):
            results[todo[slot]] = result
    return [r for r in results if r is not None]
