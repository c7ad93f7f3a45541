"""The `batchml` command: a thin typer + rich layer over the library (`batchml.api` and friends).

Every command takes `--json` for machine-readable output on stdout. Every failure prints one line,
`error: <message>`, on stderr (credentials redacted) and exits with code 1; `--debug` adds the traceback,
redacted too. Usage errors keep typer's exit code 2.

The top stage: it may import any package below it, and nothing in batchml imports it but `python -m batchml`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see flows/__init__.py: spinning OpenMP threads

import importlib
from pathlib import Path
from typing import Annotated, Any

import typer

import batchml
from batchml.cli._common import ErrorHandlingGroup, State

__all__ = ["app", "main"]

#: Every command and command group: name -> (module in batchml.cli, attribute: a function or a typer.Typer).
#: `_trust` adds its commands to the `models` and `predictions` groups when imported (see `_EXTENDS`).
#: Loaded when invoked (or listed by --help): typer turns a command into a click command by inspecting its
#: signature, and doing so for all of them cost every invocation ~0.02 s of CPU.
COMMANDS = {
    "sample-data": ("_datasets", "sample_data"),
    "train": ("_models", "train"),
    "score": ("_serving", "score"),
    "query": ("_serving", "query"),
    "info": ("_serving", "info"),
    "drift": ("_drift", "drift"),
    "report": ("_reports", "report"),
    "performance": ("_monitoring", "performance"),
    "alerts": ("_monitoring", "alerts"),
    "gc": ("_gc", "gc"),
    "run": ("_run", "run"),
    "datasets": ("_datasets", "app"),
    "models": ("_models", "app"),
    "predictions": ("_serving", "predictions_app"),
    "catalog": ("_serving", "catalog_app"),
    "serving": ("_serving", "serving_app"),
    "labels": ("_monitoring", "labels_app"),
    "experiments": ("_experiments", "app"),
}


_EXTENDS = {"models": "_trust", "predictions": "_trust"}


class _LazyRootGroup(ErrorHandlingGroup):
    """The root group: a command is built from its module the first time it is asked for."""

    def list_commands(self, ctx: Any) -> list[str]:
        """Every command, in the order of `COMMANDS`."""
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """The command `cmd_name`, built now if it was not yet; None if there is no such command."""
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.add_command(_load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)


def _load(name: str) -> Any:
    module, attribute = COMMANDS[name]
    target = getattr(importlib.import_module(f"batchml.cli.{module}"), attribute)
    if name in _EXTENDS:
        importlib.import_module(f"batchml.cli.{_EXTENDS[name]}")
    command: Any
    if isinstance(target, typer.Typer):
        command = typer.main.get_group(target)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name  # a group's own Typer has no name: it had one only where it was added
    return command


app = typer.Typer(
    name="batchml",
    cls=_LazyRootGroup,
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


def main() -> None:
    """Entry point of the `batchml` console script."""
    app(prog_name="batchml")
