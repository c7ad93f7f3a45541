"""Scoring several model versions on one dataset version with one read of its data (shadow scoring).

    read (once) ──▶ fan out ──▶ per version: check + encode (shared when equal) ──▶ predict ──▶ write

Each version gets its own run, exactly as `runs.score` would make it (same content key, same files, same
run id), so a version scored in shadow and later scored alone finds its run. The read is shared; so is the
encoding of versions with the same features and rules, and the entity-id duplicate scan. A version whose
scoring fails stops alone: the others finish (the served version must not depend on a shadow).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from batchml.checks.entity_ids import DuplicateIds, find_duplicates
from batchml.checks.validation import ScoringChecks
from batchml.data.datasets import DatasetVersion, iter_batches
from batchml.errors import BatchMLError
from batchml.models.lineage import code_version
from batchml.models.registry import ModelVersion
from batchml.scoring.engines import Engine
from batchml.scoring.pipeline import (
    BATCH_ROWS,
    Progress,
    ScoredParts,
    ScoringInput,
    SharedBatch,
    check_input,
    score_batches,
)
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
from batchml.store.storage import FileEntry, Storage

if TYPE_CHECKING:
    import lightgbm as lgb

log = logging.getLogger(__name__)
_DONE = object()
T = TypeVar("T")


@dataclass(frozen=True)
class Scorer:
    """One model version to score, with what predicts it and its scoring options."""

    model: ModelVersion
    booster: lgb.Booster
    engine: Engine | None
    options: ScoringOptions

    def score_parts(
        self,
        storage: Storage,
        prefix: str,
        batches: Iterator[SharedBatch],
        inputs: tuple[ScoringChecks, ScoringInput],
        stamp: dict[str, Any],
        *,
        shared: bool = True,
        progress: Progress | None = None,
    ) -> ScoredParts:
        """`pipeline.score_batches` for this version; `shared`: other versions read the same batches, so an
        encoding equal to theirs is computed once."""
        checks, scoring = inputs
        return score_batches(
            storage,
            prefix,
            batches,
            model=self.model,
            booster=self.booster,
            scoring=scoring,
            checks=checks,
            stamp=stamp,
            reasons=self.options.reasons,
            progress=progress,
            engine=self.engine,
            encoding_key=encoding_key(self.model, self.options) if shared else None,
        )


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


def fan_out(source: Iterator[SharedBatch], consumers: list[Callable[[Iterator[SharedBatch]], T]]) -> list[T]:
    """Run each consumer on its own thread over every batch of one read of `source`; their results, in order.

    A consumer that stops early (or fails) is dropped and the others carry on; the read is never waited on
    by a consumer that left.
    """
    fanout = _Fanout(source, len(consumers))

    def run(slot: int) -> T:
        try:
            return consumers[slot](fanout.consume(slot))
        finally:
            fanout.closed[slot].set()  # also when it failed before reading: the reader must not wait

    fanout.start()
    with ThreadPoolExecutor(len(consumers), thread_name_prefix="batchml-version") as pool:
        done = list(pool.map(run, range(len(consumers))))
    fanout.join()
    return done


def encoding_key(model: ModelVersion, options: ScoringOptions) -> str:
    """What decides which rows a version scores and how it encodes them: equal keys share the matrix."""
    features = [f.to_dict() for f in model.features]
    rules = {c: e.to_dict() for c, e in sorted(options.expectations.items())}
    target = str(model.card.get("target"))  # skipped by the checks: scoring needs no labels
    return json.dumps([str(model.card["entity_id"]), target, rules, features], sort_keys=True, default=str)


def checked_inputs(
    storage: Storage, dataset: DatasetVersion, entry: FileEntry, wanted: dict[int, tuple[Scorer, str]]
) -> dict[int, tuple[ScoringChecks, ScoringInput] | BatchMLError]:
    """Per scorer (with the id of the run it makes) its fresh checks and what it reads, after checking the
    schema of `entry`; or the error that stops it. The duplicate-id scan runs once per entity id column."""
    duplicates: dict[str, DuplicateIds] = {}
    found: dict[int, tuple[ScoringChecks, ScoringInput] | BatchMLError] = {}
    for i, (s, run_id) in wanted.items():
        checks = new_checks(s.model, dataset, s.options, run_id)
        entity_id = str(s.model.card["entity_id"])
        try:
            if entity_id not in duplicates:
                duplicates[entity_id] = find_duplicates(storage, dataset, entity_id)
            found[i] = checks, check_input(storage, s.model, dataset, entry, checks, duplicates[entity_id])
        except BatchMLError as exc:
            found[i] = exc
    return found


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
    inputs = {}
    wanted = {i: (scorers[i], run_id_of(keys[i])) for i in todo}
    for i, checked in checked_inputs(storage, dataset, dataset.files[0], wanted).items():
        if isinstance(checked, BatchMLError):
            results[i] = checked
            todo.remove(i)
        else:
            inputs[i] = checked
    if todo:
        columns = list(dict.fromkeys(c for i in todo for c in inputs[i][1].columns))
        source = (SharedBatch(b) for b in iter_batches(storage, dataset, columns, BATCH_ROWS))
        started, scored_at = now(), datetime.now(UTC)

        def run(i: int, batches: Iterator[SharedBatch]) -> PredictionRun | BatchMLError:
            s, checks = scorers[i], inputs[i][0]
            try:
                parts = s.score_parts(
                    storage,
                    f"runs/{s.model.name}/{run_id_of(keys[i])}/{uuid.uuid4().hex[:8]}",
                    batches,
                    inputs[i],
                    new_stamp(s.model, dataset, keys[i], scored_at),
                    progress=progress if i == 0 else None,
                )
            except BatchMLError as exc:
                log.warning("scoring %s on %s failed: %s", s.model.ref, dataset.ref, exc)
                return exc
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

        done = fan_out(source, [functools.partial(run, i) for i in todo])
        for i, result in zip(todo, done, strict=True):
            results[i] = result
    return [r for r in results if r is not None]
