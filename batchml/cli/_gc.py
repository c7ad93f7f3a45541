"""`batchml gc`: remove unreferenced files (crash leftovers, old serving files) after a grace period."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from batchml.cli._common import JsonFlag, emit, project_of
from batchml.serving.gc import GRACE_SECONDS


def gc(
    ctx: typer.Context,
    grace_seconds: Annotated[
        float,
        typer.Option("--grace-seconds", min=0, help="Only remove unreferenced files older than this."),
    ] = GRACE_SECONDS,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Remove files no manifest, card or report references, and old serving files, after a grace period.

    Never touches a referenced file. Examples:
      batchml gc --dry-run
      batchml gc --grace-seconds 600
    """
    from batchml import api

    report = api.gc(project_of(ctx), grace_seconds=grace_seconds, dry_run=dry_run)

    def render(console: Console) -> None:
        verb = "would remove" if dry_run else "removed"
        for path in report.deleted:
            console.print(f"{verb} {path}", markup=False)
        console.print(
            f"{verb} {len(report.deleted)} unreferenced files; kept {len(report.kept_young)} younger than "
            f"{grace_seconds:g} s; {report.referenced} referenced files untouched",
            markup=False,
        )

    emit(as_json, report.to_dict(), render)
