"""Delayed labels: a dataset of (entity id, label, label time) per model, versioned like any other dataset.

`[models.NAME.monitoring.labels]` names the labels dataset and its columns. Ingesting checks that the
columns exist before anything is stored, then snapshots the source (same bytes again: no new version).
"""

from __future__ import annotations

import logging

from batchml.config import LabelsConfig
from batchml.data import datasets
from batchml.data.datasets import DatasetVersion
from batchml.data.sources import read_source, resolve_source
from batchml.errors import ConfigError, NotFoundError, SchemaError
from batchml.names import check_name
from batchml.project import Project
from batchml.store.storage import Storage

log = logging.getLogger(__name__)


def labels_configs(project: Project, dataset: str) -> dict[str, LabelsConfig]:
    """Model name -> its labels config, for every model whose labels come from `dataset`."""
    return {
        name: spec.monitoring.labels
        for name, spec in sorted(project.config.models.items())
        if spec.monitoring.labels is not None and spec.monitoring.labels.dataset == dataset
    }


def required_columns(config: LabelsConfig) -> list[str]:
    """The columns a labels dataset must have: entity id, label, label time."""
    return list(dict.fromkeys([config.entity_id, config.label, config.label_time]))


def check_label_columns(columns: list[str], configs: dict[str, LabelsConfig], where: str) -> None:
    """Raise SchemaError naming each configured column that `columns` lack (and which model wants it)."""
    problems = [
        f"model {model!r} needs column {column!r} ({role})"
        for model, config in configs.items()
        for column, role in zip(
            [config.entity_id, config.label, config.label_time],
            ["entity id", "label", "label time"],
            strict=True,
        )
        if column not in columns
    ]
    if problems:
        raise SchemaError(f"labels {where} lack configured columns; found {columns}", problems)


def ingest(project: Project, name: str, source: str) -> DatasetVersion:
    """Snapshot `source` as a version of labels dataset `name`, after checking the configured columns."""
    check_name("dataset", name)
    configs = labels_configs(project, name)
    if not configs:
        wanted = sorted(
            {s.monitoring.labels.dataset for s in project.config.models.values() if s.monitoring.labels}
        )
        raise ConfigError(
            f"no model takes labels from dataset {name!r}: set [models.NAME.monitoring.labels] dataset = "
            f"{name!r}; labels datasets configured: {', '.join(wanted) or 'none'}"
        )
    source = project.resolve_source(source)
    configured = project.config.datasets.get(name)
    resolved = resolve_source(
        source, configured.format if configured else None, project.storage.options_for(source)
    )
    schema, _ = read_source(resolved)
    check_label_columns(schema.names, configs, f"source {source!r}")
    version = datasets.snapshot(project.storage, name, source, file_format=resolved.format)
    log.info("labels %s: version %s (%d rows)", name, version.version, version.rows)
    return version


def latest_labels(storage: Storage, config: LabelsConfig) -> DatasetVersion | None:
    """The newest version of the labels dataset, or None when none was ingested yet."""
    try:
        return datasets.get_version(storage, f"{config.dataset}@latest")
    except NotFoundError:
        return None
