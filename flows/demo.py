"""`make demo`: generate sample loans, run the whole pipeline with Prefect's ephemeral API, then score and
monitor a shifted batch of new applications, and show where everything is.

    python -m flows.demo [--rows N]

1. pipeline: snapshot data/raw/loans.csv -> train default_risk -> promote to champion -> score -> publish
2. new applications (a tenth as many, from a shifted population, no outcome yet): snapshot -> score with the
   champion -> publish
3. monitor flow on that run: drift against the training data, an Evidently report, alerts; the retrain the
   config asks for on drift finds no newer labelled data than the champion's, so it changes nothing

Everything stays inside the repository: data under data/ (git-ignored), Prefect's state under .prefect/.
Running it again reuses every dataset version, model version, prediction run, report and alert (nothing is
recomputed, nothing republished; the retrain is debounced).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "batchml.toml"
SOURCE = REPO / "data" / "raw" / "loans.csv"
NEW_APPLICATIONS = REPO / "data" / "raw" / "new_applications.csv"  # [datasets.new_applications] in CONFIG
MODEL = "default_risk"  # the model CONFIG trains on loans
DEFAULT_ROWS = 100_000

# Before prefect is imported: keep its state in the repo, and send nothing anywhere.
os.environ["PREFECT_HOME"] = str(REPO / ".prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

if TYPE_CHECKING:
    import batchml


def _relative(path: str | Path) -> str:
    """`path` relative to the current folder when it is inside it (shorter to read and to paste)."""
    try:
        return str(Path(path).absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def show(
    result: dict[str, Any], batch: dict[str, Any], monitored: dict[str, Any], project: batchml.Project
) -> None:
    """Print what each step made and where it is: SQL to try, the Evidently report, the Prefect UI."""
    import batchml
    from flows.common import serving_examples

    examples = serving_examples(project, MODEL)
    rule = "=" * 100
    print(f"\n{rule}\nbatchml demo: done\n{rule}")
    for m in result["models"]:
        print(f"1. {m['model']}: dataset {m['dataset']} ({m['dataset_rows']:,} rows)")
        print(f"    -> model v{m['model_version']} ({m['metrics']})")
        print(f"    -> run {m['run_id']} ({m['predictions']:,} predictions), published: {m['published']}")
        print(f"    reused from earlier runs: {m['reused']}")
    published = batch["published"] or {}
    print(f"2. new applications: dataset {batch['dataset']} ({batch['rows']:,} rows, no outcome yet)")
    state = "yes" if published.get("changed") else "already"
    print(f"    -> run {batch['run_id']}: scored by champion v{batch['model_version']}, published: {state}")
    print(f"    reused from earlier runs: {'run' if batch['reused'] else 'nothing'}")
    drift, retrain = monitored["drift"], monitored["retrain"]
    share = drift.get("drifted_share", 0.0)
    print(
        f"3. monitor: drift verdict {drift.get('verdict')} ({share:.0%} of features drifted; "
        f"prediction drifted: {drift.get('prediction_drifted')})"
    )
    for alert in monitored["alerts"]:
        print(f"    alert {alert['id']} ({alert['kind']}): {alert['detail']}")
    debounced = "none now (at most one per debounce_hours; see the retrains table)"
    print("    retrain: " + (f"{retrain['status']}: {retrain['detail']}" if retrain else debounced))
    report = _local(monitored["report"]["html_uri"])
    print(f"    Evidently report: {report}")

    print(f"\nServing DuckDB (read-only for apps): {examples['database']}")
    print("Tables and views: " + ", ".join(examples.get("tables", [])))
    con = batchml.connect(project)
    try:
        print("\nThe published predictions (the new applications):")
        print(
            con.sql(
                "SELECT model, model_version, entity_id, round(prediction, 4) AS prediction, "
                "predicted_class, run_id FROM predictions ORDER BY entity_id LIMIT 3"
            )
        )
        print("\nWhere each run's scoring and publishing spent their time (run_stats; busy seconds):")
        print(
            con.sql(
                "SELECT run_id, rows, predict_s, write_s, wall_s, rows_per_s, peak_rss_mib, publish_s "
                "FROM run_stats ORDER BY run_id"
            )
        )
    finally:
        con.close()
    python = _relative(sys.executable)
    cli = _relative(Path(sys.executable).parent / "batchml")
    run_id = batch["run_id"]
    print(f"Try it (from {REPO}):")
    for sql in (
        examples["sql"],
        "SELECT feature, statistic, round(value, 3) AS value, threshold, drifted FROM drift_metrics "
        f"WHERE run_id = '{run_id}' ORDER BY drifted DESC, value DESC LIMIT 8",
        "SELECT id, kind, detail, at FROM alerts ORDER BY at",
        "SELECT id, status, detail FROM retrains ORDER BY at",
    ):
        print(f'  {cli} query "{sql}"')
    print(
        f"  {python} -c \"import batchml; con = batchml.connect(history=True); print(con.sql('SELECT run_id, "
        "count(*) FROM prediction_history GROUP BY run_id'))\""
    )
    print(
        "  predictions = the published run per model; prediction_history = every run ever published\n"
        "  (batchml.connect(history=True) or batchml query --history: read from the run files);\n"
        "  drift_metrics, drift_runs, alerts, retrains = monitoring; models, runs, datasets = the catalog;\n"
        "  run_stats = each run's scoring (busy seconds per stage, rows/s, peak RSS) and publish seconds"
    )
    print(f"Evidently report (open in a browser): {report}")
    print(
        f"Prefect UI with this demo's flow runs, artifacts and alert events: make serve "
        f"SERVE_HOME={REPO / '.prefect'}  (then http://127.0.0.1:4200)\n{rule}"
    )


def _local(uri: str) -> str:
    """A report's storage URI as a path to open (local storage), else the URI itself."""
    path = uri.removeprefix("file://")
    return uri if "://" in path else _relative(path)


def new_applications(rows: int, after: int) -> Path:
    """Write `rows` new applications (ids after the first `after` loans) unless the file exists already:
    January 2026, from a shifted population (`batchml.testing.shift_loans`), outcomes not known yet."""
    import datetime as dt

    from batchml.testing import generate_loans, shift_loans

    if NEW_APPLICATIONS.exists():
        print(f"new applications: {NEW_APPLICATIONS} exists, keeping it")
        return NEW_APPLICATIONS
    print(f"new applications: writing {rows:,} shifted applications to {NEW_APPLICATIONS}")
    batch = generate_loans(rows, seed=8, start=dt.date(2026, 1, 1), months=1, offset=after)
    tmp = NEW_APPLICATIONS.with_name(f".{NEW_APPLICATIONS.name}.tmp")
    shift_loans(batch).drop("defaulted").write_csv(tmp)
    tmp.replace(NEW_APPLICATIONS)  # a crash leaves no half-written batch that a rerun would keep
    return NEW_APPLICATIONS


def main(argv: list[str] | None = None) -> int:
    """Generate the data if needed, run the pipeline flow, print the result."""
    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows of sample data to generate")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    import batchml
    from batchml.scoring.publications import PublicationLog
    from batchml.testing import write_loans
    from flows.ingest import snapshot_dataset
    from flows.monitor import monitor
    from flows.pipeline import pipeline
    from flows.score import score_and_publish

    if SOURCE.exists():
        print(f"sample data: {SOURCE} exists, keeping it")
    else:
        print(f"sample data: writing {args.rows:,} loans to {SOURCE}")
        write_loans(SOURCE, rows=args.rows, seed=7)
    config = str(CONFIG)
    project = batchml.Project.open(CONFIG)
    # Publish the first run only once: on a rerun the new applications' run is published, and putting the
    # training data's predictions back in front of it would be a change, not a reuse.
    first_time = PublicationLog(project.storage).current(MODEL) is None
    result = pipeline(model=MODEL, publish=first_time, config=config)
    new_applications(max(args.rows // 10, 1), after=args.rows)
    snap = snapshot_dataset("new_applications", config=config)
    batch = score_and_publish(MODEL, dataset=snap["dataset"], config=config, reason="demo: new applications")
    monitored = monitor(MODEL, run_id=batch["run_id"], config=config)
    show(result, batch, monitored, project)
    print(f"finished in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
