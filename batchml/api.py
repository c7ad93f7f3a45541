"""The verbs of batchml on a Project: what the CLI, the flows and notebooks call."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchml.arms import after_scoring, arm_scorer, extra_arms
from batchml.arms import scoring_inputs as scoring_inputs  # re-exported: flows and notebooks call it
from batchml.checks import gates
from batchml.checks.expectations import check_training_data
from batchml.data import datasets
from batchml.data.datasets import DatasetVersion
from batchml.errors import ConfigError, SchemaError
from batchml.models.lineage import actor, code_lineage, code_version, engine, git_state, package_versions
from batchml.models.profiles import training_profile
from batchml.models.registry import ModelVersion, Registry
from batchml.monitoring.drift_reference import training_reference
from batchml.monitoring.shadow import SERVED_ALIAS, ShadowScoring
from batchml.names import check_name
from batchml.project import Project
from batchml.scoring.engine_choice import load_engine, trained_checks
from batchml.scoring.publications import PublicationLog
from batchml.scoring.runs import PredictionRun, Progress, get_run
from batchml.scoring.runs import score as score_dataset
from batchml.scoring.together import Scorer, score_together
from batchml.serving.database import build_serving_db
from batchml.serving.gc import GRACE_SECONDS, GcReport, collect
from batchml.serving.logstate import ALIASES, PUBLISHED, STAGING
from batchml.serving.operations import Mutation, catch_up
from batchml.serving.readers import connect as connect  # re-exported: the verbs apps call
from batchml.serving.readers import database_path as database_path
from batchml.serving.readers import query as query
from batchml.store.eventlog import now

if TYPE_CHECKING:  # lightgbm (and the sklearn it imports) costs seconds: load it only to train or score
    import polars as pl


def snapshot_dataset(
    project: Project, name: str, source: str | None = None, *, progress: Progress | None = None
) -> DatasetVersion:
    """Snapshot `source` (default: the dataset's configured source) as a version of dataset `name`."""
    check_name("dataset", name)
    configured = project.config.datasets.get(name)
    if source is None:
        if configured is None or configured.source is None:
            raise ConfigError(
                f"no source given for dataset {name!r} and none configured under [datasets.{name}]"
            )
        source = project.resolve_source(configured.source)
    file_format = configured.format if configured else None
    return datasets.snapshot(project.storage, name, source, file_format=file_format, progress=progress)


def read_dataset(
    ref: str, project: Project | None = None, *, columns: list[str] | None = None
) -> pl.DataFrame:
    """Dataset version `ref` (`NAME@VERSION`, `NAME@latest`) as a polars DataFrame, files hash-checked."""
    project = project or Project.open()
    version = datasets.get_version(project.storage, ref)
    missing = [c for c in columns or [] if c not in version.columns]
    if missing:
        named = ", ".join(map(repr, missing))
        raise SchemaError(f"dataset {version.ref} has no column(s) {named}; its columns:", version.columns)
    return datasets.read_frame(project.storage, version, columns)


#: Model spec sections that do not change the trained model (how it is scored, watched and released).
_NOT_RECIPE = ("scoring", "monitoring", "shadow", "canary")


def _training_key(dataset: DatasetVersion, spec_json: str, params: dict[str, Any]) -> str:
    payload = json.dumps(
        [dataset.ref, spec_json, params, code_version(), engine()], sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def train(
    project: Project, model: str, *, dataset: str | None = None, params: dict[str, Any] | None = None
) -> ModelVersion:
    """Train model `model` as configured on `dataset` (default: its dataset's latest version) and register it.

    Training the same spec and params on the same dataset version again returns the existing version.
    """
    spec = project.config.model(check_name("model", model))
    version = datasets.get_version(project.storage, dataset or f"{spec.dataset}@latest")
    registry = Registry(project.storage)
    # Scoring, monitoring and release settings do not change the model: editing them must not retrain.
    recipe_fields = {k: v for k, v in spec.to_dict().items() if k not in _NOT_RECIPE}
    if spec.scoring.engine != "lightgbm":  # a compiled engine adds its exactness checks to the card
        recipe_fields["engine"] = {"engine": spec.scoring.engine, "tolerance": spec.scoring.tolerance}
    recipe = json.dumps(recipe_fields)
    key = _training_key(version, recipe, params or {})
    for existing in registry.list_versions(model):
        if existing.card.get("training_key") == key:
            return ModelVersion(model, existing.version, existing.card, reused=True)
    started = now()
    table = datasets.read_frame(project.storage, version).to_arrow()
    from batchml.models import training

    data_checks = check_training_data(table, spec, version.ref)  # hard expectations fail before the fit
    gates.validate(model, spec, table.schema)  # a bad gate config fails before the fit, naming the value
    result = training.fit(table, spec, params)
    engines, budget = trained_checks(result, spec.scoring, model)
    gate_report = gates.run(model, spec, result, registry, budget=budget)
    card: dict[str, Any] = {
        "origin": "batchml.train",
        "training_key": key,
        "spec": spec.to_dict(),
        "task": spec.task,
        "dataset_version": version.ref,
        "entity_id": spec.entity_id,
        "timestamp": spec.timestamp,
        "target": spec.target,
        "features": [f.to_dict() for f in result.features],
        "capped_categories": result.capped_categories,
        "classes": result.classes,
        "positive_class": result.classes[1] if spec.task == "binary" else None,
        "params": result.params,
        "metrics": result.metrics,
        "importance": result.importance,
        "split": result.split,
        "profile": training_profile(result),
        "data_checks": data_checks,
        "gates": gate_report,
        "engines": engines,
        "budget": budget,
        "num_trees": result.booster.num_trees(),
        "git": git_state(project.base_dir),
        "packages": package_versions(),
        "code_version": code_version(),
        "code": code_lineage(),
        "started_at": started,
        "finished_at": now(),
        "created_at": now(),
        **actor(),
    }
    card["profile"]["reference"] = training_reference(project.storage, model, card, result.booster)
    return registry.register(model, result.booster, card)


def promote(
    project: Project,
    model: str,
    version: int | str,
    alias: str = "champion",
    reason: str = "",
    *,
    force: bool = False,
    operation_key: str | None = None,
) -> dict[str, Any]:
    """Point `alias` of `model` at `version` (an append-only event), and refresh the serving catalog.

    A version whose gates failed is refused (PromotionError) unless `force=True` with a `reason`. If the
    alias already holds the version, the event that made it so is returned and nothing is written. Exactly
    once after a crash, refused on a log state the caller did not see: see `batchml.serving.operations`.
    """
    registry = Registry(project.storage)
    target = registry.get(model, version).version
    with Mutation(project, f"promote:{alias}:v{target}", operation_key, [(model, ALIASES)]) as op:
        event = registry.promote(model, target, alias, reason, force=force, operation=op.on(model, ALIASES))
        op.finish()
    return event


def rollback_model(
    project: Project,
    model: str,
    alias: str = "champion",
    reason: str = "",
    *,
    operation_key: str | None = None,
) -> dict[str, Any]:
    """Return `alias` of `model` to its previous holder, and refresh the serving catalog.

    Run again after a crash, it finishes the interrupted rollback instead of stepping back twice; run again
    after it completed, it steps back again (see `batchml.serving.operations`).
    """
    with Mutation(project, f"rollback:{alias}", operation_key, [(model, ALIASES)]) as op:
        event = Registry(project.storage).rollback(model, alias, reason, operation=op.on(model, ALIASES))
        op.finish()
    return event


def score(
    project: Project,
    model: str,
    *,
    alias: str | None = "champion",
    version: int | str | None = None,
    dataset: str | None = None,
    progress: Progress | None = None,
    shadows: bool = True,
) -> PredictionRun:
    """Score a dataset version (default: the latest of the model's dataset) with the model's alias/version.

    Scoring the champion also scores the `[models.X.shadow]` versions from the same read, into runs that
    are never served, and compares each with it (`score_with_shadows`; `shadows=False` skips them).
    First brings a serving file left behind the event logs (a crash) up to date.
    """
    if shadows and alias == SERVED_ALIAS and version is None:
        return score_with_shadows(project, model, dataset=dataset, progress=progress).served
    catch_up(project)
    chosen, version_, options = scoring_inputs(project, model, alias=alias, version=version, dataset=dataset)
    booster, engine = load_engine(Registry(project.storage), chosen, options.engine)
    return score_dataset(
        project.storage, chosen, booster, version_, options=options, progress=progress, engine=engine
    )


def score_with_shadows(
    project: Project, model: str, *, dataset: str | None = None, progress: Progress | None = None
) -> ShadowScoring:
    """Score the champion, its shadow versions, its canary and the running A/B experiment's variants with
    one read of the dataset version; compare each shadow run with the champion's (recorded; an alert when
    beyond the limits), step the canary's ramp (advance when healthy, roll back on a breach) and record the
    experiment's arms. A shadow that fails is reported in `failed`; the champion's run does not depend on
    it. Which arms, and what follows: `batchml.arms`."""
    catch_up(project)
    chosen, version_, options = scoring_inputs(project, model, alias=SERVED_ALIAS, dataset=dataset)
    booster, engine = load_engine(Registry(project.storage), chosen, options.engine)
    arms = extra_arms(project, model, chosen)
    if not arms:
        run = score_dataset(project.storage, chosen, booster, version_, options=options, progress=progress,
                            engine=engine)  # fmt: skip
        return after_scoring(project, model, run, [], [])  # an A/A experiment still records its arms
    scorers = [Scorer(chosen, booster, engine, options)]
    scorers += [arm_scorer(project, model, arm, version_.ref) for arm in arms]
    served, *results = score_together(project.storage, scorers, version_, progress=progress)
    if not isinstance(served, PredictionRun):
        raise served
    return after_scoring(project, model, served, arms, results)


def publish(
    project: Project, model: str, run_id: str, reason: str = "", *, operation_key: str | None = None
) -> Path:
    """Make run `run_id` the published predictions of `model` and swap in a new serving file.

    Publishing the current run again writes nothing (not even a serving file, if it is up to date).
    """
    mutation = Mutation(project, f"publish:{run_id}", operation_key, [(model, PUBLISHED)])
    _verified_run(project, model, run_id)
    with mutation as op:
        PublicationLog(project.storage).publish(model, run_id, reason, operation=op.on(model, PUBLISHED))
        return op.finish()


def rollback_predictions(
    project: Project, model: str, reason: str = "", *, operation_key: str | None = None
) -> Path:
    """Return `model`'s published predictions to the previously published run (once, even if re-run)."""
    with Mutation(project, "rollback:published", operation_key, [(model, PUBLISHED)]) as op:
        PublicationLog(project.storage).rollback(model, reason, operation=op.on(model, PUBLISHED))
        return op.finish()


def gc(project: Project, *, grace_seconds: float = GRACE_SECONDS, dry_run: bool = False) -> GcReport:
    """Remove files no record references (crash leftovers, old serving files) older than `grace_seconds`."""
    return collect(project.storage, project.serving_dir, grace_seconds=grace_seconds, dry_run=dry_run)


def rebuild_catalog(project: Project, *, full: bool = True) -> Path:
    """Rebuild the serving DuckDB file from storage (it holds nothing storage does not).

    `full=False` copies the prediction runs the current serving file already holds instead of re-reading
    (and re-verifying) their files: what every publish, rollback and promote does to refresh the file.
    """
    serving = project.config.serving
    return build_serving_db(
        project.storage,
        project.serving_dir,
        full=full,
        reader_memory_limit=serving.reader_memory_limit,
        lookup_files=serving.lookup_files,
    )


def _verified_run(project: Project, model: str, run_id: str) -> None:
    """Check every file of the run against its manifest: a damaged run is never published or staged."""
    for entry in get_run(project.storage, model, run_id).files:
        project.storage.verify(entry)


def stage(
    project: Project, model: str, run_id: str, reason: str = "", *, operation_key: str | None = None
) -> Path:
    """Serve run `run_id` as `model`'s `predictions_staging` table, beside the published one."""
    mutation = Mutation(project, f"stage:{run_id}", operation_key, [(model, STAGING)])
    _verified_run(project, model, run_id)
    with mutation as op:
        PublicationLog(project.storage, "staging").publish(
            model, run_id, reason, operation=op.on(model, STAGING)
        )
        return op.finish()


def promote_staged(
    project: Project,
    model: str,
    alias: str = "champion",
    reason: str = "",
    force: bool = False,
    *,
    operation_key: str | None = None,
) -> dict[str, Any]:
    """Promote the staged run's model version to `alias` (gates apply) and publish that run, in one step.

    Three events (alias promote, publish, staging clear) carry one operation key: a rerun after a crash
    skips those already appended and finishes the rest. A change to any of the three logs the caller did
    not see refuses the request before anything is appended.
    """
    from batchml.serving.staging import staged_run

    logs = [(model, STAGING), (model, ALIASES), (model, PUBLISHED)]
    storage = project.storage
    registry, published, staging = (
        Registry(storage),
        PublicationLog(storage),
        PublicationLog(storage, "staging"),
    )
    with Mutation(project, f"promote-staged:{alias}", operation_key, logs) as op:
        cleared = staging.recorded(model, op.on(model, STAGING))  # an interrupted run got to the end
        registry.recorded(model, op.on(model, ALIASES))  # refuse news on any log before appending
        published.recorded(model, op.on(model, PUBLISHED))
        run = get_run(storage, model, cleared["from_run_id"]) if cleared else staged_run(storage, model)
        _verified_run(project, model, run.run_id)
        version = int(run.manifest["model_version"])
        event = registry.promote(model, version, alias, reason, force=force, operation=op.on(model, ALIASES))
        published.publish(model, run.run_id, reason, operation=op.on(model, PUBLISHED))
        if cleared is None:
            staging.clear(model, reason or "promoted", operation=op.on(model, STAGING))
        serving = op.finish()
    return {"alias_event": event, "run_id": run.run_id, "model_version": version, "serving": str(serving)}
