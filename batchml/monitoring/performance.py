"""Performance with delayed labels: join each label to the prediction that was published when it arrived.

For a label (entity, label, label time) the run published for the model at the label time is found by
replaying the publication events up to that time; that run's prediction for the entity is read from the
run's Parquet files (DuckDB, streaming: only the labelled entities are kept). Metrics (`training.evaluate`)
per model version, run, period of the label time and configured slice go to

    monitoring/<model>/performance/<labels-version>.json      written once (put-if-absent); a rerun loads it

A group with fewer than `min_rows` rows is reported but not judged; the configured metric is `degraded` when
it is worse than the model version's validation metric (model card) by more than `max_drop`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from batchml.config import LabelsConfig, ModelSpec, Task
from batchml.data import datasets
from batchml.data.datasets import DatasetVersion
from batchml.data.labels import check_label_columns
from batchml.errors import ConfigError, ConflictError, DataError, SchemaError
from batchml.models.registry import ModelVersion, RegistryReader
from batchml.scoring.publications import PublicationLog
from batchml.scoring.runs import get_run
from batchml.store.eventlog import now, replay_stacks
from batchml.store.storage import Storage

log = logging.getLogger(__name__)

HIGHER_IS_BETTER = frozenset({"auc", "accuracy", "r2"})
ALL = "all"
_UTC = pl.Datetime("us", "UTC")


@dataclass(frozen=True)
class PerformanceResult:
    """Metrics of one labels version against the predictions published at label time."""

    record: dict[str, Any]
    reused: bool = False

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One row per (model version, run, period, slice, slice value, metric)."""
        return list(self.record["rows"])

    @property
    def degraded(self) -> list[dict[str, Any]]:
        """The judged rows whose metric dropped beyond `max_drop`."""
        return [r for r in self.rows if r["degraded"]]


def result_path(model: str, labels_version: str) -> str:
    """Where the performance record of a labels version is stored."""
    return f"monitoring/{model}/performance/{labels_version}.json"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _to_utc(column: pl.Series) -> pl.Series:
    """Label times as UTC datetimes: dates are midnight UTC, naive times are taken as UTC."""
    if column.dtype == pl.String:
        column = column.str.to_datetime(time_unit="us")
    if column.dtype == pl.Date:
        column = column.cast(pl.Datetime("us"))
    if not isinstance(column.dtype, pl.Datetime):
        raise DataError(f"label time column {column.name!r} is {column.dtype}: use a date or timestamp")
    if column.dtype.time_zone is None:
        return column.dt.replace_time_zone("UTC").dt.cast_time_unit("us")
    return column.dt.convert_time_zone("UTC").dt.cast_time_unit("us")


def publication_timeline(storage: Storage, model: str) -> pl.DataFrame:
    """(at, run_id): which run was published from each publication event on (run_id null: none)."""
    events = PublicationLog(storage).events(model)
    rows = []
    for event in events:
        at = datetime.fromisoformat(event["at"])
        stack = replay_stacks(events, group="model", value="run_id", until=at).get(model, [])
        rows.append({"at": at, "run_id": stack[-1] if stack else None})
    return pl.DataFrame(rows, schema={"at": _UTC, "run_id": pl.String}).sort("at")


def _literal(text: str) -> str:
    """`text` as a SQL string literal (a storage root may contain a quote)."""
    return "'" + text.replace("'", "''") + "'"


def _connect(storage: Storage) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    if not storage.is_local:
        con.register_filesystem(storage.fs)
    return con


def join_run(
    storage: Storage, model: str, run_id: str, labels: pl.DataFrame, slices: list[str]
) -> pl.DataFrame:
    """The labelled rows of one run with its prediction (and the slice columns of its scored dataset)."""
    run = get_run(storage, model, run_id)
    for entry in run.files:
        storage.verify(entry)
    files = ", ".join(_literal(storage.uri(e.path)) for e in run.files)
    sql = (
        "SELECT l.*, p.prediction, p.predicted_class, p.model_version "
        f"FROM _labels l JOIN read_parquet([{files}]) p ON CAST(p.entity_id AS VARCHAR) = l.entity"
    )
    if slices:
        version = datasets.get_version(storage, run.manifest["dataset_version"])
        missing = [c for c in slices if c not in version.columns]
        if missing:
            raise SchemaError(f"dataset {version.ref} scored by run {run_id} lacks slice columns {missing}")
        for entry in version.files:
            storage.verify(entry)
        data = ", ".join(_literal(storage.uri(e.path)) for e in version.files)
        picked = ", ".join(f"CAST({_quote(c)} AS VARCHAR) AS {_quote('slice:' + c)}" for c in slices)
        entity = _quote(str(run.manifest["entity_id_column"]))
        sql = (
            f"SELECT j.*, {', '.join('d.' + _quote('slice:' + c) for c in slices)} FROM ({sql}) j LEFT JOIN "
            f"(SELECT CAST({entity} AS VARCHAR) AS entity, {picked} FROM read_parquet([{data}])) d "
            "USING (entity)"
        )
    con = _connect(storage)
    try:
        con.register("_labels", labels.to_arrow())
        return pl.from_arrow(con.sql(sql).to_arrow_table())  # type: ignore[return-value]
    finally:
        con.close()


def encode_labels(frame: pl.DataFrame, model: ModelVersion) -> np.ndarray:
    """Labels as the model's class indices (binary/multiclass) or floats (regression)."""
    if model.task == "regression":
        return frame["label"].cast(pl.Float64).to_numpy()
    label = frame["label"]
    if label.dtype == pl.Boolean or (label.dtype.is_float() and (label.drop_nulls() % 1 == 0).all()):
        label = label.cast(pl.Int64)
    values = label.cast(pl.String)
    classes = model.classes
    unknown = sorted(set(values.drop_nulls().unique().to_list()) - set(classes))
    if unknown:
        raise DataError(f"labels {unknown[:10]} are not classes of {model.ref}: expected one of {classes}")
    return values.replace_strict(classes, list(range(len(classes))), return_dtype=pl.Float64).to_numpy()


def _metrics(model: ModelVersion, frame: pl.DataFrame, y: np.ndarray) -> dict[str, float | None]:
    if model.task == "multiclass":  # runs keep the predicted class and its probability only
        hits = frame["predicted_class"].cast(pl.String) == frame["label"].cast(pl.String)
        return {"accuracy": float(hits.cast(pl.Float64).mean() or 0.0)}  # type: ignore[arg-type]
    task: Task = "binary" if model.task == "binary" else "regression"
    from batchml.models.training import evaluate  # deferred: training imports lightgbm and sklearn (seconds)

    return evaluate(task, y, frame["prediction"].to_numpy())


def _drop(metric: str, value: float, validation: float) -> float:
    return validation - value if metric in HIGHER_IS_BETTER else value - validation


def _period(frame: pl.DataFrame, period: str) -> pl.Series:
    every = {"day": "1d", "week": "1w", "month": "1mo"}[period]
    return frame["label_time"].dt.truncate(every).dt.date().cast(pl.String).alias("period")


def read_labels(storage: Storage, config: LabelsConfig, labels: DatasetVersion) -> pl.DataFrame:
    """(entity, label, label_time in UTC) of every row of `labels` with a label and a label time."""
    raw = datasets.read_frame(storage, labels, [config.entity_id, config.label, config.label_time])
    return pl.DataFrame(
        {
            "entity": raw[config.entity_id].cast(pl.String),
            "label": raw[config.label],
            "label_time": _to_utc(raw[config.label_time]),
        }
    ).filter(pl.col("label").is_not_null() & pl.col("label_time").is_not_null())


def compute(storage: Storage, model: str, spec: ModelSpec, labels: DatasetVersion) -> PerformanceResult:
    """Metrics of `labels` joined to the predictions published at label time (stored; a rerun loads them)."""
    path = result_path(model, labels.version)
    if storage.exists(path):
        return PerformanceResult(storage.read_json(path), reused=True)
    config = spec.monitoring.labels
    if config is None:
        raise ConfigError(f"model {model!r} has no [models.{model}.monitoring.labels] section")
    check_label_columns(labels.columns, {model: config}, f"version {labels.ref}")
    perf = spec.monitoring.performance
    frame = read_labels(storage, config, labels)
    timeline = publication_timeline(storage, model)
    matched = frame.sort("label_time").join_asof(
        timeline, left_on="label_time", right_on="at", strategy="backward"
    )
    runs = [r for r in matched["run_id"].unique().to_list() if r is not None]
    parts = [
        join_run(storage, model, run_id, matched.filter(pl.col("run_id") == run_id).drop("at"), perf.slices)
        for run_id in sorted(runs)
    ]
    joined = pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()
    registry = RegistryReader(storage)
    computed_at = now()
    rows: list[dict[str, Any]] = []
    for (version_no,), by_version in joined.group_by(["model_version"]) if parts else []:
        version = registry.get(model, str(version_no))
        by_version = by_version.with_columns(_period(by_version, perf.period))
        by_version = by_version.with_columns(pl.Series("y", encode_labels(by_version, version)))
        validation = version.card.get("metrics") or {}
        cuts = [(ALL, pl.lit(ALL))] + [(c, pl.col("slice:" + c).fill_null("null")) for c in perf.slices]
        for slice_name, slice_expr in cuts:
            keyed = by_version.with_columns(slice_expr.alias("slice_value"))
            for (run_id, period, value), group in keyed.group_by(["run_id", "period", "slice_value"]):
                judged = group.height >= perf.min_rows
                for metric, result in _metrics(version, group, group["y"].to_numpy()).items():
                    reference = validation.get(metric)
                    degraded = None
                    if judged and metric == perf.metric and result is not None and reference is not None:
                        degraded = _drop(metric, result, reference) > perf.max_drop
                    rows.append(
                        {
                            "model": model,
                            "model_version": version.version,
                            "run_id": run_id,
                            "period": period,
                            "slice": slice_name,
                            "slice_value": value,
                            "metric": metric,
                            "value": result,
                            "validation_value": reference,
                            "rows": group.height,
                            "degraded": degraded,
                            "computed_at": computed_at,
                        }
                    )
    rows.sort(
        key=lambda r: (
            r["model_version"],
            r["run_id"],
            r["period"],
            r["slice"] != ALL,
            r["slice"],
            r["slice_value"],
            r["metric"],
        )
    )
    record = {
        "kind": "performance",
        "model": model,
        "labels_version": labels.ref,
        "computed_at": computed_at,
        "config": perf.to_dict(),
        "labels": frame.height,
        "joined": joined.height,
        "without_publication": int(matched["run_id"].null_count()),
        "without_prediction": int(matched["run_id"].is_not_null().sum()) - joined.height,
        "rows": rows,
    }
    try:
        storage.create_json(path, record)
    except ConflictError:  # a concurrent monitor stored it first: theirs is the record
        return PerformanceResult(storage.read_json(path), reused=True)
    log.info("performance of %s on %s: %d rows, %d joined", model, labels.ref, frame.height, joined.height)
    return PerformanceResult(record)


def list_results(storage: Storage, model: str | None = None) -> list[dict[str, Any]]:
    """Every stored performance record (of `model`, or of all models), oldest first."""
    models = [model] if model else storage.list_dir("monitoring")
    records = [
        storage.read_json(f"monitoring/{m}/performance/{name}")
        for m in models
        for name in storage.list_dir(f"monitoring/{m}/performance")
        if name.endswith(".json")
    ]
    return sorted(records, key=lambda r: r["computed_at"])


PERFORMANCE_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("model_version", pa.int64()),
        ("run_id", pa.string()),
        ("period", pa.date32()),
        ("slice", pa.string()),
        ("slice_value", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("validation_value", pa.float64()),
        ("rows", pa.int64()),
        ("degraded", pa.bool_()),  # NULL: not judged (fewer than min_rows rows, or not the configured metric)
        ("labels_version", pa.string()),
        ("computed_at", pa.timestamp("us", tz="UTC")),
    ]
)


def performance_table(storage: Storage) -> pa.Table:
    """The `performance_metrics` catalog table: every stored performance record's rows."""
    rows = [
        {
            **row,
            "period": date.fromisoformat(row["period"]),
            "labels_version": record["labels_version"],
            "computed_at": datetime.fromisoformat(row["computed_at"]),
        }
        for record in list_results(storage)
        for row in record["rows"]
    ]
    return pa.Table.from_pylist(rows, schema=PERFORMANCE_SCHEMA)
