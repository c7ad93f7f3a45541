"""`batchml labels ingest`, `batchml performance MODEL` and `batchml alerts [MODEL]`."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from batchml.cli._common import ErrorHandlingGroup, JsonFlag, emit, project_of, short_time, spinner, table
from batchml.errors import ConfigError, NotFoundError

labels_app = typer.Typer(
    cls=ErrorHandlingGroup,
    no_args_is_help=True,
    help="Version delayed labels (entity id, label, label time).",
)

_PERF_COLUMNS = ["model_version", "run_id", "period", "slice", "slice_value", "metric", "value",
                 "validation_value", "rows", "degraded"]  # fmt: skip
_ALERT_COLUMNS = ["id", "model", "version", "run_id", "kind", "detail", "value", "threshold", "at"]


@labels_app.command("ingest")
def ingest(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Labels dataset, as named in \\[models.M.monitoring.labels].")],
    source: Annotated[str, typer.Argument(help="File, folder, glob or URL of CSV/Parquet.")],
    as_json: JsonFlag = False,
) -> None:
    """Snapshot SOURCE as a version of labels dataset NAME (its configured columns must exist).

    Examples:
      batchml labels ingest loan_labels data/raw/loan_labels.csv
    """
    from batchml.data import labels

    with spinner(f"ingesting labels {name}", as_json):
        version = labels.ingest(project_of(ctx), name, source)
    data = {
        "dataset": version.ref,
        "rows": version.rows,
        "columns": version.columns,
        "reused": version.reused,
    }
    state = "unchanged, reused" if version.reused else "new version"
    emit(as_json, data, lambda c: c.print(f"labels {version.ref}: {version.rows:,} rows ({state})"))


def performance(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    as_json: JsonFlag = False,
) -> None:
    """Metrics of the newest labels joined to the predictions published at label time (stored once).

    Rows with fewer than performance.min_rows labels are shown but not judged (degraded: -).

    Examples:
      batchml performance default_risk --json
    """
    from batchml import api
    from batchml.data import labels
    from batchml.monitoring import performance as perf

    project = project_of(ctx)
    spec = project.config.model(model)
    if spec.monitoring.labels is None:
        raise ConfigError(f"model {model!r} has no [models.{model}.monitoring.labels] section")
    version = labels.latest_labels(project.storage, spec.monitoring.labels)
    if version is None:
        raise NotFoundError(
            "labels dataset", spec.monitoring.labels.dataset, ["none: run `batchml labels ingest`"]
        )
    with spinner(f"joining {version.ref} to published predictions", as_json):
        result = perf.compute(project.storage, model, spec, version)
    if not result.reused:
        api.rebuild_catalog(project, full=False)
    record: dict[str, Any] = {**result.record, "reused": result.reused}

    def render(console: Console) -> None:
        rows = ([r[c] for c in _PERF_COLUMNS] for r in result.rows)
        console.print(table(_PERF_COLUMNS, rows, f"performance of {model} on {record['labels_version']}"))
        console.print(
            f"{record['joined']:,} of {record['labels']:,} labels joined "
            f"({record['without_publication']:,} before any publication, "
            f"{record['without_prediction']:,} without a prediction); {len(result.degraded)} degraded"
        )

    emit(as_json, record, render)


def alerts(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(help="Model name (default: every model).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Alerts the monitor recorded (drift, prediction drift, performance drop, model age), oldest first."""
    from batchml.monitoring import alerts as alert_records

    found = alert_records.list_alerts(project_of(ctx).storage, model)

    def render(console: Console) -> None:
        rows = ([short_time(a[c]) if c == "at" else a[c] for c in _ALERT_COLUMNS] for a in found)
        console.print(table(_ALERT_COLUMNS, rows, "alerts"))

    emit(as_json, {"alerts": found}, render)
