"""`batchml report MODEL [--run RUN_ID]`: the Evidently drift and summary report of a prediction run."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console

from batchml.cli._common import JsonFlag, RunOption, emit, project_of, properties, run_or_published, spinner


def report(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    run: RunOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Render (once) or find the Evidently report of a prediction run, and print where its HTML is.

    Data drift of the features and the prediction against the model's training data, and a data summary,
    on a seeded sample of at most \\[models.MODEL.monitoring] report_sample_rows rows per side. Drift is
    judged with `batchml drift`'s methods (where Evidently has them) and thresholds; its verdict, the one
    alerts act on, heads the report. Saved under monitoring/MODEL/RUN_ID/ in storage and listed in the
    serving DB's `reports` table.

    Examples:
      batchml report default_risk
      batchml report default_risk --run 3f2a9c0d1e2b4a5f --json
    """
    from batchml import api
    from batchml.config import MonitoringConfig
    from batchml.monitoring.reports import load_report, render_run_report

    project = project_of(ctx)
    run_id = run_or_published(project, model, run)
    spec = project.config.models.get(model)
    monitoring = spec.monitoring if spec else MonitoringConfig()
    found = load_report(project.storage, model, run_id)
    with spinner(f"rendering the report of run {run_id}", as_json or found is not None):
        ref = found or render_run_report(
            project.storage, model, run_id, sample_rows=monitoring.report_sample_rows, config=monitoring.drift
        )
    if found is None:
        api.rebuild_catalog(project, full=False)  # the serving DB's `reports` table lists it
    data = {**asdict(ref), "reused": found is not None}

    def render(console: Console) -> None:
        console.print(properties((k, data[k]) for k in data if k not in {"html_uri", "json_uri"}))
        console.print(f"report: {ref.html_uri}", markup=False, soft_wrap=True)

    emit(as_json, data, render)
