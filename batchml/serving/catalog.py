"""The catalog tables of the serving database, derived from manifests and event logs in storage.

Storage is the truth (DESIGN.md invariant 2): every row here is rebuilt from the JSON records, so a serving
file can be thrown away and built again at any time.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pyarrow as pa

from batchml import provenance
from batchml.data import datasets
from batchml.models.registry import RegistryReader
from batchml.monitoring import alerts, drift, performance, reports, shadow
from batchml.scoring.publications import PublicationLog
from batchml.scoring.runs import PredictionRun, list_runs
from batchml.scoring.telemetry import STAGES
from batchml.serving import experiment_results, experiments, publish_timing
from batchml.store.eventlog import apply_event
from batchml.store.storage import Storage

_TS = pa.timestamp("us", tz="UTC")
# The flow run that wrote a record (`batchml.provenance`): NULL outside a flow and in records older than it.
_FLOW_RUN = [(field, pa.string()) for field in provenance.FIELDS]


def _flow_run(record: dict[str, Any]) -> dict[str, Any]:
    return {field: record.get(field) for field in provenance.FIELDS}


SCHEMAS: dict[str, pa.Schema] = {
    "datasets": pa.schema(
        [
            ("name", pa.string()),
            ("version", pa.string()),
            ("ref", pa.string()),
            ("created_at", _TS),
            ("created_by", pa.string()),
            ("rows", pa.int64()),
            ("columns", pa.int64()),
            ("bytes", pa.int64()),
            ("source", pa.string()),
            ("parent", pa.string()),
            ("schema_json", pa.string()),
        ]
    ),
    "models": pa.schema(
        [
            ("model", pa.string()),
            ("version", pa.int64()),
            ("created_at", _TS),
            ("created_by", pa.string()),
            ("host", pa.string()),
            ("task", pa.string()),
            ("dataset_version", pa.string()),
            ("metrics_json", pa.string()),
            ("params_json", pa.string()),
            ("features", pa.list_(pa.string())),
            ("model_sha256", pa.string()),
            ("git_commit", pa.string()),
            ("git_dirty", pa.bool_()),
            ("origin", pa.string()),
            *_FLOW_RUN,
        ]
    ),
    "alias_events": pa.schema(
        [
            ("model", pa.string()),
            ("seq", pa.int64()),
            ("alias", pa.string()),
            ("action", pa.string()),
            ("from_version", pa.int64()),
            ("to_version", pa.int64()),
            ("version_after", pa.int64()),  # what the alias holds after this event, by replaying the log
            ("reason", pa.string()),
            ("by", pa.string()),
            ("at", _TS),
            ("forced", pa.bool_()),
            ("automatic", pa.bool_()),  # a canary rollback batchml decided (a breach), not a person
            *_FLOW_RUN,
        ]
    ),
    "gate_results": pa.schema(
        [
            ("model", pa.string()),
            ("version", pa.int64()),
            ("gate", pa.string()),
            ("name", pa.string()),
            ("value", pa.float64()),
            ("threshold", pa.float64()),
            ("passed", pa.bool_()),
            ("detail", pa.string()),
        ]
    ),
    "model_aliases": pa.schema(
        [("model", pa.string()), ("alias", pa.string()), ("version", pa.int64()), ("since", _TS)]
    ),
    "runs": pa.schema(
        [
            ("run_id", pa.string()),
            ("model", pa.string()),
            ("model_version", pa.int64()),
            ("dataset_version", pa.string()),
            ("code_version", pa.string()),
            ("rows", pa.int64()),
            ("started_at", _TS),
            ("finished_at", _TS),
            ("user", pa.string()),
            ("host", pa.string()),
            ("published", pa.bool_()),
            ("quarantined", pa.int64()),  # rows that broke a hard expectation (not scored)
            ("flagged", pa.int64()),  # scored rows with an unseen category or out-of-range value
            ("summary_json", pa.string()),  # the manifest's run summary
            *_FLOW_RUN,
            # Where its scoring spent its time (busy seconds per stage, see `batchml.scoring.telemetry`);
            # NULLs for runs committed before telemetry was recorded. `run_stats` shows them.
            *((f"{stage}_s", pa.float64()) for stage in STAGES),
            ("wall_s", pa.float64()),
            ("threads", pa.int64()),
            ("rows_per_s", pa.float64()),
            ("peak_rss_mib", pa.float64()),
        ]
    ),
    # One row per publication event a build first served: the build's seconds (see `publish_timing`).
    "publish_timings": pa.schema(
        [
            ("model", pa.string()),
            ("seq", pa.int64()),  # the publication event (`publications.seq`)
            ("action", pa.string()),  # publish or rollback
            ("run_id", pa.string()),  # the run the event made current
            ("publish_s", pa.float64()),
            ("serving_file", pa.string()),  # the serving file whose build it was
            ("built_at", _TS),
        ]
    ),
    "publications": pa.schema(
        [
            ("model", pa.string()),
            ("seq", pa.int64()),
            ("action", pa.string()),
            ("run_id", pa.string()),
            ("from_run_id", pa.string()),
            ("reason", pa.string()),
            ("by", pa.string()),
            ("at", _TS),
            *_FLOW_RUN,
        ]
    ),
}


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _table(name: str, rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMAS[name])


def dataset_rows(storage: Storage) -> list[dict[str, Any]]:
    """One row per dataset version."""
    return [
        {
            "name": v.name,
            "version": v.version,
            "ref": v.ref,
            "created_at": _ts(v.created_at),
            "created_by": v.created_by,
            "rows": v.rows,
            "columns": len(v.schema),
            "bytes": sum(f.size for f in v.files),
            "source": v.source,
            "parent": v.parent,
            "schema_json": json.dumps(v.schema),
        }
        for name in datasets.list_datasets(storage)
        for v in datasets.list_versions(storage, name)
    ]


def model_rows(registry: RegistryReader) -> list[dict[str, Any]]:
    """One row per model version."""
    rows = []
    for name in registry.list_models():
        for m in registry.list_versions(name):
            card = m.card
            rows.append(
                {
                    "model": name,
                    "version": m.version,
                    "created_at": _ts(card.get("created_at")),
                    "created_by": card.get("user"),
                    "host": card.get("host"),
                    "task": m.task,
                    "dataset_version": card.get("dataset_version"),
                    "metrics_json": json.dumps(card.get("metrics", {})),
                    "params_json": json.dumps(card.get("params", {})),
                    "features": [f.name for f in m.features],
                    "model_sha256": m.model_file.sha256,
                    "git_commit": card.get("git", {}).get("commit"),
                    "git_dirty": card.get("git", {}).get("dirty"),
                    "origin": card.get("origin"),
                    **_flow_run(card),
                }
            )
    return rows


def gate_rows(registry: RegistryReader) -> list[dict[str, Any]]:
    """One row per gate check of every model version (passed is NULL for a skipped check)."""
    return [
        {**check, "model": name, "version": m.version}
        for name in registry.list_models()
        for m in registry.list_versions(name)
        for check in (m.card.get("gates") or {}).get("checks", [])
    ]


def alias_rows(registry: RegistryReader) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`alias_events` and `model_aliases` rows from one replay of each model's log, so they always agree.

    `version_after` of each event is what its alias holds after it (what `alias_at` answers); the holders
    after the last event are `model_aliases`, as `RegistryReader.aliases` replays them.
    """
    events, aliases = [], []
    for name in registry.list_models():
        stacks: dict[str, list[Any]] = {}
        since: dict[str, str] = {}
        for e in registry.events(name):
            stack = apply_event(stacks, e, group="alias", value="to_version")
            since[e["alias"]] = max(since.get(e["alias"], e["at"]), e["at"])
            events.append(
                {
                    **e,
                    "model": name,
                    "version_after": stack[-1] if stack else None,
                    "at": _ts(e["at"]),
                    "forced": bool(e.get("forced")),
                    "automatic": bool(e.get("automatic")),
                }
            )
        aliases += [
            {"model": name, "alias": alias, "version": stack[-1], "since": _ts(since[alias])}
            for alias, stack in sorted(stacks.items())
            if stack
        ]
    return events, aliases


def telemetry_columns(run: PredictionRun) -> dict[str, Any]:
    """The telemetry columns of `run`'s `runs` row (NULL when its manifest has none)."""
    t = run.telemetry
    seconds = t.get("seconds") or {}
    return {
        **{f"{stage}_s": seconds.get(stage) for stage in STAGES},
        "wall_s": t.get("wall_seconds"),
        "threads": t.get("threads"),
        "rows_per_s": t.get("rows_per_s"),
        "peak_rss_mib": t.get("peak_rss_mib"),
    }


def publish_timing_rows(publications: PublicationLog) -> list[dict[str, Any]]:
    """Every publish timing record in storage (the `publish_timings` rows of earlier builds)."""
    rows = []
    for model in publications.models():
        folder = publish_timing.FOLDER.format(model=model)
        for name in publications.storage.list_dir(folder):
            if name.endswith(".json"):
                record = publications.storage.read_json(f"{folder}/{name}")
                rows.append({**record, "built_at": _ts(record["built_at"])})
    return rows


def build_tables(storage: Storage) -> dict[str, pa.Table]:
    """Every catalog table, from storage."""
    registry = RegistryReader(storage)
    publications = PublicationLog(storage)
    runs, pubs = [], []
    events, aliases = alias_rows(registry)
    for name in publications.models():
        pubs += [{**e, "at": _ts(e["at"])} for e in publications.events(name)]
    for name in storage.list_dir("runs"):
        current = publications.current(name)
        for run in list_runs(storage, name):
            m = run.manifest
            runs.append(
                {
                    **{
                        k: m[k]
                        for k in (
                            "run_id",
                            "model",
                            "model_version",
                            "dataset_version",
                            "code_version",
                            "rows",
                        )
                    },
                    "started_at": _ts(m["started_at"]),
                    "finished_at": _ts(m["finished_at"]),
                    "user": m.get("user"),
                    "host": m.get("host"),
                    "published": run.run_id == current,
                    "quarantined": run.summary.get("quarantined"),
                    "flagged": run.summary.get("flagged"),
                    "summary_json": json.dumps(run.summary) if run.summary else None,
                    **_flow_run(m),
                    **telemetry_columns(run),
                }
            )
    return {
        "datasets": _table("datasets", dataset_rows(storage)),
        "models": _table("models", model_rows(registry)),
        "alias_events": _table("alias_events", events),
        "gate_results": _table("gate_results", gate_rows(registry)),
        "model_aliases": _table("model_aliases", aliases),
        "runs": _table("runs", runs),
        "publish_timings": _table("publish_timings", publish_timing_rows(publications)),
        "publications": _table("publications", pubs),
        "performance_metrics": performance.performance_table(storage),
        **alerts.catalog_tables(storage),
        **shadow.catalog_tables(storage),
        **experiments.catalog_tables(storage),
        **experiment_results.catalog_tables(storage),
        **drift.catalog_tables(storage),
        **reports.catalog_tables(storage),
    }
