"""Scoring one dataset version in partitions that can run in parallel, then committing them as one run.

    plan_partitions    contiguous row ranges over the version's Parquet row groups (deterministic)
    score_partition    scores one range into unreferenced parts `runs/<model>/<run_id>/p<i>-<nonce>-*`
    commit_partitions  merges the partitions' tallies in order, checks the limits on the totals, and creates
                       the same manifest (same run id) as the sequential `scoring.score` would

Each partition reads one row group at a time, so memory stays bounded; results are small picklable dicts.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from batchml.datasets import DatasetVersion
from batchml.errors import ConflictError, DataError, SchemaError
from batchml.eventlog import now
from batchml.features import check_input_schema
from batchml.lineage import actor, code_version
from batchml.parts import write_parquet_parts
from batchml.prefetch import prefetch
from batchml.registry import ModelVersion
from batchml.scoring import (
    BATCH_ROWS,
    ROWS_PER_FILE,
    PredictionRun,
    ScoringOptions,
    _encoded_batches,
    _manifest_path,
    _scored_batches,
    get_run,
    output_schema,
    run_id_of,
    run_key,
)
from batchml.storage import FileEntry, Storage
from batchml.validation import MAX_UNSEEN_EXAMPLES, QuarantineWriter, ScoringChecks

if TYPE_CHECKING:
    from collections.abc import Iterator

    import lightgbm as lgb
    import pyarrow as pa

_COUNTERS = ("by_rule", "warned", "nulls", "unseen", "out_of_range")


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


def _checks(
    model: ModelVersion, options: ScoringOptions, dataset: DatasetVersion, run_id: str
) -> ScoringChecks:
    return ScoringChecks(
        expectations=options.expectations,
        max_quarantine_share=options.max_quarantine_share,
        features=model.features,
        profile=model.card.get("profile") or {},
        total_rows=dataset.rows,
        model=model.name,
        run_id=run_id,
        skip=(str(model.card.get("target")),),
    )


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
) -> dict[str, Any]:
    """Score the row ranges `groups` of `dataset` into unreferenced parts; their entries and tallies."""
    options = options or ScoringOptions()
    key, run_id = _run(model, dataset, options)
    if storage.exists(_manifest_path(model.name, run_id)) or not groups:
        return {"index": index, "files": [], "quarantine_files": [], "rows": 0, "tallies": {}}
    entity_id = str(model.card["entity_id"])
    entry = dataset.files[groups[0][0]]
    storage.verify(entry)
    with storage.open_read(entry.path) as f:
        input_schema = pq.read_schema(f)
    if entity_id not in input_schema.names:
        raise SchemaError(f"dataset {dataset.ref} has no entity id column {entity_id!r}", input_schema.names)
    check_input_schema(input_schema, model.features)
    checks = _checks(model, options, dataset, run_id)
    checks.check_schema(input_schema, f"dataset {dataset.ref}")
    schema = output_schema(input_schema.field(entity_id).type)
    constants: dict[str, Any] = {
        "model": model.name,
        "model_version": model.version,
        "dataset_version": dataset.ref,
        "code_version": key["code_version"],
        "run_id": run_id,
        "scored_at": datetime.fromisoformat(scored_at),
    }
    columns = list(dict.fromkeys([entity_id, *(f.name for f in model.features), *checks.columns]))
    prefix = f"runs/{model.name}/{run_id}/p{index:04d}-{uuid.uuid4().hex[:8]}"
    quarantine = QuarantineWriter(storage, f"{prefix}-quarantine")
    batches = _batches(storage, dataset, groups, columns)
    encoded = prefetch(_encoded_batches(batches, model, entity_id, checks, quarantine))
    scored = prefetch(_scored_batches(encoded, booster, model, schema, constants, options))
    rows = 0

    def count(n: int) -> None:
        nonlocal rows
        rows += n

    try:
        files = write_parquet_parts(
            storage, prefix, scored, schema, rows_per_file=ROWS_PER_FILE, progress=count
        )
        quarantine.flush()
    except BaseException:
        for stage in (scored, encoded):
            getattr(stage, "close", lambda: None)()
        quarantine.delete()
        raise
    tallies: dict[str, Any] = {c: [[k, n] for k, n in getattr(checks, c).items()] for c in _COUNTERS}
    tallies.update(
        rows_in=checks.rows_in,
        quarantined=checks.quarantined,
        flagged=checks.flagged,
        unseen_examples=checks.unseen_examples,
    )
    return {
        "index": index,
        "files": [e.to_dict() for e in files],
        "quarantine_files": [e.to_dict() for e in quarantine.files],
        "rows": rows,
        "tallies": tallies,
    }


def _key(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


def _delete_parts(storage: Storage, results: list[dict[str, Any]]) -> None:
    for result in results:
        for f in result["files"] + result["quarantine_files"]:
            storage.delete(f["path"])


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
    if storage.exists(_manifest_path(model.name, run_id)):
        _delete_parts(storage, results)
        return PredictionRun(get_run(storage, model.name, run_id).manifest, reused=True)
    checks = _checks(model, options, dataset, run_id)
    for result in results:
        t = result["tallies"]
        if not t:
            continue
        for c in _COUNTERS:
            getattr(checks, c).update({_key(k): n for k, n in t[c]})
        checks.rows_in += t["rows_in"]
        checks.quarantined += t["quarantined"]
        checks.flagged += t["flagged"]
        for column, values in t["unseen_examples"].items():
            seen = checks.unseen_examples.setdefault(column, [])
            seen += [v for v in values if v not in seen][: MAX_UNSEEN_EXAMPLES - len(seen)]
    files = [FileEntry.from_dict(f) for r in results for f in r["files"]]
    try:
        checks.check_limits()
        if not files:
            raise DataError(
                f"dataset {dataset.ref} has no rows to score"
                + (f": all {checks.rows_in:,} rows broke hard expectations" if checks.rows_in else "")
            )
    except BaseException:
        _delete_parts(storage, results)
        raise
    manifest = {
        "kind": "prediction_run",
        "run_id": run_id,
        "key": key,
        **{k: key[k] for k in ("model", "model_version", "dataset_version", "code_version")},
        "entity_id_column": str(model.card["entity_id"]),
        "task": model.task,
        "rows": sum(int(r["rows"]) for r in results),
        "files": [f.to_dict() for f in files],
        "quarantine_files": [f for r in results for f in r["quarantine_files"]],
        "summary": checks.summary(),
        "partitions": len(results),
        "started_at": started_at or now(),
        "finished_at": now(),
        "scored_at": scored_at,
        **actor(),
    }
    try:
        storage.create_json(_manifest_path(model.name, run_id), manifest)
    except ConflictError:  # a concurrent run of the same work won: keep theirs
        _delete_parts(storage, results)
        return PredictionRun(get_run(storage, model.name, run_id).manifest, reused=True)
    return PredictionRun(manifest)


def new_scored_at() -> str:
    """The timestamp every partition of one run stamps on its rows."""
    return datetime.now(UTC).isoformat()
