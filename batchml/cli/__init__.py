"""The `batchml` command: a thin typer + rich layer over the library (`batchml.api` and friends).

Every command takes `--json` for machine-readable output on stdout. Every failure prints one line,
`error: <message>`, on stderr (credentials redacted) and exits with code 1; `--debug` adds the traceback,
redacted too. Usage errors keep typer's exit code 2.

The top stage: it may import any package below it, and nothing in batchml imports it but `python -m batchml`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see flows/__init__.py: spinning OpenMP threads

from pathlib import Path
from typing import Annotated

import typer

import batchml
from batchml.cli import (  # noqa: F401  (_trust: sub-commands)
    _datasets,
    _drift,
    _gc,
    _models,
    _monitoring,
    _reports,
    _run,
    _serving,
    _trust,
)
from batchml.cli._common import ErrorHandlingGroup, State

__all__ = ["app", "main"]

app = typer.Typer(
    name="batchml",
    cls=ErrorHandlingGroup,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="""Batch-first ML pipelines: versioned datasets, LightGBM models, predictions served from DuckDB.

Example session:
  batchml sample-data data/raw/loans.csv --rows 100000
  batchml datasets snapshot loans
  batchml train default_risk
  batchml models promote default_risk 1
  batchml score default_risk
  batchml query "SELECT * FROM predictions LIMIT 5"
""",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"batchml {batchml.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="BATCHML_CONFIG",
            metavar="PATH",
            help="Project config file.",
            show_default="$BATCHML_CONFIG or ./batchml.toml",
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            envvar="BATCHML_STORAGE",
            metavar="URL",
            help="Override the configured storage root (a path, file://, s3://...).",
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="On failure, also print the traceback (credentials redacted).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.obj = State(config=config, storage=storage, debug=debug)


app.command("sample-data")(_datasets.sample_data)
app.add_typer(_datasets.app, name="datasets")
app.command("train")(_models.train)
app.add_typer(_models.app, name="models")
app.command("score")(_serving.score)
app.add_typer(_serving.predictions_app, name="predictions")
app.command("query")(_serving.query)
app.add_typer(_serving.catalog_app, name="catalog")
app.command("info")(_serving.info)
app.command("drift")(_drift.drift)
app.command("report")(_reports.report)
app.add_typer(_monitoring.labels_app, name="labels")
app.command("performance")(_monitoring.performance)
app.command("alerts")(_monitoring.alerts)
app.command("gc")(_gc.gc)
app.command("run")(_run.run)


def main() -> None:
    """Entry point of the `batchml` console script."""
    app(prog_name="batchml")
