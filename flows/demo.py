"""`make demo`: generate sample loans, run the whole pipeline with Prefect's ephemeral API, show the result.

    python -m flows.demo [--rows N]

Everything stays inside the repository: data under data/ (git-ignored), Prefect's state under .prefect/.
Running it again reuses every dataset version, model version and prediction run (nothing is recomputed).
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


def show(result: dict[str, Any], project: batchml.Project) -> None:
    """Print where the predictions are and how to query them."""
    import batchml
    from flows.common import serving_examples

    models = result["models"]
    examples = serving_examples(project, models[0]["model"] if models else None)
    rule = "=" * 100
    print(f"\n{rule}\nbatchml demo: done\n{rule}")
    for m in models:
        print(f"  {m['model']}: dataset {m['dataset']} ({m['dataset_rows']:,} rows)")
        print(f"    -> model v{m['model_version']} ({m['metrics']})")
        print(f"    -> run {m['run_id']} ({m['predictions']:,} predictions), published: {m['published']}")
        print(f"    reused from earlier runs: {m['reused']}")
    print(f"\nServing DuckDB (read-only for apps): {examples['database']}")
    print("Tables and views: " + ", ".join(examples.get("tables", [])))
    con = batchml.connect(project)
    try:
        print("\nA sample of the published predictions:")
        print(
            con.sql(
                "SELECT model, model_version, entity_id, round(prediction, 4) AS prediction, "
                "predicted_class, run_id FROM predictions ORDER BY entity_id LIMIT 5"
            )
        )
    finally:
        con.close()
    python = _relative(sys.executable)
    venv_cli = _relative(Path(sys.executable).parent / "batchml")
    print(f"Try it (from {REPO}):")
    print(f'  {venv_cli} query "{examples["sql"]}"')
    print(
        f"  {python} -c \"import batchml; con = batchml.connect(); print(con.sql('SELECT model, count(*) "
        "FROM predictions GROUP BY model'))\""
    )
    print(
        "  predictions = the published run per model; prediction_history = every run ever published;\n"
        "  models, model_aliases, runs, publications, datasets = the catalog (rebuilt from storage)"
    )
    print(f"Prefect state of this demo: {REPO / '.prefect'} (ephemeral API, no server)\n{rule}")


def main(argv: list[str] | None = None) -> int:
    """Generate the data if needed, run the pipeline flow, print the result."""
    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows of sample data to generate")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    import batchml
    from batchml.testing import write_loans
    from flows.pipeline import pipeline

    if SOURCE.exists():
        print(f"sample data: {SOURCE} exists, keeping it")
    else:
        print(f"sample data: writing {args.rows:,} loans to {SOURCE}")
        write_loans(SOURCE, rows=args.rows, seed=7)
    project = batchml.Project.open(CONFIG)
    result = pipeline(config=str(CONFIG))
    show(result, project)
    print(f"finished in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
