"""What every CLI command shares: the project state, error handling, JSON/table output and progress bars."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import math
import sys
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from batchml.errors import BatchMLError, NotFoundError
from batchml.redact import redact

if TYPE_CHECKING:
    from batchml.project import Project

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of a table.")
]
RunOption = Annotated[
    str | None,
    typer.Option("--run", metavar="RUN_ID", help="Prediction run.", show_default="the published run"),
]
#: Promotion past failed gates: always with a --reason, recorded with the alias event.
ForcePromote = Annotated[bool, typer.Option("--force", help="Promote even if gates failed (needs --reason).")]
ProgressCallback = Callable[[int], None]


@dataclass
class State:
    """Global options, and the project they open (lazily: `--help` and `sample-data` need none)."""

    config: Path | None = None
    storage: str | None = None
    debug: bool = False
    _project: Project | None = field(default=None, repr=False)
    _caught_up: bool = field(default=False, repr=False)

    @property
    def project(self) -> Project:
        """The project of `--config` (or $BATCHML_CONFIG, else ./batchml.toml), opened once."""
        if self._project is None:
            from batchml.project import Project

            self._project = Project.open(self.config, storage=self.storage)
        return self._project


def state(ctx: typer.Context) -> State:
    """The State the root callback stored, found from any sub-command's context."""
    found = ctx.find_object(State)
    return found if found is not None else ctx.ensure_object(State)


def project_of(ctx: typer.Context, *, catch_up: bool = True) -> Project:
    """The project the global options select, with its serving file brought up to date with the event logs.

    Commands that append events pass `catch_up=False`: they must first read the state the serving file
    shows (what their user acted on), and rebuild it themselves (see `batchml.serving.operations`).
    """
    options = state(ctx)
    project = options.project
    if catch_up and not options._caught_up:
        options._caught_up = True
        _catch_up(project)
    return project


def _catch_up(project: Project) -> None:
    from batchml.serving.operations import catch_up

    try:
        behind = catch_up(project)
    except PermissionError:  # a reader without write access to the serving folder reads what is there
        return
    if behind:
        typer.echo(
            f"note: the serving file was behind the event logs ({'; '.join(behind)}); brought it up to date",
            err=True,
        )


class ErrorHandlingGroup(TyperGroup):
    """Turns every failure into one redacted line on stderr and exit code 1, without a traceback.

    batchml's own errors and I/O errors print their message; anything else (a library's error, a bug) prints
    its type and message with a pointer to `--debug`, which adds the traceback, redacted like the rest.
    Usage errors keep click's handling (exit code 2).
    """

    def invoke(self, ctx: Any) -> Any:
        """Run the command; failures become one line on stderr."""
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.exceptions.TyperException, BrokenPipeError):
            raise  # exits, usage errors (click's own handling, exit code 2) and a closed pipe
        except Exception as exc:
            if state(ctx).debug:
                typer.echo(redact(traceback.format_exc()).rstrip(), err=True)
            fail(_failure_message(exc))


#: Libraries whose errors are failures of storage or the network (credentials, endpoints, buckets), not bugs.
_STORAGE_LIBRARIES = ("botocore", "aiobotocore", "s3fs", "fsspec", "aiohttp")


def _failure_message(exc: Exception) -> str:
    if isinstance(exc, BatchMLError | OSError):
        return str(exc)
    detail = f"{type(exc).__name__}: {' '.join(str(exc).split())}"  # one line, whatever the message held
    if type(exc).__module__.split(".")[0] in _STORAGE_LIBRARIES:
        return f"storage access failed: {detail}"
    return f"{detail} (unexpected: rerun with --debug for the traceback)"


def fail(message: str) -> NoReturn:
    """Print `error: message` (redacted, on one line) to stderr and exit with code 1."""
    typer.echo(f"error: {redact(message)}", err=True)
    raise typer.Exit(1)


def jsonable(value: Any) -> Any:
    """`value` made JSON-safe: datetimes as ISO strings, decimals as exact strings, NaN/inf as null."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return str(value) if value.is_finite() else None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, uuid.UUID | Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return jsonable(value.item())
    return str(value)


def emit(as_json: bool, data: Mapping[str, Any], render: Callable[[Console], None]) -> None:
    """Print `data` as JSON (and nothing else) or call `render` with a stdout console."""
    if as_json:
        typer.echo(json.dumps(jsonable(data), indent=2, allow_nan=False))
    else:
        render(Console(highlight=False))


def cell(value: Any) -> Text:
    """One table cell, never interpreted as rich markup."""
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, float):
        return Text(f"{value:.6g}")
    if isinstance(value, Mapping | list | tuple):
        return Text(json.dumps(jsonable(value), separators=(", ", ": ")))
    if isinstance(value, dt.datetime):
        return Text(value.isoformat(sep=" ", timespec="seconds"))
    return Text(str(value))


def short_time(value: str | None) -> str | None:
    """An ISO-8601 timestamp from a record, to the second, for tables (JSON keeps the full value)."""
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value).isoformat(sep=" ", timespec="seconds")
    except ValueError:
        return value


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> Table:
    """A plain table of `rows` under `columns`."""
    out = Table(title=title, header_style="bold", title_justify="left")
    for name in columns:
        out.add_column(name, overflow="fold")
    for row in rows:
        out.add_row(*(cell(v) for v in row))
    return out


def properties(items: Iterable[tuple[str, Any]]) -> Table:
    """A two-column `key  value` listing."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in items:
        grid.add_row(Text(key), cell(value))
    return grid


def _interactive(as_json: bool) -> bool:
    return not as_json and sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, as_json: bool) -> Iterator[ProgressCallback | None]:
    """A rows-done progress bar on stderr (None when output is JSON or stderr is not a terminal)."""
    if not _interactive(as_json):
        yield None
        return
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}" + (f"/{total:,}" if total is not None else "") + " rows"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda rows: bar.advance(task, rows)


@contextlib.contextmanager
def spinner(description: str, as_json: bool) -> Iterator[None]:
    """A spinner on stderr while work without progress reports runs (none for JSON or non-terminals)."""
    if not _interactive(as_json):
        yield
        return
    with Console(stderr=True).status(description):
        yield


def require(condition: bool, message: str) -> None:
    """Raise BatchMLError(message) unless `condition` holds (for CLI-level argument checks)."""
    if not condition:
        raise BatchMLError(message)


def run_or_published(project: Project, model: str, run: str | None) -> str:
    """`run` if given, else the run currently published for `model` (NotFoundError listing its runs)."""
    from batchml.scoring.publications import PublicationLog
    from batchml.scoring.runs import list_runs

    run_id = run or PublicationLog(project.storage).current(model)
    if run_id is None:
        runs = [r.run_id for r in list_runs(project.storage, model)]
        raise NotFoundError(f"published run of model {model!r} (pass --run)", "published", runs)
    return run_id
