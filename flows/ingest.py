"""Snapshot a dataset: source file(s) -> an immutable, content-hashed dataset version."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

import batchml
from flows.common import artifact_key, batch_task, config_ref, markdown_table, open_project, report


@batch_task
def snapshot(name: str, source: str | None, config: str | None) -> dict[str, Any]:
    """Snapshot `source` (default: the configured one) as a version of `name`; return its reference."""
    version = batchml.snapshot_dataset(open_project(config), name, source)
    return {
        "dataset": version.ref,
        "name": version.name,
        "version": version.version,
        "rows": version.rows,
        "columns": len(version.columns),
        "source": version.source,
        "reused": version.reused,
    }


@flow(name="snapshot-dataset")
def snapshot_dataset(name: str, source: str | None = None, config: str | None = None) -> dict[str, Any]:
    """Snapshot dataset `name` from `source` (default: `[datasets.NAME] source` in the config)."""
    logger = get_run_logger()
    result = snapshot(name, source, config_ref(config))
    state = "reused existing version" if result["reused"] else "committed new version"
    logger.info(
        "dataset %s: %s (%d rows, %d columns)", result["dataset"], state, result["rows"], result["columns"]
    )
    report(
        artifact_key("dataset", name),
        f"Dataset snapshot {result['dataset']}",
        f"{state.capitalize()} **{result['dataset']}**: {result['rows']:,} rows, "
        f"{result['columns']} columns, from `{result['source']}`.\n\n" + markdown_table([result]),
    )
    return result
