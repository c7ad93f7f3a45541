"""End to end: snapshot -> train -> promote -> score -> publish, for one model or every configured model."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

import batchml
from batchml.models.registry import RegistryReader
from batchml.redact import redact_url
from flows.common import artifact_key, config_ref, markdown_table, metrics_text, open_project, report
from flows.ingest import snapshot_dataset
from flows.score import score_and_publish
from flows.train import train_model


@flow(name="pipeline")
def pipeline(
    model: str | None = None,
    alias: str = "champion",
    publish: bool = True,
    sources: dict[str, str] | None = None,
    config: str | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline for `model` (None: every model in the config).

    Each model's dataset is snapshotted once (from `sources[dataset]`, else its configured source); the
    model is trained on exactly that version, promoted to `alias`, and that version is scored and published.
    Every step is idempotent, so a rerun on unchanged data reuses every version and run.
    """
    logger = get_run_logger()
    config = config_ref(config)
    project = open_project(config)
    names = [model] if model is not None else sorted(project.config.models)
    if not names:
        raise batchml.ConfigError("no models configured: add a [models.NAME] section to batchml.toml")
    specs = {name: project.config.model(name) for name in names}
    logger.info("pipeline for %s (storage %s)", ", ".join(names), redact_url(project.storage.url))

    snapshots = {
        name: snapshot_dataset(name, (sources or {}).get(name), config)
        for name in dict.fromkeys(spec.dataset for spec in specs.values())
    }
    results = []
    for name, spec in specs.items():
        snap = snapshots[spec.dataset]
        dataset = snap["dataset"]
        trained = train_model(name, dataset=dataset, promote_to=alias, config=config)
        if trained["held_back"]:
            holder = RegistryReader(project.storage).aliases(name).get(alias)
            if holder is None:
                raise batchml.PromotionError(nothing_to_score(trained, alias))
            logger.warning("%s held back; scoring %s v%s instead", trained["ref"], alias, holder)
        scored = score_and_publish(name, alias=alias, dataset=dataset, publish=publish, config=config)
        results.append(
            {
                "model": name,
                "dataset": dataset,
                "dataset_rows": snap["rows"],
                "model_version": trained["version"],
                "metrics": metrics_text(trained["metrics"]),
                "run_id": scored["run_id"],
                "predictions": scored["rows"],
                "published": (
                    "no"
                    if not scored["published"]
                    else "yes"
                    if scored["published"]["changed"]
                    else "already"
                ),
                "reused": ", ".join(
                    step
                    for step, done in (("dataset", snap), ("model", trained), ("run", scored))
                    if done["reused"]
                )
                or "nothing",
            }
        )
    database = str(batchml.database_path(project))
    logger.info("published predictions are in %s", database)
    report(
        artifact_key("pipeline"),
        "Pipeline run",
        f"Models: {', '.join(names)}. Serving DuckDB: `{database}`\n\n" + markdown_table(results),
        table=results,
    )
    return {"database": database, "models": results}


def nothing_to_score(trained: dict[str, Any], alias: str) -> str:
    """Why the pipeline stops: the new version was held back and no version holds `alias` to score with."""
    ref, model, version = trained["ref"], trained["model"], trained["version"]
    force = " --force --reason '...'" if not trained["gates"]["passed"] else ""
    return (
        f"{ref} was trained but not promoted to {alias!r} ({trained['held_back']}), and no version holds "
        f"{alias!r}, so there is nothing to score. Review it with `batchml models show {ref}`; to promote "
        f"it anyway: batchml models promote {model} {version} --alias {alias}{force}"
    )
