"""Canary releases and A/B experiments by hand: start, stop and conclude (what `batchml experiments` calls).

Scoring ramps a canary one step per healthy run and rolls it back on a breach by itself
(`batchml.serving.canary`, `api.score_with_shadows`); these are the decisions a person makes.
"""

from __future__ import annotations

from typing import Any

from batchml.api import promote
from batchml.config import CanaryConfig
from batchml.errors import ConfigError, ConflictError, NotFoundError, PromotionError
from batchml.models.promotion import refuse_promotion
from batchml.models.registry import Registry
from batchml.monitoring import arm_compare
from batchml.monitoring.shadow import SERVED_ALIAS
from batchml.names import check_name
from batchml.project import Project
from batchml.serving import canary, experiments
from batchml.serving.operations import catch_up
from batchml.store.eventlog import append_decided


def canary_config(project: Project, model: str) -> CanaryConfig:
    """`model`'s `[models.X.canary]` section; ConfigError naming the model if it has none."""
    spec = project.config.model(check_name("model", model))
    if spec.canary is None:
        raise ConfigError(f"model {model!r} has no [models.{model}.canary] section: add one to run a canary")
    return spec.canary


def start_canary(project: Project, model: str, version: int, reason: str) -> dict[str, Any]:
    """Point `model`'s canary alias at `version` (gates apply); the next champion score serves it.
    Refused while an A/B experiment runs on the model (one split of the entities at a time)."""
    running = experiments.running(experiments.event_log(project.storage, check_name("model", model)).read())
    if running is not None:
        raise ConflictError(f"experiment {running['experiment']!r} is running on model {model!r}: stop or "
                            f"conclude it before starting a canary")  # fmt: skip
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


# Named A/B experiments (`batchml.serving.experiments`): start, stop and conclude are events.


def _variants(registry: Registry, model: str, given: list[tuple[str, str]], shares: list[float]) -> list[Any]:
    """The variants as recorded: name, what was asked for, the version it is now, share."""
    if len(given) < 2:
        raise ConfigError(
            f"an experiment needs at least two variants, got {len(given)}: --variant NAME=VERSION"
        )
    names = [check_name("variant", name) for name, _ in given]
    if len(set(names)) != len(names):
        raise ConfigError(f"variant names {names} repeat: each variant needs its own name")
    if len(shares) != len(given):
        raise ConfigError(
            f"{len(shares)} shares {shares} for {len(given)} variants: give one share per variant"
        )
    if any(not 0 < s <= 1 for s in shares) or abs(sum(shares) - 1) > 1e-9:
        raise ConfigError(
            f"shares {shares} must each lie in (0, 1] and sum to 1 (they sum to {sum(shares):g})"
        )
    holders = registry.aliases(model)
    variants = []
    for (name, requested), share in zip(given, shares, strict=True):
        if requested.lstrip("v").isdigit():
            version = registry.get(model, requested).version
        elif requested in holders:
            version = holders[requested]
        else:
            held = [f"{a} (v{v})" for a, v in holders.items()]
            raise NotFoundError(f"version or alias of model {model!r} for variant {name!r}", requested, held)
        variants.append({"name": name, "requested": requested, "model_version": version, "share": share})
    return variants


def start_experiment(
    project: Project,
    model: str,
    name: str,
    given: list[tuple[str, str]],
    shares: list[float],
    *,
    control: str | None = None,
    salt: str | None = None,
    metric: str | None = None,
    goal: str | None = None,
    min_samples: int = 500,
    reason: str = "",
    revise: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Start experiment `name` on `model` (an immutable experiment version); with `revise`, replace the
    running version of `name` by a new one (other variants or shares). Gates apply to every variant."""
    spec = project.config.model(check_name("model", model))
    check_name("experiment", name)
    registry = Registry(project.storage)
    variants = _variants(registry, model, given, shares)
    control = control or ("control" if "control" in [v["name"] for v in variants] else variants[0]["name"])
    if control not in [v["name"] for v in variants]:
        raise NotFoundError("control variant", control, [v["name"] for v in variants])
    metric = metric or arm_compare.TASK_METRICS[spec.task][0]
    if metric not in arm_compare.TASK_METRICS[spec.task]:
        raise NotFoundError(
            f"metric of a {spec.task} model", metric, list(arm_compare.TASK_METRICS[spec.task])
        )
    goal = goal or arm_compare.default_goal(metric)
    if goal not in ("increase", "decrease"):
        raise ConfigError(f"goal {goal!r} is invalid: use increase or decrease")
    for v in variants:
        arm = registry.get(model, v["model_version"])
        try:
            refuse_promotion(arm.ref, f"variant {v['name']}", arm.card.get("gates"), force, reason)
        except PromotionError as exc:  # its hint names `models promote`: here the override is on start
            refused = str(exc).split(". To promote anyway")[0]
            raise PromotionError(f"{refused}. To start anyway: add --force --reason '...'") from None
    if spec.canary is not None and canary.holding(registry, model, spec.canary.alias) is not None:
        raise ConflictError(
            f"model {model!r} runs a canary ({spec.canary.alias!r}): stop or conclude it "
            f"before starting experiment {name!r}: batchml experiments stop {model}"
        )
    log_ = experiments.event_log(project.storage, model)
    events = log_.read()
    current = experiments.running(events)
    versions = [e for e in experiments.starts(events) if e["experiment"] == name]
    if current is not None and current["experiment"] != name:
        raise ConflictError(f"experiment {current['experiment']!r} is running on model {model!r}: stop or "
                            f"conclude it first (one experiment at a time per model)")  # fmt: skip
    if versions and not (revise and current is not None):
        state = "is running" if current is not None else "has ended"
        hint = "pass --revise to start a new version of it" if current else "choose another name"
        raise ConflictError(f"experiment {name!r} of model {model!r} already exists and {state}: {hint}")
    if revise and current is None:
        raise NotFoundError(
            f"running experiment of model {model!r}", name, [], "--revise changes a running one"
        )
    event = {"action": "start", "experiment": name, "experiment_version": len(versions) + 1,
             "variants": variants, "control": control, "salt": salt or f"{model}:{name}", "metric": metric,
             "goal": goal, "min_samples": min_samples, "reason": reason}  # fmt: skip
    started = append_decided(log_, events, event, None, None, experiments.subject(model))
    catch_up(project)
    return started


def _running(project: Project, model: str, name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    project.config.model(check_name("model", model))
    events = experiments.event_log(project.storage, model).read()
    current = experiments.running(events)
    if current is None or current["experiment"] != name:
        ended = [e for e in events if e["action"] in experiments.ENDS and e["experiment"] == name]
        if ended:  # a rerun after a crash, or twice: the ending is the answer
            return events, ended[-1]
        raise NotFoundError(f"running experiment of model {model!r}", name,
                            [current["experiment"]] if current else [])  # fmt: skip
    return events, current


def stop_experiment(project: Project, model: str, name: str, reason: str) -> dict[str, Any]:
    """Stop experiment `name` (an event); every entity is served the published run again."""
    events, current = _running(project, model, name)
    if current["action"] != "start":
        return current
    event = {"action": "stop", "experiment": name, "experiment_version": current["experiment_version"]}
    log_ = experiments.event_log(project.storage, model)
    stopped = append_decided(log_, events, event | {"reason": reason}, None, None, experiments.subject(model))
    catch_up(project)
    return stopped


def conclude_experiment(
    project: Project, model: str, name: str, winner: str, reason: str, *, force: bool = False
) -> dict[str, Any]:
    """Promote the variant `winner` to champion (gates apply, as for promote) and end experiment `name`
    (a `conclude` event naming the winner); re-running after a crash between the two finishes the second."""
    events, current = _running(project, model, name)
    if current["action"] == "conclude" and current["winner"] == winner:  # a rerun: already done
        return {"promoted": None, "concluded": current}
    if current["action"] != "start":
        ended = (
            f"concluded with winner {current['winner']!r}" if current["action"] == "conclude" else "stopped"
        )
        raise ConflictError(f"experiment {name!r} of model {model!r} was {ended} at {current.get('at')}: "
                            f"it cannot be concluded with winner {winner!r} now")  # fmt: skip
    arms = {v["name"]: v for v in current["variants"]}
    if winner not in arms:
        raise NotFoundError(f"variant of experiment {name!r}", winner, sorted(arms))
    version = int(arms[winner]["model_version"])
    promoted = promote(project, model, version, SERVED_ALIAS, reason, force=force)
    event = {"action": "conclude", "experiment": name, "experiment_version": current["experiment_version"],
             "winner": winner, "winner_version": version, "reason": reason}  # fmt: skip
    log_ = experiments.event_log(project.storage, model)
    concluded = append_decided(log_, events, event, None, None, experiments.subject(model))
    catch_up(project)
    return {"promoted": promoted, "concluded": concluded}
