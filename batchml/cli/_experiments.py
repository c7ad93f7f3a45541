"""`batchml experiments list|show|start|stop|conclude`: shadow versions, canary releases, A/B experiments."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from batchml.cli._common import (
    ErrorHandlingGroup,
    ForcePromote,
    JsonFlag,
    emit,
    project_of,
    short_time,
    table,
)
from batchml.errors import ConfigError

app = typer.Typer(
    cls=ErrorHandlingGroup,
    no_args_is_help=True,
    help="Shadow versions (scored, compared, never served), canary releases (a ramped share served) and "
    "A/B experiments (named variants serving shares, judged on labels).",
)

_COMPARISON_COLUMNS = ["shadow_version", "shadow_run_id", "dataset_version", "psi", "ks_statistic",
                       "flip_rate", "top_k_overlap", "mean_abs_delta", "diverged", "computed_at"]  # fmt: skip
_RESULT_COLUMNS = ["variant", "rows", "value", "control_value", "uplift", "ci_low", "ci_high", "verdict"]
_CANARY_COLUMNS = ["seq", "action", "version", "share", "run_id", "reason", "at"]


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Each configured model's shadow versions and canary: who holds the alias, the ramp's last step."""
    from batchml.models.registry import RegistryReader
    from batchml.serving import canary, experiments

    project = project_of(ctx)
    registry = RegistryReader(project.storage)
    rows = []
    for name, spec in sorted(project.config.models.items()):
        started = experiments.starts(experiments.event_log(project.storage, name).read())
        running = (
            experiments.running(experiments.event_log(project.storage, name).read()) if started else None
        )
        if not spec.shadow.enabled and spec.canary is None and not started:
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
                "experiment": f"{running['experiment']} v{running['experiment_version']}"
                if running
                else None,
            }
        )

    def render(console: Console) -> None:
        columns = ["model", "champion", "shadow_versions", "canary_alias", "canary_version", "last_step",
                   "experiment"]  # fmt: skip
        console.print(table(columns, [[r[c] for c in columns] for r in rows], title="experiments"))

    emit(as_json, {"experiments": rows}, render)


@app.command("show")
def show(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    as_json: JsonFlag = False,
) -> None:
    """MODEL's canary steps and rollbacks, shadow comparisons and A/B experiments with their results on
    each labels version (on the newest labels computed now if not yet, as `batchml performance` does)."""
    from batchml.data.labels import latest_labels
    from batchml.monitoring import shadow
    from batchml.serving import canary, experiment_results, experiments

    project = project_of(ctx)
    spec = project.config.model(model)  # an unknown model is one line naming the configured ones
    events = experiments.event_log(project.storage, model).read()
    labels = latest_labels(project.storage, spec.monitoring.labels) if spec.monitoring.labels else None
    if labels is not None and events:
        experiment_results.experiment_results(project.storage, model, labels, spec)
    data: dict[str, Any] = {
        "model": model,
        "canary": canary.events(project.storage, model),
        "shadow_comparisons": shadow.list_comparisons(project.storage, model),
        "experiments": [s | {"status": experiments.status(events, s)[0]} for s in experiments.starts(events)],
        "experiment_results": [
            r for r in experiment_results.list_results(project.storage) if r["model"] == model
        ],
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
        for e in data["experiments"]:
            arms = ", ".join(f"{v['name']}=v{v['model_version']} {v['share']:g}" for v in e["variants"])
            head = f"experiment {e['experiment']} v{e['experiment_version']} ({e['status']}): {arms}"
            console.print(f"{head}; control {e['control']}, {e['metric']} ({e['goal']}), "
                          f"min {e['min_samples']}/arm")  # fmt: skip
        for r in data["experiment_results"]:
            rows = [[x[c] for c in _RESULT_COLUMNS] for x in r["rows"] if x["metric"] == r["metric"]]
            title = f"{r['experiment']} v{r['experiment_version']} on {r['labels_version']}: {r['verdict']}"
            console.print(
                table(_RESULT_COLUMNS, rows, title=title + (f", winner {r['winner']}" if r["winner"] else ""))
            )

    emit(as_json, data, render)


Reason = Annotated[str, typer.Option("--reason", help="Why, recorded in the alias event.")]


Name = Annotated[str | None, typer.Argument(help="An A/B experiment's name (none: the canary).")]


@app.command("start")
def start(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    target: Annotated[
        str, typer.Argument(help="A version: start the canary on it; a name: an A/B experiment.")
    ],
    variant: Annotated[
        list[str] | None, typer.Option("--variant", help="A/B: NAME=VERSION or NAME=ALIAS, once per variant.")
    ] = None,
    shares: Annotated[str, typer.Option(help="A/B: the variants' shares, in order, summing to 1.")] = "",
    control: Annotated[
        str | None, typer.Option(help="A/B: the control variant (default: 'control', else the first).")
    ] = None,
    salt: Annotated[
        str | None, typer.Option(help="A/B: mixed into the entity hash (default MODEL:NAME).")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="A/B: the metric deciding the winner (default by task).")
    ] = None,
    goal: Annotated[str | None, typer.Option(help="A/B: increase or decrease (default by metric).")] = None,
    min_samples: Annotated[
        int, typer.Option(help="A/B: labelled rows per arm before any verdict.", min=1)
    ] = 500,
    revise: Annotated[bool, typer.Option("--revise", help="A/B: a new version of the running NAME.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Serve variants whose gates failed (needs --reason).")
    ] = False,
    reason: Reason = "",
    as_json: JsonFlag = False,
) -> None:
    """Start MODEL's canary on a VERSION (gates apply), or A/B experiment NAME: --variant's and --shares.

    batchml experiments start churn 8                                           # canary: its alias -> v8
    batchml experiments start churn pricing --variant control=champion --variant b=8 --shares 0.5,0.5
    """
    from batchml import releases

    project = project_of(ctx, catch_up=False)
    if target.lstrip("v").isdigit():
        event = releases.start_canary(project, model, int(target.lstrip("v")), reason)
        alias = event["alias"]
        emit(as_json, event, lambda c: c.print(f"{model}: {alias} -> v{target}; starts on the next score"))
        return
    given = [tuple(v.split("=", 1)) for v in variant or []]
    bad = [v for v, g in zip(variant or [], given, strict=True) if len(g) != 2 or not all(g)]
    if bad:
        raise ConfigError(f"--variant {bad[0]!r} is invalid: use NAME=VERSION or NAME=ALIAS (e.g. b=8)")
    try:
        parts = [float(x) for x in shares.split(",")] if shares else []
    except ValueError:
        raise ConfigError(f"--shares {shares!r} is invalid: use shares like 0.5,0.5") from None
    event = releases.start_experiment(
        project, model, target, [(g[0], g[1]) for g in given], parts, control=control, salt=salt,
        metric=metric, goal=goal, min_samples=min_samples, reason=reason, revise=revise, force=force,
    )  # fmt: skip
    arms = ", ".join(f"{v['name']}=v{v['model_version']} {v['share']:g}" for v in event["variants"])
    emit(as_json, event, lambda c: c.print(
        f"{model}: experiment {target} v{event['experiment_version']} started ({arms}; control "
        f"{event['control']}; decides on {event['metric']}, goal {event['goal']}); served from the next score"
    ))  # fmt: skip


@app.command("stop")
def stop(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    name: Name = None,
    reason: Reason = "stopped by hand",
    as_json: JsonFlag = False,
) -> None:
    """Stop MODEL's canary (its alias leaves the version), or its experiment NAME (an event); every entity
    is served the published run (control) again."""
    from batchml import releases

    project = project_of(ctx, catch_up=False)
    if name is not None:
        ended = releases.stop_experiment(project, model, name, reason)
        emit(
            as_json,
            ended,
            lambda c: c.print(f"{model}: experiment {name} {ended['action']} ({ended['reason']})"),
        )
        return
    event = releases.stop_canary(project, model, reason)
    emit(as_json, event, lambda c: c.print(f"{model}: canary v{event['from_version']} stopped ({reason})"))


@app.command("conclude")
def conclude(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    name: Name = None,
    winner: Annotated[str | None, typer.Option(help="A/B: the variant promoted to champion.")] = None,
    reason: Reason = "concluded",
    force: ForcePromote = False,
    as_json: JsonFlag = False,
) -> None:
    """Promote the winner to champion and end the canary (MODEL) or the experiment (MODEL NAME --winner V)."""
    from batchml import releases

    project = project_of(ctx, catch_up=False)
    if name is not None:
        if winner is None:
            raise ConfigError(
                f"concluding experiment {name!r} needs --winner VARIANT (see batchml experiments show)"
            )
        done = releases.conclude_experiment(project, model, name, winner, reason, force=force)
        ended = done["concluded"]
        emit(as_json, done, lambda c: c.print(
            f"{model}: experiment {name} ended ({ended['action']}); "
            f"champion -> v{ended.get('winner_version')}"
        ))  # fmt: skip
        return
    result = releases.conclude_canary(project, model, reason, force=force)
    version = result["promoted"]["to_version"]
    emit(as_json, result, lambda c: c.print(f"{model}: champion -> v{version}; canary ended ({reason})"))
