"""What a score run scores: one version's inputs, and the arms a champion run brings along.

    scoring_inputs   the model version, dataset version and options scoring one version uses
    extra_arms       the versions scored beside the champion, each once, with why (shadow, canary, variant)
    arm_scorer       one arm's model, engine and options, ready to score (arm_inputs: without the engine)
    after_scoring    the shadow comparisons (recorded; alerts), the canary's step and the A/B experiment's
                     arms event, from the arms' runs

Both ways of scoring a champion use these, so they score the same arms and do the same after scoring:
`api.score_with_shadows` (one process, one read of the data) and the score flow's partitioned path
(`flows/score.py`: each partition task reads its rows once for every arm). A new kind of arm adds its
versions in `extra_arms`, with a role, and what follows in `after_scoring`.
"""

from __future__ import annotations

import contextvars
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa

from batchml.config import ShadowConfig
from batchml.data import datasets
from batchml.data.datasets import DatasetVersion
from batchml.errors import BatchMLError, ConfigError
from batchml.models.registry import ModelVersion, Registry
from batchml.monitoring.drift_reference import reference_profile
from batchml.monitoring.run_compare import read_run
from batchml.monitoring.shadow import ShadowScoring, compare_shadow, shadow_versions
from batchml.project import Project
from batchml.scoring.engine_choice import choose, load_engine
from batchml.scoring.reason_rows import top_threshold
from batchml.scoring.runs import PredictionRun, ScoringOptions
from batchml.scoring.together import Scorer
from batchml.serving import canary, experiments

#: Why an arm is scored: compared with the champion's run (shadow), stepped on the ramp (canary), or
#: serving a variant of the running A/B experiment (variant).
SHADOW, CANARY, VARIANT = "shadow", "canary", "variant"


@dataclass(frozen=True)
class Arm:
    """A version scored beside the champion, why (`roles`), and the engine its partitions must use (None:
    chosen when it is scored)."""

    version: int
    roles: tuple[str, ...]
    engine: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A small dict for a Prefect task's parameters."""
        return {"version": self.version, "roles": list(self.roles), "engine": self.engine}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Arm:
        """The arm `to_dict` gave."""
        return cls(int(data["version"]), tuple(data["roles"]), data.get("engine"))


def extra_arms(project: Project, model: str, served: ModelVersion) -> list[Arm]:
    """The versions to score beside `served` (the champion), each once: the shadow versions, the canary
    alias's holder, then the running experiment's variants. The one list both ways of scoring use."""
    registry = Registry(project.storage)
    spec = project.config.models.get(model)
    roles: dict[int, list[str]] = {}
    config = spec.shadow if spec is not None else ShadowConfig()
    for shadow in shadow_versions(registry, model, config, served):
        roles.setdefault(shadow.version, []).append(SHADOW)
    held = canary.holding(registry, model, spec.canary.alias) if spec and spec.canary else None
    if held is not None and held[0] != served.version:
        roles.setdefault(held[0], []).append(CANARY)
    for variant in experiments.arm_versions(registry, model, served):
        roles.setdefault(variant.version, []).append(VARIANT)
    return [Arm(version, tuple(why)) for version, why in roles.items()]


def planned_arms(project: Project, model: str, served: ModelVersion, dataset: str) -> list[Arm]:
    """`extra_arms`, each with the engine chosen now, so that every partition scores it with that one."""
    return [
        replace(arm, engine=scoring_inputs(project, model, version=arm.version, dataset=dataset)[2].engine)
        for arm in extra_arms(project, model, served)
    ]


def arm_inputs(project: Project, model: str, arm: Arm, dataset: str) -> tuple[ModelVersion, ScoringOptions]:
    """`arm`'s model version and scoring options on dataset version `dataset` (`NAME@VERSION`)."""
    chosen, _, options = scoring_inputs(
        project, model, version=arm.version, dataset=dataset, engine=arm.engine
    )
    return chosen, options


def arm_scorer(project: Project, model: str, arm: Arm, dataset: str) -> Scorer:
    """What scores `arm` on dataset version `dataset` (`NAME@VERSION`)."""
    chosen, options = arm_inputs(project, model, arm, dataset)
    return Scorer(chosen, *load_engine(Registry(project.storage), chosen, options.engine), options)


def after_scoring(
    project: Project,
    model: str,
    served: PredictionRun,
    arms: list[Arm],
    results: list[PredictionRun | BatchMLError],
) -> ShadowScoring:
    """Compare each shadow arm's run with `served` (recorded; an alert beyond the limits), step the
    canary and record the running experiment's arms (its variants that failed are served control); an arm
    that failed (its result an error) is reported in `failed` and nothing else."""
    spec = project.config.models.get(model)
    config = spec.shadow if spec is not None else ShadowConfig()
    scored = ShadowScoring(served, [], [], {})
    for arm, result in zip(arms, results, strict=True):
        if not isinstance(result, PredictionRun):
            scored.failed[arm.version] = str(result)
            continue
        if CANARY in arm.roles and spec is not None and spec.canary is not None:
            scored.canary.update(canary.step(project.storage, model, spec.canary, served, result))
        if SHADOW in arm.roles:
            scored.shadows.append(result)
    lock = threading.Lock()
    served_table = functools.cache(lambda: read_run(project.storage, served))

    def served_rows() -> pa.Table:  # read once, by the first comparison that needs it
        with lock:
            return served_table()

    def compare(run: PredictionRun) -> dict[str, Any]:
        return compare_shadow(project.storage, served, run, config, served_rows)

    # Side by side: sorting, Arrow and DuckDB release the GIL (each comparison is mostly single-threaded).
    # Each in a copy of this context, so the records and alerts it writes name this flow run (provenance).
    contexts = [contextvars.copy_context() for _ in scored.shadows]
    with ThreadPoolExecutor(max(1, min(len(scored.shadows), os.cpu_count() or 1))) as pool:
        scored.comparisons.extend(pool.map(lambda c, run: c.run(compare, run), contexts, scored.shadows))
    scored.experiment.update(experiments.record_arms(project.storage, model, served, list(results)))
    return scored


def scoring_inputs(
    project: Project,
    model: str,
    *,
    alias: str | None = "champion",
    version: int | str | None = None,
    dataset: str | None = None,
    engine: str | None = None,
) -> tuple[ModelVersion, DatasetVersion, ScoringOptions]:
    """The model version, dataset version and options `score` would use (for partitioned scoring).

    The options name the engine that predicts here: `auto` is resolved now (see `engine_choice.choose`).
    `engine` replaces the configured one: partitions pass the engine their plan chose, so that every
    partition scores with it (or fails saying why) and all of them write to one run.
    """
    registry = Registry(project.storage)
    chosen = registry.resolve(model, alias=None if version is not None else alias, version=version)
    if dataset is None:
        configured = project.config.models.get(model)
        trained_on = chosen.card.get("dataset_version") or ""
        name = configured.dataset if configured else trained_on.partition("@")[0]
        if not name:
            raise ConfigError(f"model {model!r} has no configured dataset: pass dataset='NAME@VERSION'")
        dataset = f"{name}@latest"
    version_ = datasets.get_version(project.storage, dataset)
    spec = project.config.models.get(model)
    if spec is None:
        return chosen, version_, ScoringOptions()
    scoring = spec.scoring
    engine_name, fallback = choose(chosen, engine or scoring.engine, scoring.tolerance)
    threshold = None
    if scoring.reason_codes and scoring.reason_rows == "top":  # fixed by the model, not by the batch
        predictions = reference_profile(project.storage, chosen).get("predictions")
        threshold = top_threshold(predictions, scoring.reason_share, chosen.ref)
    options = ScoringOptions(
        reason_codes=scoring.reason_codes,
        reason_rows=scoring.reason_rows,
        reason_share=scoring.reason_share,
        reason_threshold=threshold,
        expectations=spec.expectations,
        max_quarantine_share=scoring.max_quarantine_share,
        engine=engine_name,
        engine_fallback=fallback,
    )
    return chosen, version_, options
