"""`batchml sample-data` and `batchml datasets ...`: seeded data, snapshots, listings, manifests, diffs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from batchml.cli._common import (
    ErrorHandlingGroup,
    JsonFlag,
    emit,
    fail,
    progress_bar,
    project_of,
    properties,
    short_time,
    spinner,
    table,
)
from batchml.errors import NotFoundError

if TYPE_CHECKING:
    from batchml.data.datasets import DatasetVersion
    from batchml.project import Project

app = typer.Typer(
    cls=ErrorHandlingGroup,
    no_args_is_help=True,
    help="Snapshot, list, inspect and compare immutable dataset versions.",
)


def sample_data(
    out: Annotated[Path, typer.Argument(help="File to write: .csv or .parquet (format from the suffix).")],
    rows: Annotated[int, typer.Option("--rows", min=0, help="Number of loan applications.")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: equal seeds give equal files.")] = 7,
    as_json: JsonFlag = False,
) -> None:
    """Write the seeded sample loans data (a binary `defaulted` target) to OUT.

    Examples:
      batchml sample-data data/raw/loans.csv --rows 100000
      batchml sample-data /tmp/loans.parquet --seed 11
    """
    from batchml.testing import write_loans

    try:
        with spinner(f"writing {rows:,} rows to {out}", as_json):
            path = write_loans(out, rows=rows, seed=seed)
    except ValueError as exc:
        fail(str(exc))
    data = {"path": str(path.resolve()), "rows": rows, "seed": seed, "format": path.suffix.lstrip(".")}
    emit(as_json, data, lambda c: c.print(f"wrote {rows:,} rows (seed {seed}) to {data['path']}"))


def _absolute(source: str) -> str:
    """A local SOURCE is relative to the current folder: record it as an absolute path."""
    return source if "://" in source else str(Path(source).expanduser().resolve())


def _version_row(v: DatasetVersion) -> dict[str, Any]:
    return {
        "name": v.name,
        "version": v.version,
        "ref": v.ref,
        "rows": v.rows,
        "columns": len(v.schema),
        "files": len(v.files),
        "bytes": sum(f.size for f in v.files),
        "created_at": v.created_at,
        "created_by": v.created_by,
        "parent": v.parent,
        "source": v.source,
    }


@app.command("snapshot")
def snapshot(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Dataset name, e.g. loans.")],
    source: Annotated[
        str | None,
        typer.Argument(help="File, folder, glob or URL of CSV/Parquet (default: the configured source)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Snapshot a source as a new immutable version of dataset NAME (a no-op if the data is unchanged).

    Examples:
      batchml datasets snapshot loans
      batchml datasets snapshot loans 'data/raw/2026-*.parquet'
      batchml datasets snapshot loans s3://bucket/exports/loans/
    """
    from batchml import api

    project = project_of(ctx)
    with progress_bar(f"snapshotting {name}", None, as_json) as progress:
        version = api.snapshot_dataset(
            project, name, _absolute(source) if source else None, progress=progress
        )
    data = _version_row(version) | {"reused": version.reused}

    def render(console: Console) -> None:
        verb = "reused existing" if version.reused else "committed new"
        console.print(f"{verb} version {version.ref}")
        console.print(properties((k, data[k]) for k in ("rows", "columns", "files", "bytes", "source")))

    emit(as_json, data, render)


@app.command("list")
def list_(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Show every version of this dataset.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List datasets with their latest version, or every version of dataset NAME.

    Examples:
      batchml datasets list
      batchml datasets list loans --json
    """
    from batchml.data import datasets

    project = project_of(ctx)
    storage = project.storage
    if name is not None:
        versions = datasets.list_versions(storage, name)
        if not versions:
            raise NotFoundError("dataset", name, datasets.list_datasets(storage))
        rows = [_version_row(v) for v in reversed(versions)]
        columns = ["version", "rows", "files", "created_at", "created_by", "parent"]
        cells = (
            [r["version"], r["rows"], r["files"], short_time(r["created_at"]), r["created_by"], r["parent"]]
            for r in rows
        )
        title = f"dataset {name}"
        emit(as_json, {"dataset": name, "versions": rows}, lambda c: c.print(table(columns, cells, title)))
        return
    names = sorted(set(datasets.list_datasets(storage)) | set(project.config.datasets))
    listing: list[dict[str, Any]] = []
    for dataset in names:
        versions = datasets.list_versions(storage, dataset)
        latest = datasets.latest(storage, dataset, versions) if versions else None
        listing.append(
            {
                "name": dataset,
                "versions": len(versions),
                "latest": latest.version if latest else None,
                "rows": latest.rows if latest else None,
                "created_at": latest.created_at if latest else None,
            }
        )
    columns = ["name", "versions", "latest", "rows", "created_at"]
    cells = ([*(r[k] for k in columns[:4]), short_time(r["created_at"])] for r in listing)
    emit(as_json, {"datasets": listing}, lambda c: c.print(table(columns, cells)))


@app.command("show")
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="NAME@VERSION", help="Version id, unique prefix or latest.")],
    as_json: JsonFlag = False,
) -> None:
    """Show a version's manifest: schema with column summaries, files, source, lineage.

    Examples:
      batchml datasets show loans@latest
      batchml datasets show loans@3f2a --json
    """
    from batchml.data import datasets

    version = datasets.get_version(project_of(ctx).storage, ref)
    data = {"ref": version.ref, **version.to_dict()}

    def render(console: Console) -> None:
        console.print(
            properties(
                [("dataset", version.ref)]
                + [(k, data[k]) for k in ("rows", "created_by", "parent", "source")]
                + [("created_at", short_time(version.created_at))]
            )
        )
        columns = ["column", "type", "nulls", "min", "max", "mean"]
        summary = version.summary
        console.print(
            table(
                columns,
                (
                    [c["name"], c["type"], *(summary.get(c["name"], {}).get(k) for k in columns[2:])]
                    for c in version.schema
                ),
                "columns",
            )
        )
        files = ([f.path, f.size, f.sha256] for f in version.files)
        console.print(table(["path", "bytes", "sha256"], files, "files"))

    emit(as_json, data, render)


@app.command("diff")
def diff(
    ctx: typer.Context,
    old: Annotated[str, typer.Argument(metavar="NAME@A", help="The older version.")],
    new: Annotated[str, typer.Argument(metavar="NAME@B", help="The newer version.")],
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            metavar="COLUMN",
            help="Match rows by this id column for a row-level diff.",
            show_default="the entity id of the models configured on the dataset",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Compare two versions: rows, added/removed/retyped columns and changed column summaries, and (by an
    id column) which rows were added, removed and changed, with counts per column and example ids.

    Examples:
      batchml datasets diff loans@3f2a loans@latest
      batchml datasets diff loans@3f2a loans@latest --by loan_id --json
    """
    from batchml.data import datasets

    project = project_of(ctx)
    a, b = datasets.get_version(project.storage, old), datasets.get_version(project.storage, new)
    result = datasets.diff_versions(a, b)
    key = by or _entity_id_of(project, b.name)
    if key is not None:
        from batchml.data.row_diff import row_diff

        result["row_diff"] = row_diff(project.storage, a, b, key)

    def render(console: Console) -> None:
        rows, retyped = result["rows"], result["retyped_columns"]
        console.print(f"{result['old']} -> {result['new']}")
        console.print(
            properties(
                [
                    ("rows", f"{rows['old']:,} -> {rows['new']:,} ({rows['change']:+,})"),
                    ("added columns", ", ".join(result["added_columns"]) or None),
                    ("removed columns", ", ".join(result["removed_columns"]) or None),
                    (
                        "retyped columns",
                        ", ".join(f"{c}: {t['old']} -> {t['new']}" for c, t in retyped.items()) or None,
                    ),
                ]
            )
        )
        changes = [
            [column, stat, values["old"], values["new"]]
            for column, stats in result["column_changes"].items()
            for stat, values in stats.items()
        ]
        if changes:
            console.print(table(["column", "stat", "old", "new"], changes, "column changes"))
        if "row_diff" in result:
            _print_row_diff(console, result["row_diff"])
        else:
            console.print("row-level diff: pass --by ID_COLUMN (no model configured on this dataset has one)")

    emit(as_json, result, render)


def _entity_id_of(project: Project, dataset: str) -> str | None:
    """The entity id the models configured on `dataset` share (None if none, or if they differ)."""
    ids = {m.entity_id for m in project.config.models.values() if m.dataset == dataset}
    return ids.pop() if len(ids) == 1 else None


def _print_row_diff(console: Console, diff: dict[str, Any]) -> None:
    rows, examples = diff["rows"], diff["examples"]
    kinds = [[kind, rows[kind], ", ".join(examples[kind])] for kind in ("added", "removed", "changed")]
    console.print(table(["rows", "count", "example ids"], kinds, f"rows by {diff['by']}"))
    console.print(f"unchanged: {rows['unchanged']:,}; rows without an id: {rows['without_id']}")
    columns = [[c, v["changed"], ", ".join(v["examples"])] for c, v in diff["changed_columns"].items()]
    if columns:
        console.print(table(["column", "rows changed", "example ids"], columns, "changed columns"))


@app.command("export")
def export(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="NAME@VERSION", help="Version id, unique prefix or latest.")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="File to write: .parquet or .csv (by suffix).")],
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Write a dataset version to a Parquet or CSV file, every stored file hash-checked first.

    Examples:
      batchml datasets export loans@latest loans.parquet
      batchml datasets export loans@3f2a exports/loans.csv --force
    """
    from batchml.data import datasets
    from batchml.data.dataset_export import export_version

    storage = project_of(ctx).storage
    version = datasets.get_version(storage, ref)
    with spinner(f"exporting {version.ref}", as_json):
        rows = export_version(storage, version, out, overwrite=force)
    data = {"ref": version.ref, "file": str(out), "rows": rows}
    emit(as_json, data, lambda c: c.print(f"wrote {rows:,} rows of {version.ref} to {out}"))
