"""Scoring one dataset version in partitions that can run in parallel, then committing them as one run.

    plan_partitions    contiguous row ranges over the version's Parquet row groups (deterministic)
    score_partition    scores one range into unreferenced parts `runs/<model>/<run_id>/p<i>-<nonce>-*`
    commit_partitions  merges the partitions' tallies in order, checks the limits on the totals, and creates
                       the same manifest (same run id) as the sequential `runs.score` would; its telemetry
                       sums the partitions' stage seconds (see `telemetry.merge`)

Each partition reads one row group at a time, so memory stays bounded; results are small picklable dicts.
The `_together` variants score several versions (the champion, its shadows, its canary) from one read of
each partition, as `together.score_together` does for a whole version, and commit each version's run.
"""

from __future__ import annotations

import functools
import logging
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from batchml.checks.validation import MAX_UNSEEN_EXAMPLES, ScoringChecks
from batchml.data.datasets import DatasetVersion
from batchml.errors import BatchMLError
from batchml.models.lineage import code_version
from batchml.models.registry import ModelVersion
from batchml.scoring.engines import Engine
from batchml.scoring.pipeline import BATCH_ROWS, ScoredParts, SharedBatch
from batchml.scoring.run_checksum import combined
from batchml.scoring.runs import (
    PredictionRun,
    ScoringOptions,
    _manifest_path,
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
from batchml.scoring.telemetry import merge
from batchml.scoring.together import Scorer, checked_inputs, fan_out
from batchml.store.eventlog import now
from batchml.store.storage import FileEntry, Storage

if TYPE_CHECKING:
    from collections.abc import Iterator

    import lightgbm as lgb
    import pyarrow as pa

log = logging.getLogger(__name__)
_COUNTERS = ("by_rule", "warned", "nulls", "unseen", "other", "out_of_range")


def plan_partitions(storage: Storage, dataset: DatasetVersion, partitions: int) -> list[list[list[int]]]:
    """`partitions` contiguous, near-equal row ranges of the version, each a list of
    `[file index, row group, start, stop]` (rows of one row group; so memory stays bounded by a row group).
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    groups: list[tuple[int, int, int]] = []
    for i, entry in enumerate(dataset.files):
        with storage.open_read(entry.path) as f:
            meta = pq.ParquetFile(f).metadata
            groups += [(i, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    total = sum(n for _, _, n in groups)
    bounds = [total * p // partitions for p in range(partitions + 1)]
    plan: list[list[list[int]]] = [[] for _ in range(partitions)]
    offset = 0
    for i, g, n in groups:
        for p in range(partitions):
            start, stop = max(bounds[p], offset), min(bounds[p + 1], offset + n)
            if start < stop:
                plan[p].append([i, g, start - offset, stop - offset])
        offset += n
    return plan


def _run(model: ModelVersion, dataset: DatasetVersion, options: ScoringOptions) -> tuple[dict[str, Any], str]:
    key = run_key(model, dataset, code_version(), options)
    return key, run_id_of(key)


def _batches(
    storage: Storage, dataset: DatasetVersion, ranges: list[list[int]], columns: list[str]
) -> Iterator[pa.RecordBatch]:
    verified: set[int] = set()
    for i, g, start, stop in ranges:
        entry = dataset.files[i]
        if i not in verified:
            storage.verify(entry)
            verified.add(i)
        with storage.open_read(entry.path) as f:
            table = pq.ParquetFile(f).read_row_group(g, columns=columns).slice(start, stop - start)
        yield from table.to_batches(max_chunksize=BATCH_ROWS)


def score_partition(
    storage: Storage,
    model: ModelVersion,
    booster: lgb.Booster,
    dataset: DatasetVersion,
    groups: list[list[int]],
    *,
    index: int,
    scored_at: str,
    options: ScoringOptions | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Score the row ranges `groups` of `dataset` into unreferenced parts; their entries and tallies.

    `engine` predicts (default: the booster's own predict); it must be the engine `options` names.
    """
    scorer = Scorer(model, booster, engine, options or ScoringOptions())
    return score_partition_together(storage, [scorer], dataset, groups, index=index, scored_at=scored_at)[0]


def score_partition_together(
    storage: Storage,
    scorers: list[Scorer],
    dataset: DatasetVersion,
    groups: list[list[int]],
    *,
    index: int,
    scored_at: str,
) -> list[dict[str, Any]]:
    """Score the row ranges `groups` with every scorer from one read of them (as `score_together` does for
    a whole version): per scorer, what `score_partition` returns, or `{"index", "error"}` when that
    version's scoring failed. The first scorer's failure is raised: the served version's run needs it."""
    # A run already committed (or an empty range) needs no parts.
    results = [
        {"index": index, "files": [], "quarantine_files": [], "rows": 0, "tallies": {}} for _ in scorers
    ]
    keys, wanted = {}, {}
    for i, s in enumerate(scorers):
        check_engine(s.options, s.engine)
        keys[i], run_id = _run(s.model, dataset, s.options)
        if groups and not storage.exists(_manifest_path(s.model.name, run_id)):
            wanted[i] = s, run_id
    if not wanted:
        return results
    inputs = {}
    for i, checked in checked_inputs(storage, dataset, dataset.files[groups[0][0]], wanted).items():
        if isinstance(checked, BatchMLError):
            results[i] = _failed(scorers[i], dataset, index, i, checked)
        else:
            inputs[i] = checked
    if not inputs:
        return results
    columns = list(dict.fromkeys(c for _, scoring in inputs.values() for c in scoring.columns))
    source = (SharedBatch(b) for b in _batches(storage, dataset, groups, columns))
    shared = len(inputs) > 1  # alone, input hashes are computed by the predict workers, not the encoder

    def run(i: int, batches: Iterator[SharedBatch]) -> dict[str, Any]:
        s, run_id = wanted[i]
        prefix = f"runs/{s.model.name}/{run_id}/p{index:04d}-{uuid.uuid4().hex[:8]}"
        stamp = new_stamp(s.model, dataset, keys[i], datetime.fromisoformat(scored_at))
        try:
            parts = s.score_parts(storage, prefix, batches, inputs[i], stamp, shared=shared)
        except BatchMLError as exc:
            return _failed(s, dataset, index, i, exc)
        return _scored(index, parts, inputs[i][0])

    for i, result in zip(inputs, fan_out(source, [functools.partial(run, i) for i in inputs]), strict=True):
        results[i] = result
    return results


def _failed(
    scorer: Scorer, dataset: DatasetVersion, index: int, slot: int, exc: BatchMLError
) -> dict[str, Any]:
    if slot == 0:
        raise exc
    log.warning("scoring %s on partition %d of %s failed: %s", scorer.model.ref, index, dataset.ref, exc)
    return {"index": index, "error": str(exc)}


def _scored(index: int, parts: ScoredParts, checks: ScoringChecks) -> dict[str, Any]:
    tallies: dict[str, Any] = {c: [[k, n] for k, n in getattr(checks, c).items()] for c in _COUNTERS}
    tallies.update(
        rows_in=checks.rows_in,
        quarantined=checks.quarantined,
        flagged=checks.flagged,
        duplicate_ids=checks.duplicate_ids,
        unseen_examples=checks.unseen_examples,
    )
    return {
        "index": index,
        "files": [e.to_dict() for e in parts.files],
        "quarantine_files": [e.to_dict() for e in parts.quarantine_files],
        "rows": parts.rows,
        "tallies": tallies,
        "telemetry": parts.telemetry,
        "checksum": parts.checksum,
    }


def _key(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


def _merged_parts(results: list[dict[str, Any]]) -> ScoredParts:
    return ScoredParts(
        files=[FileEntry.from_dict(f) for r in results for f in r["files"]],
        quarantine_files=[FileEntry.from_dict(f) for r in results for f in r["quarantine_files"]],
        rows=sum(int(r["rows"]) for r in results),
        checksum=combined([r.get("checksum") for r in results if r["files"]]),
    )


def commit_partitions(
    storage: Storage,
    model: ModelVersion,
    dataset: DatasetVersion,
    results: list[dict[str, Any]],
    *,
    scored_at: str,
    started_at: str | None = None,
    options: ScoringOptions | None = None,
) -> PredictionRun:
    """Merge partition `results` (in partition order) into one committed run, or return the existing run.

    The limits are checked on the merged totals; on failure every part is removed and DataError raised.
    """
    options = options or ScoringOptions()
    key, run_id = _run(model, dataset, options)
    results = sorted(results, key=lambda r: int(r["index"]))
    parts = _merged_parts(results)
    if storage.exists(_manifest_path(model.name, run_id)):
        delete_parts(storage, parts)
        return PredictionRun(get_run(storage, model.name, run_id).manifest, reused=True)
    checks = new_checks(model, dataset, options, run_id)
    for result in results:
        t = result["tallies"]
        if not t:
            continue
        for c in _COUNTERS:
            getattr(checks, c).update({_key(k): n for k, n in t[c]})
        checks.rows_in += t["rows_in"]
        checks.quarantined += t["quarantined"]
        checks.flagged += t["flagged"]
        checks.duplicate_ids = t["duplicate_ids"]  # found over the whole version, the same in every partition
        for column, values in t["unseen_examples"].items():
            seen = checks.unseen_examples.setdefault(column, [])
            seen += [v for v in values if v not in seen][: MAX_UNSEEN_EXAMPLES - len(seen)]
    try:
        checks.check_limits()
        if not parts.files:
            raise no_rows_error(dataset, checks)
    except BaseException:
        delete_parts(storage, parts)
        raise
    return commit_run(
        storage,
        key,
        model,
        parts,
        checks.summary(),
        started_at=started_at or now(),
        scored_at=scored_at,
        partitions=len(results),
        telemetry=merge([r.get("telemetry") or {} for r in results], parts.rows),
        **engine_facts(options),
    )


def commit_partitions_together(
    storage: Storage,
    versions: list[tuple[ModelVersion, ScoringOptions]],
    dataset: DatasetVersion,
    results: list[list[dict[str, Any]]],
    *,
    scored_at: str,
    started_at: str | None = None,
) -> list[PredictionRun | BatchMLError]:
    """Commit each version's parts (`results[partition][version]`, from `score_partition_together`) as its
    own run, as `commit_partitions` does; per version its run, or the error that stopped it (a version
    that failed in any partition: its parts in the others are removed). The first version's error is
    raised."""
    runs: list[PredictionRun | BatchMLError] = []
    for i, (model, options) in enumerate(versions):
        mine = [r[i] for r in results]
        errors = [r["error"] for r in mine if "error" in r]
        try:
            if errors:
                delete_parts(storage, _merged_parts([r for r in mine if "error" not in r]))
                raise BatchMLError(errors[0])
            runs.append(
                commit_partitions(
                    storage, model, dataset, mine, scored_at=scored_at, started_at=started_at, options=options
                )
            )
        except BatchMLError as exc:
            if i == 0:
                raise
            runs.append(exc)
    return runs


def new_scored_at() -> str:
    """The timestamp every partition of one run stamps on its rows."""
    return datetime.now(UTC).isoformat()
