"""Score a dataset version with a model alias into a prediction run, and publish it to the serving DuckDB."""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import flow, get_client, get_run_logger
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

import batchml
from batchml.api import score_with_shadows, scoring_inputs
from batchml.arms import Arm, after_scoring, arm_inputs, arm_scorer, planned_arms
from batchml.checks.validation import describe_summary
from batchml.data import datasets
from batchml.monitoring.shadow import SERVED_ALIAS, ShadowScoring
from batchml.scoring.partitions import (
    commit_partitions_together,
    new_scored_at,
    plan_partitions,
    score_partition_together,
)
from batchml.scoring.publications import PublicationLog
from batchml.scoring.runs import PredictionRun
from batchml.store.eventlog import now
from flows.common import (
    artifact_key,
    batch_task,
    config_ref,
    markdown_table,
    open_project,
    operation_key,
    report,
    serving_examples,
)


@batch_task
def score(model: str, alias: str, dataset: str | None, config: str | None) -> dict[str, Any]:
    """Score `dataset` (default: latest of the model's dataset) with `model@alias`; return the run's ref.

    The champion brings its shadow versions along (one read); their comparisons are in `shadows`."""
    project = open_project(config)
    if alias != SERVED_ALIAS:
        return _summary(model, alias, batchml.score(project, model, alias=alias, dataset=dataset))
    return _with_arms(model, alias, score_with_shadows(project, model, dataset=dataset))


def _with_arms(model: str, alias: str, scored: ShadowScoring) -> dict[str, Any]:
    """The served run's summary with its shadows' comparisons (or why one failed) and the canary's step."""
    shadows = [
        {k: c[k] for k in ("shadow_version", "shadow_run_id", "psi", "ks_statistic", "flip_rate")}
        | {k: c[k] for k in ("top_k_overlap", "mean_abs_delta", "diverged", "divergences")}
        for c in scored.comparisons
    ]
    shadows += [{"shadow_version": v, "failed": error} for v, error in scored.failed.items()]
    canary = {k: scored.canary[k] for k in ("action", "version", "share", "reason") if k in scored.canary}
    arms = {
        k: scored.experiment[k]
        for k in ("experiment", "experiment_version", "runs")
        if k in scored.experiment
    }
    return {**_summary(model, alias, scored.served), "shadows": shadows, "canary": canary or None,
            "experiment": arms or None}  # fmt: skip


def _summary(model: str, alias: str, run: batchml.PredictionRun) -> dict[str, Any]:
    return {
        "model": model,
        "alias": alias,
        "model_version": run.manifest["model_version"],
        "dataset": run.manifest["dataset_version"],
        "run_id": run.run_id,
        "rows": run.rows,
        "reused": run.reused,
        "quarantined": run.summary.get("quarantined", 0),
        "flagged": run.summary.get("flagged", 0),
        "checks": describe_summary(run.summary),
        "telemetry": run.telemetry,  # {} for a run committed before telemetry was recorded
    }


#: Result keys the artifact shows in sections of their own, not in the run's table.
_NOT_IN_TABLE = ("alias", "checks", "telemetry", "shadows", "canary", "experiment")


def telemetry_lines(telemetry: dict[str, Any], reused: bool) -> list[str]:
    """The artifact's section on where scoring spent its time (nothing for a run without telemetry)."""
    if not telemetry:
        return []
    row = {f"{stage} s": round(s, 3) for stage, s in telemetry["seconds"].items()}
    row.update(
        {
            "wall s": round(telemetry["wall_seconds"], 3),
            "threads": telemetry["threads"],
            "rows/s": f"{telemetry['rows_per_s']:,.0f}" if telemetry["rows_per_s"] else "",
            "peak RSS MiB": telemetry["peak_rss_mib"],
        }
    )
    when = " when it was first scored (reused this time)" if reused else ""
    return [
        "",
        f"Scoring time{when}: busy seconds per stage (stages overlap, so they may sum past the wall time)."
        " Publish time is the publication's: `run_stats.publish_s`.",
        "",
        markdown_table([row]),
    ]


def _arms(plan: dict[str, Any]) -> list[Arm]:
    """Every version the plan scores, the served one first."""
    return [Arm(plan["version"], (), plan.get("engine")), *_extra(plan)]


def _extra(plan: dict[str, Any]) -> list[Arm]:
    return [Arm.from_dict(a) for a in plan.get("arms", [])]  # a plan made before arms were planned: none


@batch_task
def plan_scoring(
    model: str, alias: str, dataset: str | None, partitions: int, config: str | None
) -> dict[str, Any]:
    """Resolve the model and dataset versions, the arms scored beside the champion (its shadows and
    canary, each with its engine) and split the dataset's row groups into `partitions`."""
    project = open_project(config)
    chosen, version, options = scoring_inputs(project, model, alias=alias, dataset=dataset)
    arms = planned_arms(project, model, chosen, version.ref) if alias == SERVED_ALIAS else []
    return {
        "model": model,
        "version": chosen.version,
        "dataset": version.ref,
        "engine": options.engine,  # chosen once: every partition scores with it, into one run
        "arms": [arm.to_dict() for arm in arms],
        "groups": plan_partitions(project.storage, version, partitions),
        "scored_at": new_scored_at(),
        "started_at": now(),
    }


@batch_task
def score_part(plan: dict[str, Any], index: int, config: str | None) -> list[dict[str, Any]]:
    """Score partition `index` of `plan` for every arm from one read, into unreferenced parts; per arm
    (the served version first) their entries and tallies, or the error that stopped a shadow or canary."""
    project = open_project(config)
    version = datasets.get_version(project.storage, plan["dataset"])
    scorers = [arm_scorer(project, plan["model"], arm, plan["dataset"]) for arm in _arms(plan)]
    groups = plan["groups"][index]
    return score_partition_together(
        project.storage, scorers, version, groups, index=index, scored_at=plan["scored_at"]
    )


@batch_task
def commit_parts(
    plan: dict[str, Any], alias: str, results: list[list[dict[str, Any]]], config: str | None
) -> dict[str, Any]:
    """Commit each arm's parts as its run (the same run id as sequential scoring), then compare the
    shadows and step the canary as sequential scoring does; return the served run's ref."""
    project = open_project(config)
    version = datasets.get_version(project.storage, plan["dataset"])
    served, *runs = commit_partitions_together(
        project.storage,
        [arm_inputs(project, plan["model"], arm, plan["dataset"]) for arm in _arms(plan)],
        version,
        results,
        scored_at=plan["scored_at"],
        started_at=plan["started_at"],
    )
    if not isinstance(served, PredictionRun):  # raised by commit_partitions_together; for the type checker
        raise served
    if alias != SERVED_ALIAS:
        return _summary(plan["model"], alias, served)
    scored = after_scoring(project, plan["model"], served, _extra(plan), runs)
    return _with_arms(plan["model"], alias, scored)


@batch_task
def publish_run(model: str, run_id: str, reason: str, config: str | None) -> dict[str, Any]:
    """Publish run `run_id` of `model`; a no-op when it is already published and the database exists."""
    project = open_project(config)
    database = batchml.database_path(project)
    already = PublicationLog(project.storage).current(model) == run_id and database.exists()
    if not already:
        key = operation_key("publish", model, run_id)
        batchml.publish(project, model, run_id, reason=reason, operation_key=key)
    return {"database": str(database), "changed": not already}


def limit_name(model: str) -> str:
    """The name of `model`'s global concurrency limit."""
    return f"batchml-score-{model}"


def model_limit(model: str) -> str:
    """The name of `model`'s global concurrency limit, created with one slot if it does not exist yet.

    An operator may raise or lower it on the server (`prefect gcl update batchml-score-MODEL --limit N`);
    an existing limit is never overwritten.
    """
    name = limit_name(model)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another flow run created it just now
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name


@flow(name="score-and-publish")
def score_and_publish(
    model: str,
    alias: str = "champion",
    dataset: str | None = None,
    publish: bool = True,
    config: str | None = None,
    reason: str = "flow score-and-publish",
    partitions: int = 1,
) -> dict[str, Any]:
    """Score `dataset` (`NAME@VERSION`; default: latest) with `model@alias` and, if `publish`, make the run
    the model's published predictions. Scoring the same model and dataset again returns the same run id.

    One flow run per model at a time (a Prefect global concurrency limit per model); a second waits, then
    finds the finished work. Underneath, put-if-absent manifests and events keep it exactly once anyway.

    With `partitions` > 1 the dataset's row groups are scored by that many tasks submitted to the flow's
    task runner (in parallel on e.g. a `DaskTaskRunner`, see `score_and_publish_on_dask`), then committed as
    one run with the same rows, scores and run id as sequential scoring. The champion brings its shadows and
    canary along either way: each partition reads its rows once for all of them (see `batchml.arms`).
    """
    with contextlib.ExitStack() as slot:
        # The limit exists after a model's first run: acquire at once and look it up (one more request) only
        # when acquiring fails, e.g. because it does not exist yet.
        try:
            slot.enter_context(concurrency(limit_name(model), occupy=1, strict=True))
        except ConcurrencySlotAcquisitionError:
            slot.enter_context(concurrency(model_limit(model), occupy=1, strict=True))
        return _score_and_publish(model, alias, dataset, publish, config, reason, partitions)


def score_and_publish_on_dask(address: str | None = None, n_workers: int = 2, **parameters: Any) -> Any:
    """Run `score_and_publish(**parameters)` on Dask: the cluster at `address` (`tcp://scheduler:8786`), or
    a temporary local one with `n_workers` workers. Pass `partitions` > 1 to use more than one worker.
    """
    from prefect_dask import DaskTaskRunner

    runner = (
        DaskTaskRunner(address=address)
        if address
        else DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "processes": False})
    )
    return score_and_publish.with_options(task_runner=runner)(**parameters)  # type: ignore[arg-type]


def _score_partitioned(
    model: str, alias: str, dataset: str | None, partitions: int, config: str | None
) -> dict[str, Any]:
    plan = plan_scoring(model, alias, dataset, partitions, config)
    futures = [score_part.submit(plan, i, config) for i in range(partitions)]
    results = [f.result() for f in futures]
    return commit_parts(plan, alias, results, config)


def _score_and_publish(
    model: str,
    alias: str,
    dataset: str | None,
    publish: bool,
    config: str | None,
    reason: str,
    partitions: int = 1,
) -> dict[str, Any]:
    logger = get_run_logger()
    config = config_ref(config)
    if partitions > 1:
        result = _score_partitioned(model, alias, dataset, partitions, config)
    else:
        result = score(model, alias, dataset, config)
    logger.info(
        "run %s: %s %d predictions of %s@%s (v%s) on %s",
        result["run_id"],
        "reused" if result["reused"] else "wrote",
        result["rows"],
        model,
        alias,
        result["model_version"],
        result["dataset"],
    )
    for line in result["checks"]:
        logger.info("run %s input checks: %s", result["run_id"], line)
    publication = None
    if publish:
        publication = publish_run(model, result["run_id"], reason, config)
        logger.info(
            "run %s %s %s",
            result["run_id"],
            "published to" if publication["changed"] else "already published in",
            publication["database"],
        )
    examples = serving_examples(open_project(config), model) if publish else {}
    lines = [
        f"{'Reused' if result['reused'] else 'Wrote'} run **{result['run_id']}**: "
        f"{result['rows']:,} predictions of `{model}@{alias}` (v{result['model_version']}) "
        f"on `{result['dataset']}`.",
        "",
        markdown_table([{k: v for k, v in result.items() if k not in _NOT_IN_TABLE}]),
        *telemetry_lines(result.get("telemetry") or {}, result["reused"]),
    ]
    if result.get("shadows"):
        lines += ["", "Shadow versions (scored from the same read, never served), against this run:", ""]
        lines.append(markdown_table(result["shadows"]))
    if result.get("canary"):
        canary = result["canary"]
        lines += ["", f"Canary v{canary['version']}: {canary['action']} ({canary['reason']})."]
    if result.get("experiment"):
        arms = result["experiment"]
        runs = ", ".join(f"{variant}: run {run_id}" for variant, run_id in arms["runs"].items())
        lines += ["", f"Experiment `{arms['experiment']}` v{arms['experiment_version']}, its arms: {runs}."]
    if result["checks"]:
        lines += ["", "Input checks:", "", *(f"- {line}" for line in result["checks"])]
    if publication is not None:
        lines += [
            "",
            f"Published: {'yes' if publication['changed'] else 'already current'}. "
            f"Serving DuckDB: `{publication['database']}`"
            + (
                f" (publish: its serving build took {examples['publish_s']:.3f} s)"
                if examples.get("publish_s") is not None
                else ""
            ),
        ]
    if examples.get("sql"):
        lines += [
            "",
            "Example query (from the project folder):",
            "",
            f'```\nbatchml query "{examples["sql"]}"\n```',
            "",
            "or in Python: `con = batchml.connect(); con.sql(...)`",
        ]
    report(artifact_key("run", model), f"Prediction run {result['run_id']} of {model}", "\n".join(lines))
    return {**result, "published": publication, "serving": examples}
