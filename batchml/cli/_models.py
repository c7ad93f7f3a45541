"""`batchml train` and `batchml models ...`: training, cards, aliases and their history."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from batchml.cli._common import (
    ErrorHandlingGroup,
    JsonFlag,
    emit,
    project_of,
    properties,
    require,
    short_time,
    spinner,
    table,
)
from batchml.errors import PromotionError
from batchml.names import parse_ref

if TYPE_CHECKING:
    from batchml.models.registry import ModelVersion, RegistryReader

TOP_FEATURES = 10

app = typer.Typer(
    cls=ErrorHandlingGroup,
    no_args_is_help=True,
    help="List, inspect, promote and roll back model versions.",
)

AliasOption = Annotated[str, typer.Option("--alias", help="Alias to move, e.g. champion, challenger.")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why, recorded in the event log.")]


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs as a dict; VALUE is JSON when it parses as JSON, else the string itself."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        require(
            bool(sep and key.strip()),
            f"--param {pair!r} is invalid: use KEY=VALUE, e.g. --param num_leaves=63 "
            "(VALUE is parsed as JSON when it parses, else kept as a string)",
        )
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        params[key.strip()] = value
    return params


def _top_features(model: ModelVersion) -> list[dict[str, Any]]:
    importance: dict[str, float] = model.card.get("importance") or {}
    ranked = sorted(importance.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_FEATURES]
    return [{"feature": name, "importance": gain} for name, gain in ranked]


def train(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name, as configured in batchml.toml.")],
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", metavar="NAME@VERSION", help="Train on this version (default: latest)."),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", metavar="KEY=VALUE", help="LightGBM parameter override (repeatable)."),
    ] = None,
    promote: Annotated[
        bool, typer.Option("--promote", help="Then point --alias at the version, if every gate passed.")
    ] = False,
    alias: Annotated[str, typer.Option("--alias", help="The alias --promote moves.")] = "champion",
    as_json: JsonFlag = False,
) -> None:
    """Train MODEL on a dataset version and register it (a no-op returning the same version if done before).

    With --promote the version then becomes --alias (champion) if every promotion gate passed; if one
    failed, the version stays registered, the failed checks are listed and the command exits 1.

    Examples:
      batchml train default_risk --promote
      batchml train default_risk --dataset loans@3f2a --param num_leaves=63 --param learning_rate=0.03
    """
    from batchml import api
    from batchml.models.registry import RegistryReader

    params = parse_params(param or [])
    project = project_of(ctx)
    with spinner(f"training {model}", as_json):
        version = api.train(project, model, dataset=dataset, params=params or None)
    card = version.card
    data = {
        "model": version.name,
        "version": version.version,
        "ref": version.ref,
        "reused": version.reused,
        "dataset_version": card.get("dataset_version"),
        **_classes(version),
        "metrics": card.get("metrics", {}),
        "top_features": _top_features(version),
        "gates": card.get("gates"),
        "capped_categories": card.get("capped_categories", []),
    }
    if promote:
        holder = RegistryReader(project.storage).aliases(model).get(alias)
        try:
            api.promote(project, model, version.version, alias, reason="batchml train --promote")
        except PromotionError:  # the version exists: show it, then the one-line refusal with its checks
            _render_training(as_json, data, version)
            raise
        data["promotion"] = {"alias": alias, "from": holder, "to": version.version}
    _render_training(as_json, data, version)


def _render_training(as_json: bool, data: dict[str, Any], version: ModelVersion) -> None:
    card = version.card

    def render(console: Console) -> None:
        verb = "reused existing" if version.reused else "registered new"
        console.print(f"{verb} version {version.ref} (trained on {data['dataset_version']})")
        _print_classes(console, version)
        _print_capped(console, data["capped_categories"])
        console.print(table(["metric", "value"], data["metrics"].items(), "metrics"))
        _print_gates(console, card.get("gates"))
        if card.get("budget"):  # models registered without a dataset, and older cards, have none
            console.print(table(["budget", "measured"], card["budget"].items(), "budget"))
        if len(card.get("engines") or {}) > 1:  # more than the lightgbm reference was checked
            _print_engines(console, card["engines"])
        features = ([f["feature"], f["importance"]] for f in data["top_features"])
        console.print(table(["feature", "importance (gain)"], features, "top features"))
        if promotion := data.get("promotion"):
            moved = promotion["from"] != promotion["to"]
            before = f"v{promotion['from']}" if promotion["from"] is not None else "(none)"
            change = f"{before} -> v{promotion['to']}" if moved else f"already at v{promotion['to']}"
            console.print(f"alias {promotion['alias']}: {change}")

    emit(as_json, data, render)


def _reader(ctx: typer.Context) -> RegistryReader:
    from batchml.models.registry import RegistryReader

    return RegistryReader(project_of(ctx).storage)


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List models with their version count, latest version and aliases."""
    from batchml.models.registry import RegistryReader

    project = project_of(ctx)
    reader = RegistryReader(project.storage)
    rows = []
    for name in sorted(set(reader.list_models()) | set(project.config.models)):
        versions = reader.list_versions(name)
        rows.append(
            {
                "model": name,
                "versions": len(versions),
                "latest": versions[-1].version if versions else None,
                "aliases": reader.aliases(name),
                "configured": name in project.config.models,
            }
        )
    columns = ["model", "versions", "latest", "aliases", "configured"]
    cells = ([r[k] for k in columns] for r in rows)
    emit(as_json, {"models": rows}, lambda c: c.print(table(columns, cells)))


@app.command("show")
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="MODEL[@VERSION]", help="Version number (default: latest).")],
    as_json: JsonFlag = False,
) -> None:
    """Show a model card: lineage, params, metrics, features with dtypes and importance, git, packages.

    Examples:
      batchml models show default_risk
      batchml models show default_risk@3 --json
    """
    reader = _reader(ctx)
    name, wanted = parse_ref(ref, "model")
    model = reader.get(name, wanted)
    aliases = [alias for alias, v in reader.aliases(name).items() if v == model.version]
    data = {"model": name, "version": model.version, "ref": model.ref, "aliases": aliases, **_classes(model)}
    data.update(
        card=model.card,
        gates=model.card.get("gates"),
        budget=model.card.get("budget"),
        engines=model.card.get("engines"),
    )

    def render(console: Console) -> None:
        card = model.card
        lineage = ["origin", "task", "dataset_version", "entity_id", "target", "timestamp", "code_version"]
        console.print(
            properties(
                [("model", model.ref), ("aliases", ", ".join(aliases) or None)]
                + [(k, card.get(k)) for k in lineage]
                + [("created", f"{card.get('created_at')} by {card.get('user')}@{card.get('host')}")]
                + [("git", card.get("git")), ("code", card.get("code"))]
                + [("split", card.get("split")), ("trees", card.get("num_trees"))]
            )
        )
        _print_classes(console, model)
        console.print(table(["metric", "value"], (card.get("metrics") or {}).items(), "metrics"))
        _print_gates(console, card.get("gates"))
        if card.get("budget"):  # models registered without a dataset, and older cards, have none
            console.print(table(["budget", "measured"], card["budget"].items(), "budget"))
        if len(card.get("engines") or {}) > 1:  # more than the lightgbm reference was checked
            _print_engines(console, card["engines"])
        console.print(table(["param", "value"], (card.get("params") or {}).items(), "params"))
        importance = card.get("importance") or {}
        features = (
            [f.name, f.kind, f.dtype, len(f.categories) or None, importance.get(f.name)]
            for f in model.features
        )
        console.print(table(["feature", "kind", "dtype", "categories", "importance"], features, "features"))
        _print_capped(console, card.get("capped_categories", []))
        console.print(table(["package", "version"], (card.get("packages") or {}).items(), "packages"))

    emit(as_json, data, render)


def _print_engines(console: Console, engines: dict[str, Any]) -> None:
    """Per scoring engine checked at training: exact?, max |Δ| vs LightGBM, rows/s, or why it declined."""
    columns = ["engine", "exact", "max |Δ|", "differing rows", "compile s", "rows/s", "declined"]
    keys = ["exact", "max_abs_diff", "differing_share", "compile_seconds", "rows_per_s", "declined"]
    rows = ([name, *(record.get(k) for k in keys)] for name, record in engines.items())
    console.print(table(columns, rows, "scoring engines"))


def _classes(model: ModelVersion) -> dict[str, Any]:
    """The model's classes, the positive one and what `prediction` is (for --json output)."""
    return {
        "classes": model.classes,
        "positive_class": model.positive_class,
        "prediction": model.prediction_meaning,
    }


def _print_classes(console: Console, model: ModelVersion) -> None:
    """`classes: good, bad; prediction = P(Status = bad)` and where the positive class came from."""
    if not model.classes:
        console.print(f"prediction = {model.prediction_meaning}", markup=False)
        return
    line = f"classes: {', '.join(model.classes)}; prediction = {model.prediction_meaning}"
    if (model.card.get("spec") or {}).get("positive_class") is not None:
        line += " (positive_class in the config)"
    elif model.positive_class is not None and model.card.get("origin") == "batchml.train":
        line += " (default: the second class in sorted order; set positive_class to choose)"
    elif model.positive_class is not None:
        line += " (the booster's label 1)"  # registered from elsewhere: LightGBM's positive label
    console.print(line, markup=False)


def _print_capped(console: Console, capped: list[dict[str, Any]]) -> None:
    """One warning line per categorical column whose training values exceeded max_categories."""
    for c in capped:
        console.print(
            f"note: {c['column']}: {c['distinct']:,} distinct values, over max_categories "
            f"{c['max_categories']}: the {c['other']:,} least frequent ({c['other_rows']:,} training rows, "
            f"{c['other_share']:.1%}) are one 'other' category, flagged other:{c['column']} at scoring. "
            f"Raise max_categories, or add the column to exclude.",
            markup=False,  # column names are data, not markup
        )


def _print_gates(console: Console, report: dict[str, Any] | None) -> None:
    """The gate report: one row per check, pass / FAIL / skipped."""
    if report is None:
        console.print("gates: none recorded (not trained by batchml train), promotable")
        return
    checks = report.get("checks", [])
    failed = sum(c["passed"] is False for c in checks)
    title = f"gates: {'passed' if report.get('passed') else f'FAILED ({failed} of {len(checks)} checks)'}"
    if not checks:
        console.print(f"{title} (none configured)")
        return
    verdict = {True: "pass", False: "FAIL", None: "skipped"}
    rows = (
        [c["gate"], c["name"], c["value"], c["threshold"], verdict[c["passed"]], c["detail"]] for c in checks
    )
    console.print(table(["gate", "check", "value", "threshold", "result", "detail"], rows, title))


def _print_event(console: Console, event: dict[str, Any]) -> None:
    before = f"v{event['from_version']}" if event["from_version"] is not None else "(none)"
    moved = f"{event['alias']}: {before} -> v{event['to_version']}"
    when = short_time(event["at"])
    forced = f"; FORCED: {event['reason']}" if event.get("forced") else ""
    console.print(f"{event['action']} {moved} (event {event['seq']} by {event['by']}, {when}{forced})")


@app.command("promote")
def promote(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version number to point the alias at.")],
    alias: AliasOption = "champion",
    reason: ReasonOption = "",
    force: Annotated[
        bool,
        typer.Option("--force", help="Promote although the version's gates failed (needs --reason)."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Point an alias of MODEL at VERSION (an append-only event; refreshes the serving catalog).

    A version whose promotion gates failed is refused, listing the failed checks, unless --force is given
    with a --reason; the alias event then records forced: true.

    Examples:
      batchml models promote default_risk 3 --reason "better AUC on March data"
      batchml models promote default_risk 4 --force --reason "slice gate: islands relabelled, reviewed"
    """
    from batchml import api

    project = project_of(ctx, catch_up=False)
    event = api.promote(project, model, version, alias=alias, reason=reason, force=force)
    emit(as_json, {"model": model, **event}, lambda c: _print_event(c, event))


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    alias: AliasOption = "champion",
    reason: ReasonOption = "",
    as_json: JsonFlag = False,
) -> None:
    """Return an alias of MODEL to the version that held it before.

    Example:
      batchml models rollback default_risk --reason "bad scores in production"
    """
    from batchml import api

    event = api.rollback_model(project_of(ctx, catch_up=False), model, alias=alias, reason=reason)
    emit(as_json, {"model": model, **event}, lambda c: _print_event(c, event))


@app.command("history")
def history(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str | None, typer.Option("--alias", help="Only this alias.")] = None,
    at: Annotated[
        str | None,
        typer.Option("--at", metavar="ISO-TIME", help="Show which version held each alias at this time."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the alias event log of MODEL, or with --at which version held each alias at that time.

    Examples:
      batchml models history default_risk --alias champion
      batchml models history default_risk --at 2026-03-01T09:00:00+00:00
    """
    reader = _reader(ctx)
    reader.get(model)  # NotFoundError listing the models
    if at is not None:
        try:
            datetime.fromisoformat(at)
        except ValueError:
            require(False, f"--at {at!r} is not an ISO-8601 time: use e.g. 2026-01-31T12:00:00+00:00")
    holders = reader.aliases(model, at=at)
    if alias is not None:
        holders = {a: v for a, v in holders.items() if a == alias}
    events = [e for e in reader.events(model) if alias is None or e["alias"] == alias]
    data = {"model": model, "at": at, "aliases": holders, "events": events}

    def render(console: Console) -> None:
        if at is None:
            columns = ["seq", "at", "action", "alias", "from_version", "to_version", "by", "reason"]
            rows = ([e["seq"], short_time(e["at"]), *(e.get(k) for k in columns[2:])] for e in events)
            console.print(table(columns, rows, f"{model} events"))
        title = f"aliases of {model} at {at}" if at else f"aliases of {model} now"
        console.print(table(["alias", "version"], holders.items(), title))

    emit(as_json, data, render)
