"""Train a model on a dataset version, register it, and optionally point an alias at it."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

import batchml
from batchml.models.promotion import describe, failed_checks
from batchml.models.registry import RegistryReader
from flows.common import (
    artifact_key,
    batch_task,
    config_ref,
    markdown_table,
    metrics_text,
    open_project,
    operation_key,
    report,
)


@batch_task
def train(
    model: str, dataset: str | None, params: dict[str, Any] | None, config: str | None
) -> dict[str, Any]:
    """Train `model` (idempotent: same data, spec and params return the existing version)."""
    project = open_project(config)
    version = batchml.train(project, model, dataset=dataset, params=params)
    card = version.card
    return {
        "model": model,
        "version": version.version,
        "ref": version.ref,
        "dataset": card.get("dataset_version"),
        "metrics": card.get("metrics", {}),
        "num_trees": card.get("num_trees"),
        "reused": version.reused,
        "gates": card.get("gates") or {"passed": True, "checks": []},
        "auto_promote": project.config.model(model).gates.auto_promote,
    }


def held_back(result: dict[str, Any]) -> str | None:
    """Why the train flow does not promote this version on its own (None: it may)."""
    failed = [describe(c) for c in failed_checks(result["gates"])]
    if failed:
        return f"gates failed: {'; '.join(failed)}"
    return None if result["auto_promote"] else "gates.auto_promote is false"


@batch_task
def promote(model: str, version: int, alias: str, reason: str, config: str | None) -> dict[str, Any]:
    """Point `alias` of `model` at `version`, unless it already points there (then nothing is recorded)."""
    project = open_project(config)
    previous = RegistryReader(project.storage).aliases(model).get(alias)
    if previous != version:
        key = operation_key("promote", model, alias, version)
        batchml.promote(project, model, version, alias, reason=reason, operation_key=key)
    return {"alias": alias, "version": version, "previous": previous, "changed": previous != version}


@flow(name="train-model")
def train_model(
    model: str,
    dataset: str | None = None,
    params: dict[str, Any] | None = None,
    promote_to: str | None = "champion",
    config: str | None = None,
    reason: str = "flow train-model",
) -> dict[str, Any]:
    """Train `model` on `dataset` (`NAME@VERSION`; default: latest of its dataset) and promote it to
    `promote_to` (None: register only). `params` override the configured LightGBM parameters.

    The version is promoted only if every promotion gate passed and `gates.auto_promote` is true; otherwise
    it stays registered, and the log and the artifact say why (`held_back` in the result)."""
    logger = get_run_logger()
    config = config_ref(config)
    result = train(model, dataset, params, config)
    logger.info(
        "model %s: %s on %s (%s)",
        result["ref"],
        "reused existing version" if result["reused"] else "trained new version",
        result["dataset"],
        metrics_text(result["metrics"]),
    )
    promotion = None
    held = held_back(result) if promote_to is not None else None
    if held is not None:
        logger.warning("not promoting %s to %s: %s", result["ref"], promote_to, held)
    elif promote_to is not None:
        promotion = promote(model, result["version"], promote_to, reason, config)
        logger.info(
            "alias %s of %s: %s v%s",
            promote_to,
            model,
            "moved to" if promotion["changed"] else "already at",
            result["version"],
        )
    moved = (
        f"**not promoted** to `{promote_to}`: {held}"
        if held is not None
        else "not promoted"
        if promotion is None
        else f"alias `{promote_to}`: v{promotion['previous']} -> v{promotion['version']}"
        if promotion["changed"]
        else f"alias `{promote_to}` already at v{promotion['version']}"
    )
    metrics = [{"metric": k, "value": v} for k, v in result["metrics"].items()]
    verdict = {True: "pass", False: "FAIL", None: "skipped"}
    checks = [{**c, "passed": verdict[c["passed"]]} for c in result["gates"]["checks"]]
    gates = "passed" if result["gates"]["passed"] else "FAILED"
    report(
        artifact_key("model", model),
        f"Model {result['ref']}",
        f"{'Reused' if result['reused'] else 'Trained'} **{result['ref']}** on `{result['dataset']}` "
        f"({result['num_trees']} trees); {moved}.\n\n## Metrics\n\n"
        + markdown_table(metrics)
        + f"\n\n## Gates: {gates}\n\n"
        + markdown_table(checks),
    )
    return {**result, "promotion": promotion, "held_back": held}
