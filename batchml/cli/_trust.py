"""`predictions explain|stage|compare|promote` and `models reproduce`: tracing, re-deriving and staging."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from batchml.cli._common import ForcePromote, JsonFlag, emit, project_of, properties, table
from batchml.cli._models import app as models_app
from batchml.cli._serving import predictions_app


def _with_reasons(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` with its reasons as `feature +0.123` text (signed: + raises the raw score, - lowers it)."""
    reasons = fields.get("reasons")
    if reasons is None:
        return {**fields, "reasons": "none stored for this row"}
    shown = (
        f"{r['feature']} {'?' if r['contribution'] is None else format(r['contribution'], '+.6f')}"
        for r in reasons
    )
    return {**fields, "reasons": ", ".join(shown)}


@predictions_app.command("explain")
def explain(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    entity_id: Annotated[str, typer.Argument(help="Entity id, as it appears in `predictions.entity_id`.")],
    run: Annotated[str | None, typer.Option("--run", help="Run id (default: the published run).")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="How many feature contributions to show.")] = 10,
    as_json: JsonFlag = False,
) -> None:
    """Print a prediction's receipt, its top feature contributions, and re-derive it from stored data.

    Examples:
      batchml predictions explain default_risk L000000042
    """
    from batchml.monitoring import audit

    result = audit.explain(project_of(ctx).storage, model, entity_id, run_id=run, top=top)

    def render(console: Console) -> None:
        console.print(f"receipt of {model} / {entity_id}")
        console.print(properties(_with_reasons(result["receipt"]).items()))
        again = result["rederived"]
        verdict = "[green]matches[/]" if again["matches"] else "[red]DOES NOT MATCH[/]"
        console.print(f"re-derived from the stored dataset and model: {again['prediction']!r} ({verdict})")
        console.print(properties(_with_reasons(again).items()))
        rows = [(c["feature"], c["value"], f"{c['contribution']:+.6f}") for c in result["contributions"]]
        console.print(table(["feature", "value", "contribution"], rows, title="top contributions"))
        console.print(f"base value: {result['base_value']:+.6f} (raw score units)")

    emit(as_json, result, render)
    if not result["rederived"]["matches"]:
        raise typer.Exit(1)


@predictions_app.command("stage")
def stage(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    run_id: Annotated[str, typer.Argument(help="A committed run of MODEL.")],
    reason: Annotated[str, typer.Option("--reason", help="Why, recorded in the event log.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Serve RUN_ID as MODEL's `predictions_staging` table, beside the published one."""
    from batchml import api

    path = api.stage(project_of(ctx, catch_up=False), model, run_id, reason=reason)
    emit(
        as_json,
        {"model": model, "staged_run": run_id, "serving_db": str(path)},
        lambda c: c.print(
            f"staged run {run_id} of {model}; compare with: batchml predictions compare {model}"
        ),
    )


@predictions_app.command("compare")
def compare(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    top: Annotated[
        int | None, typer.Option("--top", min=1, help="k for the top-k overlap (default 1%).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Compare MODEL's staged run with its published run: score shift (PSI, KS), flip rate, top-k overlap."""
    from batchml.serving import staging

    report = staging.compare(project_of(ctx).storage, model, top=top)

    def render(console: Console) -> None:
        flat: list[tuple[str, Any]] = [
            ("staged run", f"{report['staged']['run_id']} (v{report['staged']['model_version']})"),
            ("published run", f"{report['published']['run_id']} (v{report['published']['model_version']})"),
            ("common entities", report["common_entities"]),
            ("mean prediction staged / published", tuple(report["mean_prediction"].values())),
            ("PSI", report["psi"]),
            ("KS statistic", report["ks_statistic"]),
            ("flip rate", report["flip_rate"]),
            (f"top-{report['top_k']} overlap", report["top_k_overlap"]),
        ]
        console.print(properties(flat))

    emit(as_json, report, render)


@predictions_app.command("promote")
def promote(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Option("--alias", help="Alias to move to the staged version.")] = "champion",
    reason: Annotated[str, typer.Option("--reason", help="Why, recorded in the event logs.")] = "",
    force: ForcePromote = False,
    as_json: JsonFlag = False,
) -> None:
    """Promote the staged run's model version to ALIAS and publish the staged run, in one step."""
    from batchml import api

    project = project_of(ctx, catch_up=False)
    result = api.promote_staged(project, model, alias=alias, reason=reason, force=force)
    emit(
        as_json,
        result,
        lambda c: c.print(
            f"{alias} of {model} is v{result['model_version']}; run {result['run_id']} is published"
        ),
    )


@models_app.command("reproduce")
def reproduce(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="MODEL@VERSION", help="The version to retrain.")],
    as_json: JsonFlag = False,
) -> None:
    """Retrain MODEL@VERSION from its recorded dataset version, spec and params; compare model hashes.

    Exits with 1 when the retrained model differs.
    """
    from batchml.monitoring import audit

    model, _, version = ref.partition("@")
    result = audit.reproduce(project_of(ctx).storage, model, version or "latest")

    def render(console: Console) -> None:
        verdict = "[green]identical[/]" if result["identical"] else "[red]DIFFERENT[/]"
        console.print(f"{result['model']} retrained on {result['dataset_version']}: {verdict}")
        console.print(properties((k, result[k]) for k in ("recorded_sha256", "reproduced_sha256")))
        changed = {
            k: (v, result["packages_now"].get(k))
            for k, v in result["packages_recorded"].items()
            if v != result["packages_now"].get(k)
        }
        if changed:
            console.print(f"package versions differ from training: {changed}")

    emit(as_json, result, render)
    if not result["identical"]:
        raise typer.Exit(1)
