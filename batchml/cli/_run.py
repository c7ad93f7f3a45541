"""`batchml run FLOW`: run one of the Prefect flows in `flows/` by hand, on any project, from any folder.

The flows are named in one registry (FLOWS) by `module:function`, like a Prefect entrypoint. Parameters are
checked against the flow's source before Prefect is imported (`_flow_params`), and the flow is imported only
when it runs, so `batchml --help` stays cheap. This command is the one place in batchml that reaches up into
`flows` (through `flows.runner`); the import-linter contract that keeps the library free of Prefect names
that one import as its only exception. Without Prefect (`pip install batchml`, no `prefect` extra) the flows
are still listed; running one says which extra to install.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from batchml.cli._common import JsonFlag, emit, properties, state, table
from batchml.cli._flow_params import RESERVED, parse_parameters, read_signature
from batchml.errors import BatchMLError, ConfigError

Summary = Callable[[Mapping[str, Any]], list[tuple[str, Any]]]


def _published(publication: Mapping[str, Any] | None) -> str:
    return "no" if not publication else "yes" if publication["changed"] else "already"


def _pipeline(result: Mapping[str, Any]) -> list[tuple[str, Any]]:
    models = [
        (
            m["model"],
            f"v{m['model_version']} on {m['dataset']}, run {m['run_id']} ({m['predictions']:,} predictions), "
            f"published: {m['published']}, reused: {m['reused']}",
        )
        for m in result["models"]
    ]
    return [*models, ("serving DuckDB", result["database"])]


def _snapshot(result: Mapping[str, Any]) -> list[tuple[str, Any]]:
    state = "reused" if result["reused"] else "new version"
    return [
        ("dataset", f"{result['dataset']} ({state})"),
        ("rows", f"{result['rows']:,} ({result['columns']} columns)"),
        ("source", result["source"]),
    ]


def _train(result: Mapping[str, Any]) -> list[tuple[str, Any]]:
    promotion = result["promotion"]
    alias = (
        f"held back: {result['held_back']}"
        if result["held_back"]
        else "not promoted"
        if promotion is None
        else f"{promotion['alias']} -> v{promotion['version']}"
        + ("" if promotion["changed"] else " (already)")
    )
    metrics = ", ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result["metrics"].items()
    )
    return [
        ("model", f"{result['ref']} ({'reused' if result['reused'] else 'new version'})"),
        ("dataset", result["dataset"]),
        ("metrics", metrics),
        ("alias", alias),
    ]


def _score(result: Mapping[str, Any]) -> list[tuple[str, Any]]:
    publication = result["published"]
    return [
        ("run", f"{result['run_id']} ({'reused' if result['reused'] else 'new'})"),
        ("predictions", f"{result['rows']:,} of {result['model']} v{result['model_version']}"),
        ("dataset", result["dataset"]),
        ("quarantined", result["quarantined"]),
        ("published", _published(publication)),
        ("serving DuckDB", publication["database"] if publication else None),
    ]


def _monitor(result: Mapping[str, Any]) -> list[tuple[str, Any]]:
    drift, retrain = result["drift"], result["retrain"]
    return [
        ("run", f"{result['run_id']} of {result['model']}"),
        ("drift", f"{drift.get('verdict')} ({drift.get('drifted_share', 0.0):.0%} of features drifted)"),
        ("alerts", f"{len(result['alerts'])} current, {len(result['new_alerts'])} new"),
        ("retrain", f"{retrain['retrain_id']}: {retrain['detail']}" if retrain else "none"),
        ("report", result["report"]["html_uri"]),
    ]


@dataclass(frozen=True)
class FlowEntry:
    """A flow `batchml run` can start: where it is (`module:function`) and how its result is summarised."""

    target: str
    summary: Summary


#: Every flow a user runs by hand, by the name `batchml run` takes.
FLOWS: dict[str, FlowEntry] = {
    "pipeline": FlowEntry("flows.pipeline:pipeline", _pipeline),
    "snapshot": FlowEntry("flows.ingest:snapshot_dataset", _snapshot),
    "train": FlowEntry("flows.train:train_model", _train),
    "score": FlowEntry("flows.score:score_and_publish", _score),
    "monitor": FlowEntry("flows.monitor:monitor", _monitor),
}


def _entry(name: str) -> FlowEntry:
    if name not in FLOWS:
        raise BatchMLError(f"unknown flow {name!r}: use one of {', '.join(FLOWS)}")
    return FLOWS[name]


def _config_path(option: Path | None) -> Path:
    """The project file the flow opens, made absolute so every task opens it whatever its folder."""
    path = option or Path(os.environ.get("BATCHML_CONFIG") or "batchml.toml")
    if not path.is_file():
        raise ConfigError(
            f"project config {str(path)!r} does not exist: pass --config PATH or set $BATCHML_CONFIG"
        )
    return path.resolve()


#: What a flow command says when Prefect is not installed (`pip install batchml` leaves it out).
NO_PREFECT = "flow {name!r} needs Prefect, which is not installed: pip install 'batchml[prefect]'"


def _run_flow(target: str, name: str, parameters: dict[str, Any], debug: bool) -> Any:
    # Importing `flows` first sets its environment defaults (Prefect's ephemeral API startup timeout, OpenMP)
    # before Prefect reads its settings; nothing in batchml.cli imports Prefect earlier.
    from flows import runner

    return runner.run_flow(target, name, parameters, tracebacks=debug)


def _list(as_json: bool) -> None:
    signatures = {name: read_signature(entry.target) for name, entry in FLOWS.items()}

    def describe(name: str) -> str:
        params = signatures[name].parameters.values()
        return ", ".join(
            p.name if p.required else f"{p.name}={p.default}" for p in params if p.name not in RESERVED
        )

    def render(console: Console) -> None:
        rows = [(n, describe(n), s.summary) for n, s in signatures.items()]
        console.print(table(["flow", "parameters (-p KEY=VALUE)", "what it does"], rows))

    data = {
        name: {
            "target": s.target,
            "summary": s.summary,
            "parameters": {
                p.name: {"type": p.annotation, "default": p.default} for p in s.parameters.values()
            },
        }
        for name, s in signatures.items()
    }
    emit(as_json, data, render)


def run(
    ctx: typer.Context,
    flow: Annotated[
        str | None, typer.Argument(metavar="[FLOW]", help="pipeline, snapshot, train, score or monitor.")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            metavar="KEY=VALUE",
            help="A flow parameter (repeatable); `batchml run` lists them.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="PATH",
            help="Project config file.",
            show_default="the global --config, $BATCHML_CONFIG or ./batchml.toml",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run a Prefect flow on a project, from any folder; without FLOW, list the flows and their parameters.

    Values are read by the parameter's type: true/false, numbers, JSON for dicts, none for an optional one.
    Without $PREFECT_API_URL the flow runs on Prefect's ephemeral API (started for the run; no server needed).
    Prefect's log goes to stderr; the result is summarised on stdout. Examples:
      batchml run pipeline --config ~/churn/batchml.toml
      batchml run train -p model=default_risk -p promote_to=challenger -p 'params={"num_leaves": 63}'
      batchml run score -p model=default_risk -p dataset=loans@<version> -p publish=false
      batchml run monitor -p model=default_risk --json
    """
    if flow is None:
        _list(as_json)
        return
    entry = _entry(flow)
    if importlib.util.find_spec("prefect") is None:  # before anything else: nothing else would help
        raise BatchMLError(NO_PREFECT.format(name=flow))
    values = parse_parameters(flow, read_signature(entry.target), param or [])
    options = state(ctx)
    path = _config_path(config or options.config)
    if options.storage:  # every task opens the project again: the override must reach each of them
        os.environ["BATCHML_STORAGE"] = options.storage
    if not as_json:
        where = os.environ.get("PREFECT_API_URL") or "Prefect's ephemeral API"
        typer.echo(f"running flow {flow} on {path} ({where})", err=True)
    result = _run_flow(entry.target, flow, {**values, "config": str(path)}, options.debug)

    emit(as_json, result, lambda console: console.print(properties(entry.summary(result))))
