"""What reason codes cost: plain scoring, the default reason-code rows and all rows, on the same data.

    python benchmarks/reason_codes.py [--rows 200000] [--trees 300] [--workdir benchmarks/out] [--shares 0.05]

Every path is ``batchml.score`` of the same registered model on the same dataset version, in its own child
process, with only ``[models.X.scoring]`` changed: ``plain`` (reason_codes = 0), ``default`` (reason_codes = 3
and the default ``reason_rows``/``reason_share``) and ``all`` (reason_codes = 3, reason_rows = "all"). Wall
time is measured inside the child around ``batchml.score`` only. Data generation, training, snapshot,
registration and the model's reference predictions (computed once per model version; the "top" threshold
comes from them) are setup and are not timed. Results are printed as a table of seconds and ratios to
``plain`` and written to ``<workdir>/reason_codes_<rows>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import duckdb
import lightgbm as lgb
from _harness import peak_rss_mib, run_child
from score import MODEL, ensure_data, setup_batchml, train_baseline

from batchml.config import ScoringConfig

PATHS: dict[str, dict[str, Any]] = {
    "plain": {"reason_codes": 0},
    "default": {"reason_codes": 3},
    "all": {"reason_codes": 3, "reason_rows": "all"},
}


def configure(toml: Path, base: str, scoring: dict[str, Any]) -> None:
    """Write the project's config: `base` plus a `[models.MODEL.scoring]` table holding `scoring`."""
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in scoring.items())
    toml.write_text(f"{base}\n[models.{MODEL}.scoring]\n{lines}")


def child_score(toml: str, dataset: str) -> dict[str, Any]:
    """``batchml.score`` of the champion on the dataset version, with the config the parent wrote."""
    import batchml

    project = batchml.Project.open(toml)
    start = time.perf_counter()
    run = batchml.score(project, MODEL, alias="champion", dataset=dataset)
    seconds = time.perf_counter() - start
    if run.reused:
        raise RuntimeError(f"prediction run {run.run_id} was reused: the project is not fresh")
    uris = [project.storage.uri(f.path) for f in run.files]
    with duckdb.connect() as con:
        found = con.execute("SELECT count(reasons) FROM read_parquet(?)", [uris]).fetchone()
    params = run.manifest["key"]["params"]
    return {
        "seconds": seconds,
        "rows": run.rows,
        "rows_with_reasons": int(found[0]) if found else 0,
        "reason_rows": params.get("reason_rows"),
        "reason_threshold": params.get("reason_threshold"),
    }


def report(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results as a text table with ratios to the plain path."""
    base = results["plain"]["seconds"]
    lines = [
        f"rows={meta['rows']:,}  trees={meta['trees']}  machine: {meta['cores']} cores, "
        f"python {meta['python']}, lightgbm {meta['lightgbm']}",
        f"default: reason_rows {meta['default_rows']!r}, reason_share {meta['default_share']}",
        f"{'path':<10}{'seconds':>9}{'x plain':>9}{'rows w/ reasons':>17}{'share':>8}{'peak MiB':>10}  runs",
    ]
    for name, r in results.items():
        share = r["rows_with_reasons"] / r["rows"] if r["rows"] else 0.0
        lines.append(
            f"{name:<10}{r['seconds']:>9.2f}{r['seconds'] / base:>9.2f}{r['rows_with_reasons']:>17,}"
            f"{share:>8.1%}{r['peak_rss_mib']:>10.0f}  {r['runs_seconds']}"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments; in child mode score once, otherwise set up, run every path and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--repeat", type=int, default=1, help="runs per path; the fastest is reported")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset (plain always runs)")
    parser.add_argument(
        "--shares", default="", help="extra 'top' paths, comma-separated shares (to choose the default by)"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({**child_score(args.child[0], args.child[1]), "peak_rss_mib": peak_rss_mib()}))
        return

    import batchml
    from batchml.api import scoring_inputs

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data = ensure_data(workdir, args.rows, args.seed)
    setup = setup_batchml(workdir, data, train_baseline(data, args.trees, workdir))
    toml = Path(setup["toml"])
    base = toml.read_text()
    try:
        configure(toml, base, PATHS["default"])  # setup: the model's reference predictions, computed once
        scoring_inputs(batchml.Project.open(toml), MODEL, dataset=setup["dataset"])
        results: dict[str, dict[str, Any]] = {}
        paths = dict(PATHS)
        for share in filter(None, args.shares.split(",")):
            top = {"reason_codes": 3, "reason_rows": "top", "reason_share": float(share)}
            paths[f"top {float(share):g}"] = top
        chosen = [p for p in args.paths.split(",") if p != "plain"] + [p for p in paths if p not in PATHS]
        for name in ["plain", *chosen]:
            configure(toml, base, paths[name])
            runs = []
            for _ in range(args.repeat):
                runs.append(run_child(__file__, ["--child", str(toml), setup["dataset"]]))
                shutil.rmtree(Path(setup["project"], "store", "runs"))  # the next repeat scores afresh
            best = min(runs, key=lambda r: r["seconds"])
            results[name] = {**best, "runs_seconds": [round(r["seconds"], 2) for r in runs]}
    finally:
        shutil.rmtree(setup["project"])
    defaults = ScoringConfig()
    meta = {
        "rows": args.rows,
        "trees": setup["trees"],
        "seed": args.seed,
        "repeat": args.repeat,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "lightgbm": lgb.__version__,
        "default_rows": defaults.reason_rows,
        "default_share": defaults.reason_share,
    }
    print(report(results, meta))
    out = workdir / f"reason_codes_{args.rows}.json"
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
