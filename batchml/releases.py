"""Canary releases by hand: start, stop and conclude a model's canary (what `batchml experiments` calls).

Scoring ramps a canary one step per healthy run and rolls it back on a breach by itself
(`batchml.serving.canary`, `api.score_with_shadows`); these are the decisions a person makes.
"""

from __future__ import annotations

from typing import Any

from batchml.api import promote
from batchml.config import CanaryConfig
from batchml.errors import ConfigError, NotFoundError
from batchml.models.registry import Registry
from batchml.monitoring.shadow import SERVED_ALIAS
from batchml.names import check_name
from batchml.project import Project
from batchml.serving import canary
from batchml.serving.operations import catch_up


def canary_config(project: Project, model: str) -> CanaryConfig:
    """`model`'s `[models.X.canary]` section; ConfigError naming the model if it has none."""
    spec = project.config.model(check_name("model", model))
    if spec.canary is None:
        raise ConfigError(f"model {model!r} has no [models.{model}.canary] section: add one to run a canary")
    return spec.canary


def start_canary(project: Project, model: str, version: int, reason: str) -> dict[str, Any]:
    """Point `model`'s canary alias at `version` (gates apply); the next champion score serves it."""
    return promote(project, model, version, alias=canary_config(project, model).alias, reason=reason)


def _canary_holding(project: Project, model: str) -> tuple[CanaryConfig, int]:
    config = canary_config(project, model)
    held = canary.holding(Registry(project.storage), model, config.alias)
    if held is None:
        hint = f"start one: batchml experiments start {model} VERSION"
        raise NotFoundError(f"canary of model {model!r}", config.alias, [f"none ({hint})"])
    return config, held[0]


def stop_canary(project: Project, model: str, reason: str) -> dict[str, Any]:
    """Stop the running canary by hand: its alias leaves the version (an alias event with `reason`)."""
    config, version = _canary_holding(project, model)
    event = Registry(project.storage).withdraw(model, config.alias, version, reason, automatic=False)
    catch_up(project)  # the alias log moved: the serving file stops serving the canary arm
    return event


def conclude_canary(project: Project, model: str, reason: str, *, force: bool = False) -> dict[str, Any]:
    """Promote the canary's version to champion (gates apply) and end the canary; re-running after a crash
    between the two finishes the second."""
    config, version = _canary_holding(project, model)
    promoted = promote(project, model, version, SERVED_ALIAS, reason, force=force)
    withdrawn = Registry(project.storage).withdraw(model, config.alias, version, reason, automatic=False)
    catch_up(project)
    return {"promoted": promoted, "withdrawn": withdrawn}
