"""Scoring one dataset version in partitions that can run in parallel, then committing them as one run.

    plan_partitions    contiguous row ranges over the version's Parquet row groups (deterministic)
    score_partition    scores one range into unreferenced parts `runs/<model>/<run_id>/p<i>-<nonce>-*`
    commit_partitions  merges the partitions' tallies in order, checks the limits on the totals, and creates
                       the same manifest (same run id) as the sequential `runs.score` would; its telemetry
                       sums the partitions' stage seconds (see `telemetry.merge`)

Each partition reads one row group at a time, so memory stays bounded; results are small picklable dicts.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from batchml.checks.validation import MAX_UNSEEN_EXAMPLES
from batchml.data.datasets import DatasetVersion
from batchml.models.lineage import code_version
from batchml.models.registry import ModelVersion
from batchml.scoring.engines import Engine
from batchml.scoring.pipeline import BATCH_ROWS, ScoredParts, check_input, score_batches
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
from batchml.store.eventlog import now
from batchml.store.storage import FileEntry, Storage

if TYPE_CHECKING:
    from collections.abc import Iterator

    import lightgbm as lgb
    import pyarrow as pa

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
    options = options or ScoringOptions()
    check_engine(options, engine)
    key, run_id = _run(model, dataset, options)
    if storage.exists(_manifest_path(model.name, run_id)) or not groups:
        return {"index": index, "files": [], "quarantine_files": [], "rows": 0, "tallies": {}}
    checks = new_checks(model, dataset, options, run_id)
    scoring = check_input(storage, model, dataset, dataset.files[groups[0][0]], checks)
    parts = score_batches(
        storage,
        f"runs/{model.name}/{run_id}/p{index:04d}-{uuid.uuid4().hex[:8]}",
        _batches(storage, dataset, groups, scoring.columns),
        model=model,
        booster=booster,
        scoring=scoring,
        checks=checks,
        stamp=new_stamp(model, dataset, key, datetime.fromisoformat(scored_at)),
        reasons=options.reasons,
        engine=engine,
    )
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


def new_scored_at() -> str:
    """The timestamp every partition of one run stamps on its rows."""
    return datetime.now(UTC).isoformat()
