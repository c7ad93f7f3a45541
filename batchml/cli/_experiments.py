"""`batchml experiments list|show|start|stop|conclude`: shadow versions and canary releases of a model."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from batchml.cli._common import ErrorHandlingGroup, JsonFlag, emit, project_of, short_time, table

app = typer.Typer(
    cls=ErrorHandlingGroup,
    no_args_is_help=True,
    help="Shadow versions (scored, compared, never served) and canary releases (a ramped share served).",
)

_COMPARISON_COLUMNS = ["shadow_version", "shadow_run_id", "dataset_version", "psi", "ks_statistic",
                       "flip_rate", "top_k_overlap", "mean_abs_delta", "diverged", "computed_at"]  # fmt: skip
_CANARY_COLUMNS = ["seq", "action", "version", "share", "run_id", "reason", "at"]


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Each configured model's shadow versions and canary: who holds the alias, the ramp's last step."""
    from batchml.models.registry import RegistryReader
    from batchml.serving import canary

    project = project_of(ctx)
    registry = RegistryReader(project.storage)
    rows = []
    for name, spec in sorted(project.config.models.items()):
        if not spec.shadow.enabled and spec.canary is None:
            continue
        holders = registry.aliases(name) if name in registry.list_models() else {}
        shadows = [holders[a] for a in spec.shadow.aliases if a in holders] + list(spec.shadow.versions)
        last = canary.events(project.storage, name)[-1:] if spec.canary else []
        rows.append(
            {
                "model": name,
                "champion": holders.get("champion"),
                "shadow_versions": sorted(set(shadows)),
                "canary_alias": spec.canary.alias if spec.canary else None,
                "canary_version": holders.get(spec.canary.alias) if spec.canary else None,
                "last_step": {k: last[0].get(k) for k in ("action", "version", "share", "at")}
                if last
                else None,
            }
        )

    def render(console: Console) -> None:
        columns = ["model", "champion", "shadow_versions", "canary_alias", "canary_version", "last_step"]
        console.print(table(columns, [[r[c] for c in columns] for r in rows], title="experiments"))

    emit(as_json, {"experiments": rows}, render)


@app.command("show")
def show(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    as_json: JsonFlag = False,
) -> None:
    """MODEL's canary steps and rollbacks, and its shadow comparisons, newest last."""
    from batchml.monitoring import shadow
    from batchml.serving import canary

    project = project_of(ctx)
    project.config.model(model)  # an unknown model is one line naming the configured ones
    data: dict[str, Any] = {
        "model": model,
        "canary": canary.events(project.storage, model),
        "shadow_comparisons": shadow.list_comparisons(project.storage, model),
    }

    def render(console: Console) -> None:
        steps = [
            [short_time(e.get(c)) if c == "at" else e.get(c) for c in _CANARY_COLUMNS] for e in data["canary"]
        ]
        console.print(table(_CANARY_COLUMNS, steps, title=f"canary of {model}"))
        rows = [
            [short_time(c[k]) if k == "computed_at" else c[k] for k in _COMPARISON_COLUMNS]
            for c in data["shadow_comparisons"]
        ]
        console.print(table(_COMPARISON_COLUMNS, rows, title=f"shadow comparisons of {model}"))

    emit(as_json, data, render)


Reason = Annotated[str, typer.Option("--reason", help="Why, recorded in the alias event.")]


@app.command("start")
def start(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="The version to serve as the canary.", min=1)],
    reason: Reason = "",
    as_json: JsonFlag = False,
) -> None:
    """Point MODEL's canary alias at VERSION (gates apply); the next champion score serves its first share."""
    from batchml import releases

    project = project_of(ctx, catch_up=False)
    event = releases.start_canary(project, model, version, reason)
    alias = event["alias"]
    emit(
        as_json,
        event,
        lambda c: c.print(f"{model}: {alias} -> v{version}; starts on the next score"),
    )


@app.command("stop")
def stop(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    reason: Reason = "stopped by hand",
    as_json: JsonFlag = False,
) -> None:
    """Stop MODEL's canary: its alias leaves the version (an alias event); every entity is served control."""
    from batchml import releases

    event = releases.stop_canary(project_of(ctx, catch_up=False), model, reason)
    emit(as_json, event, lambda c: c.print(f"{model}: canary v{event['from_version']} stopped ({reason})"))


@app.command("conclude")
def conclude(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    reason: Reason = "canary concluded",
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if gates failed (needs --reason).")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Promote MODEL's canary version to champion (the winner) and end the canary, in one command."""
    from batchml import releases

    result = releases.conclude_canary(project_of(ctx, catch_up=False), model, reason, force=force)
    version = result["promoted"]["to_version"]
    emit(as_json, result, lambda c: c.print(f"{model}: champion -> v{version}; canary ended ({reason})"))
