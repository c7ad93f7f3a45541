"""`batchml score`, `predictions ...`, `query`, `catalog rebuild`, `serving pull`, `info`: the serving DB."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from batchml.cli._common import (
    ErrorHandlingGroup,
    JsonFlag,
    emit,
    progress_bar,
    project_of,
    properties,
    require,
    short_time,
    state,
    table,
)
from batchml.errors import BatchMLError, NotFoundError
from batchml.redact import redact_url

if TYPE_CHECKING:
    from batchml.project import Project

#: `batchml query` interrupts a statement still running after this many seconds (`--timeout` changes it).
QUERY_TIMEOUT_SECONDS = 60.0

predictions_app = typer.Typer(
    cls=ErrorHandlingGroup,
    no_args_is_help=True,
    help="List prediction runs and choose which one is published.",
)
serving_app = typer.Typer(
    cls=ErrorHandlingGroup,
    no_args_is_help=True,
    help="The serving DuckDB file on this host (fetched from object storage when another host published).",
)
catalog_app = typer.Typer(
    cls=ErrorHandlingGroup,
    no_args_is_help=True,
    help="Maintain the serving DuckDB file (derived from storage).",
)


def _serving_db(project: Project) -> str:
    from batchml.serving.readers import database_path

    return str(database_path(project))


def _rows_to_score(project: Project, model: str, dataset: str | None) -> int | None:
    """The progress bar's total: rows of the dataset version to score, when it is easy to tell."""
    from batchml.data import datasets

    spec = project.config.models.get(model)
    ref = dataset or (f"{spec.dataset}@latest" if spec else None)
    if ref is None:
        return None
    with contextlib.suppress(BatchMLError):
        return datasets.get_version(project.storage, ref).rows
    return None


def score(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[
        str | None,
        typer.Option("--alias", help="Score with the version this alias holds.", show_default="champion"),
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Score with this version instead of an alias.")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", metavar="NAME@VERSION", help="Dataset version (default: latest)."),
    ] = None,
    publish: Annotated[
        bool, typer.Option("--publish/--no-publish", help="Publish the run to the serving DB.")
    ] = True,
    stage: Annotated[
        bool,
        typer.Option("--stage", help="Serve the run as predictions_staging instead of publishing it."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Score a dataset version with MODEL into an immutable run (a no-op if done before), and publish it.

    Examples:
      batchml score default_risk
      batchml score default_risk --alias challenger --stage
      batchml score default_risk --version 3 --dataset loans@3f2a
    """
    from batchml import api
    from batchml.checks.validation import describe_summary

    require(alias is None or version is None, "give --alias or --version, not both")
    project = project_of(ctx)
    total = _rows_to_score(project, model, dataset) if not as_json else None
    with progress_bar(f"scoring {model}", total, as_json) as progress:
        if version is None and alias in (None, "champion"):  # with its shadows and canary, if configured
            scored = api.score_with_shadows(project, model, dataset=dataset, progress=progress)
            run, comparisons, step, arms = scored.served, scored.comparisons, scored.canary, scored.experiment
        else:
            run = api.score(project, model, alias=alias, version=version, dataset=dataset, progress=progress)
            comparisons, step, arms = [], {}, {}
    publish = publish and not stage
    if stage:
        api.stage(project, model, run.run_id)
    elif publish:
        api.publish(project, model, run.run_id)
    manifest = run.manifest
    data = {
        "model": run.model,
        "run_id": run.run_id,
        "model_version": manifest["model_version"],
        "dataset_version": manifest["dataset_version"],
        "rows": run.rows,
        "reused": run.reused,
        "published": publish,
        "staged": stage,
        "serving_db": _serving_db(project) if publish or stage else None,
        "quarantined": run.summary.get("quarantined", 0),
        "flagged": run.summary.get("flagged", 0),
        "summary": run.summary,
        "engine": manifest["key"].get("engine"),
        "engine_fallback": manifest.get("engine_fallback"),
        "shadows": comparisons,
        "canary": step or None,
        "experiment": arms or None,  # the A/B experiment's arms event: each variant's run
    }

    def render(console: Console) -> None:
        verb = "reused existing" if run.reused else "committed new"
        console.print(f"{verb} run {run.run_id}: {run.rows:,} rows of {data['dataset_version']}")
        if not str(data["engine"]).startswith("lightgbm=="):
            console.print(f"  engine {data['engine']}", markup=False)
        if data["engine_fallback"]:
            console.print(f"  engine auto fell back to lightgbm: {data['engine_fallback']}", markup=False)
        for line in describe_summary(run.summary):
            console.print(f"  {line}", markup=False)
        for c in comparisons:
            verdict = "DIVERGED: " + "; ".join(c["divergences"]) if c["diverged"] else "within limits"
            console.print(
                f"  shadow v{c['shadow_version']} (run {c['shadow_run_id']}): psi {c['psi']:.3g}, "
                f"flip rate {c['flip_rate']:.3g}, top-k overlap {c['top_k_overlap']:.3g}; {verdict}",
                markup=False,
            )
        if step:
            console.print(f"  canary v{step['version']}: {step['action']}: {step['reason']}", markup=False)
        if arms:
            runs = ", ".join(f"{v} run {r}" for v, r in arms["runs"].items())
            console.print(
                f"  experiment {arms['experiment']} v{arms['experiment_version']}: {runs}", markup=False
            )
        if publish:
            console.print(f"published; query it read-only at {data['serving_db']}")
        if stage:
            console.print(f"staged beside the published run; next: batchml predictions compare {model}")

    emit(as_json, data, render)


@predictions_app.command("list")
def list_(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(help="Only runs of this model.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List prediction runs (from storage) with rows, dataset, model version and whether published.

    Examples:
      batchml predictions list
      batchml predictions list default_risk --json
    """
    from batchml.models.registry import RegistryReader
    from batchml.scoring.publications import PublicationLog
    from batchml.scoring.runs import list_runs

    storage = project_of(ctx).storage
    reader = RegistryReader(storage)
    models = reader.list_models()
    if model is not None and model not in models:
        raise NotFoundError("model", model, models)
    publications = PublicationLog(storage)
    runs = []
    for name in [model] if model else models:
        current = publications.current(name)
        for run in list_runs(storage, name):
            m = run.manifest
            runs.append(
                {
                    "model": name,
                    "run_id": run.run_id,
                    "model_version": m["model_version"],
                    "dataset_version": m["dataset_version"],
                    "rows": run.rows,
                    "finished_at": m["finished_at"],
                    "published": run.run_id == current,
                }
            )
    columns = ["model", "run_id", "model_version", "dataset_version", "rows", "finished_at", "published"]
    cells = ([*(r[k] for k in columns[:5]), short_time(r["finished_at"]), r["published"]] for r in runs)
    emit(as_json, {"runs": runs}, lambda c: c.print(table(columns, cells)))


def _published(project: Project, model: str, as_json: bool) -> None:
    from batchml.scoring.publications import PublicationLog

    data = {
        "model": model,
        "run_id": PublicationLog(project.storage).current(model),
        "serving_db": _serving_db(project),
    }
    emit(as_json, data, lambda c: c.print(f"{model}: published run is now {data['run_id']}"))


@predictions_app.command("publish")
def publish(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    run_id: Annotated[str, typer.Argument(help="A run id from `batchml predictions list`.")],
    reason: Annotated[str, typer.Option("--reason", help="Why, recorded in the event log.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Make RUN_ID the published predictions of MODEL (atomically swaps in a new serving file)."""
    from batchml import api

    project = project_of(ctx, catch_up=False)
    api.publish(project, model, run_id, reason=reason)
    _published(project, model, as_json)


@predictions_app.command("rollback")
def rollback(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    reason: Annotated[str, typer.Option("--reason", help="Why, recorded in the event log.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Return MODEL's published predictions to the run published before the current one."""
    from batchml import api

    project = project_of(ctx, catch_up=False)
    api.rollback_predictions(project, model, reason=reason)
    _published(project, model, as_json)


def query(
    ctx: typer.Context,
    sql: Annotated[str, typer.Argument(help="One SELECT or EXPLAIN statement.")],
    timeout: Annotated[
        float,
        typer.Option("--timeout", metavar="SECONDS", min=0.001, help="Interrupt the query after this long."),
    ] = QUERY_TIMEOUT_SECONDS,
    history: Annotated[
        bool,
        typer.Option(
            "--history",
            help="Also prediction_history, past_predictions and prediction_at(model, entity_id, at), "
            "read from the published runs' files (one thread).",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run a read-only SQL query on the serving DB (tables: predictions, models, runs, datasets, ...).

    The query may use at most the reader memory limit and threads of \\[serving] in batchml.toml, and is
    interrupted after --timeout.
    Every run ever published is history: --history reads it from the run files in storage.

    Examples:
      batchml query "SELECT * FROM predictions WHERE entity_id = 'L000000042'"
      batchml query "SELECT model, alias, version FROM model_aliases" --json
      batchml query --history "SELECT * FROM prediction_at('churn', 'C42', TIMESTAMPTZ '2026-01-31')"
      batchml query --history "SELECT run_id, avg(prediction) FROM prediction_history GROUP BY ALL"
    """
    from batchml.serving.readers import connect, query

    con = connect(project_of(ctx), history=history)
    try:
        columns, rows = query(con, sql, timeout=timeout)
    finally:
        con.close()
    data = {"columns": columns, "rows": [dict(zip(columns, row, strict=True)) for row in rows]}
    emit(as_json, data, lambda c: c.print(table(columns, rows)))


@catalog_app.command("rebuild")
def rebuild(
    ctx: typer.Context,
    full: Annotated[
        bool,
        typer.Option(
            "--full/--incremental",
            help="Read every table from storage, or copy runs the current serving file already holds.",
        ),
    ] = True,
    as_json: JsonFlag = False,
) -> None:
    """Rebuild the serving DuckDB file from the manifests and event logs in storage.

    Examples:
      batchml catalog rebuild
      batchml catalog rebuild --incremental
    """
    from batchml import api

    project = project_of(ctx, catch_up=False)
    built = api.rebuild_catalog(project, full=full)
    data = {"serving_db": _serving_db(project), "file": str(built), "full": full}
    emit(as_json, data, lambda c: c.print(f"rebuilt {data['serving_db']} -> {built.name}"))


@serving_app.command("pull")
def pull(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Fetch the newest serving snapshot from object storage into this host's serving folder.

    Its sha256 is checked before it replaces the local file (readers keep the file they opened). Nothing
    to do with local storage: the serving file is built on the same disk.

    Examples:
      batchml serving pull
      batchml serving pull --json
    """
    from batchml.serving.snapshots import pull as pull_snapshot

    project = project_of(ctx, catch_up=False)  # catching up could build here: a pull only fetches
    link = _serving_db(project)
    data: dict[str, Any] = {"serving_db": link, "storage": redact_url(project.storage.url)}
    if project.storage.is_local:
        data.update(pulled=False, snapshot=None, seq=None, bytes=0)
        message = f"nothing to pull: storage is on this disk, readers open {link}"
    else:
        done = pull_snapshot(
            project.storage, project.serving_dir, lookup_files=project.config.serving.lookup_files
        )
        assert done is not None  # pull raises when there is no snapshot
        snap = done.snapshot
        data.update(pulled=done.fetched, snapshot=snap.file.sha256, seq=snap.seq, bytes=snap.file.size)
        if done.fetched:
            message = f"pulled {snap.name}: {snap.file.size:,} bytes into {link}"
        else:
            message = f"already current: {link} reflects {snap.name}"
    emit(as_json, data, lambda c: c.print(message, markup=False, soft_wrap=True))


def info(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show the project: config file, storage URL, serving DB path, configured datasets and models."""
    import batchml
    from batchml.project import CONFIG_FILE
    from batchml.serving.readers import database_path

    options = state(ctx)
    project = options.project
    config = options.config or project.base_dir / CONFIG_FILE
    link = database_path(project)
    sources = {name: d.source for name, d in project.config.datasets.items()}
    spec: dict[str, Any] = {
        name: {"dataset": m.dataset, "task": m.task, "entity_id": m.entity_id, "target": m.target}
        for name, m in project.config.models.items()
    }
    data: dict[str, Any] = {
        "version": batchml.__version__,
        "config": str(config.resolve()) if config.exists() else None,
        "storage": redact_url(project.storage.url),
        "serving_db": str(link),
        "serving_db_exists": link.exists(),
        "datasets": sources,
        "models": spec,
    }

    def render(console: Console) -> None:
        console.print(properties((k, data[k]) for k in ("version", "config", "storage", "serving_db")))
        console.print(table(["dataset", "source"], sources.items(), "datasets"))
        models = ([n, m["dataset"], m["task"], m["entity_id"], m["target"]] for n, m in spec.items())
        console.print(table(["model", "dataset", "task", "entity_id", "target"], models, "models"))

    emit(as_json, data, render)
