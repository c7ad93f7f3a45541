"""`batchml drift MODEL [--run RUN_ID]`: a run's drift against its model's training reference."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from batchml.cli._common import JsonFlag, RunOption, emit, project_of, run_or_published, spinner, table

_COLUMNS = ["feature", "statistic", "value", "threshold", "drifted"]


def drift(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    run: RunOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the drift of a prediction run's inputs and predictions against the model's training data.

    Computes and records it (once, immutably) if it is not stored yet, then refreshes the serving DB
    (tables drift_metrics and drift_runs). Thresholds come from \\[models.MODEL.monitoring.drift].

    Examples:
      batchml drift default_risk
      batchml drift default_risk --run 3f2a9c0d1e2b4a5f --json
    """
    from batchml import api
    from batchml.config import DriftConfig
    from batchml.monitoring.drift import load_drift, monitor_run

    project = project_of(ctx)
    run_id = run_or_published(project, model, run)
    spec = project.config.models.get(model)
    config = spec.monitoring.drift if spec else DriftConfig()
    recorded = load_drift(project.storage, model, run_id) is not None
    with spinner(f"computing drift of run {run_id}", as_json or recorded):
        result = monitor_run(project.storage, model, run_id, config)
    if not result.reused:
        api.rebuild_catalog(project, full=False)
    summary = result.summary
    data = {**summary, "reused": result.reused, "metrics": result.metrics}

    def render(console: Console) -> None:
        rows = ([r[c] for c in _COLUMNS] for r in result.metrics)
        console.print(table(_COLUMNS, rows, f"drift of {model} v{summary['version']}, run {run_id}"))
        drifted = ", ".join(summary["drifted_columns"]) or "none"
        console.print(
            f"verdict: {summary['verdict']} ({summary['drifted_features']}/{summary['features']} features "
            f"drifted, share {summary['drifted_share']:.2f}, limit {summary['max_drifted_share']:.2f}); "
            f"drifted: {drifted}; prediction drifted: {summary['prediction_drifted']}",
            markup=False,
        )
        reference = summary.get("reference") or {}
        if reference.get("dataset_version"):
            console.print(
                f"reference: every row of {reference['dataset_version']} ({reference['rows']:,} rows), "
                "scored by this model version; this verdict is the one alerts and retraining act on",
                markup=False,
            )
        if result.reused:
            console.print(f"recorded at {summary['computed_at']}", markup=False)

    emit(as_json, data, render)
