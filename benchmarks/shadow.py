"""Shadow scoring benchmark: the champion alone against the champion + N shadow versions (one read).

    python benchmarks/shadow.py [--rows 1000000] [--trees 200] [--shadows 2] [--engine lightgbm]
                                [--partitions 1] [--json]

Paths, each in its own child process on a fresh project (setup not timed): ``alone`` scores the champion
(``batchml.score(..., shadows=False)``); ``shadows`` scores the champion and ``--shadows`` other versions
(same size, other seeds) with ``batchml.api.score_with_shadows`` from one read of the data, and compares each
shadow run with the champion's (the comparisons are timed too). Target: ratio <= 2.2 for 2 shadows.
``--partitions N`` (> 1) scores both paths as the score flow's partitioned path does, without Prefect: N
partitions on N threads (the default task runner's way), each reading its rows once for every version, then
the commit of each version's run and the shadow comparisons.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import lightgbm as lgb
import polars as pl
from _harness import peak_rss_mib, run_child
from score import CATEGORICAL, ENTITY, MODEL, TARGET, TIMESTAMP, TRAIN_ROWS, ensure_data, feature_names


def train_variant(data: Path, trees: int, seed: int, workdir: Path) -> Path:
    """A LightGBM model of `trees` trees; another `seed` makes another model of the same size."""
    path = workdir / f"{data.stem}_trees{trees}_seed{seed}.txt"
    if path.exists():
        return path
    frame = pl.scan_parquet(data).head(TRAIN_ROWS).collect().to_pandas()
    for column in CATEGORICAL:
        frame[column] = frame[column].astype("category")
    params = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 31, "verbose": -1, "seed": seed,
              "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1}  # fmt: skip
    booster = lgb.train(params, lgb.Dataset(frame[feature_names(data)], label=frame[TARGET]), trees)
    booster.save_model(str(path))
    return path


def setup(workdir: Path, data: Path, models: list[Path], engine: str) -> dict[str, Any]:
    """A fresh project: the data snapshot, the models registered (v1 champion), v2.. configured as shadows."""
    import batchml

    root = Path(tempfile.mkdtemp(prefix="shadow_", dir=workdir))
    toml = root / "batchml.toml"
    shadows = ", ".join(str(v) for v in range(2, len(models) + 1))
    toml.write_text(
        f'[storage]\nroot = "store"\n\n[models.{MODEL}]\ndataset = "loans"\nentity_id = "{ENTITY}"\n'
        f'timestamp = "{TIMESTAMP}"\ntarget = "{TARGET}"\ntask = "binary"\n\n'
        f'[models.{MODEL}.scoring]\nengine = "{engine}"\n\n[models.{MODEL}.shadow]\nversions = [{shadows}]\n'
    )
    project = batchml.Project.open(toml)
    dv = batchml.snapshot_dataset(project, "loans", str(data))
    for path in models:
        booster = lgb.Booster(model_file=str(path))
        batchml.register_model(project, MODEL, booster, entity_id=ENTITY, dataset=dv.ref, target=TARGET)
    batchml.promote(project, MODEL, 1, alias="champion", reason="benchmark")
    return {"toml": str(toml), "dataset": dv.ref, "project": str(root)}


def partitioned(project: Any, dataset: str, partitions: int, shadows: bool) -> list[Any]:
    """The champion's run (and its shadows' runs), scored and committed as the partitioned flow does."""
    from concurrent.futures import ThreadPoolExecutor

    from batchml.arms import Arm, after_scoring, arm_inputs, arm_scorer, planned_arms, scoring_inputs
    from batchml.scoring import partitions as parts

    chosen, version, options = scoring_inputs(project, MODEL, dataset=dataset)
    arms = planned_arms(project, MODEL, chosen, version.ref) if shadows else []
    every = [Arm(chosen.version, (), options.engine), *arms]
    scorers = [arm_scorer(project, MODEL, arm, version.ref) for arm in every]
    stamp, plan = parts.new_scored_at(), parts.plan_partitions(project.storage, version, partitions)

    def score(index: int) -> list[dict[str, Any]]:
        return parts.score_partition_together(
            project.storage, scorers, version, plan[index], index=index, scored_at=stamp
        )

    with ThreadPoolExecutor(partitions) as pool:
        results = list(pool.map(score, range(partitions)))
    versions = [arm_inputs(project, MODEL, arm, version.ref) for arm in every]
    served, *runs = parts.commit_partitions_together(
        project.storage, versions, version, results, scored_at=stamp
    )
    if isinstance(served, Exception):  # commit_partitions_together raises the champion's error
        raise served
    scored = after_scoring(project, MODEL, served, arms, runs)
    if scored.failed:
        raise RuntimeError(f"shadows failed: {scored.failed}")
    return [scored.served, *scored.shadows]


def child(kind: str, toml: str, dataset: str, partitions: str = "1") -> dict[str, Any]:
    """Score the champion alone, or with its shadows (and their comparisons)."""
    import batchml
    from batchml.api import score_with_shadows

    project = batchml.Project.open(toml)
    for module in ("lightgbm", "lleaves", "tl2cgen"):  # imported before timing: once per process, not scoring
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    start, cpu = time.perf_counter(), cpu_seconds()
    if int(partitions) > 1:
        runs = partitioned(project, dataset, int(partitions), kind != "alone")
    elif kind == "alone":
        runs = [batchml.score(project, MODEL, dataset=dataset, shadows=False)]
    else:
        result = score_with_shadows(project, MODEL, dataset=dataset)
        if result.failed:
            raise RuntimeError(f"shadows failed: {result.failed}")
        runs = [result.served, *result.shadows]
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if any(r.reused for r in runs):
        raise RuntimeError("a run was reused: the project is not fresh")
    stages = {k: round(v, 2) for k, v in runs[0].telemetry.get("seconds", {}).items()}
    return {"seconds": seconds, "cpu_seconds": cpu, "load": os.getloadavg()[0], "rows": runs[0].rows,
            "runs": len(runs), "champion_stages": stages}  # fmt: skip


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far, every thread's (less sensitive to a loaded
    machine than wall time: other work delays this process, it does not make it do more)."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def main() -> None:
    """Set up, run both paths (fastest of --repeat each) and print them side by side with the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--shadows", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--engine", default="lightgbm")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.partitions < 1:
        parser.error(f"--partitions {args.partitions} is invalid: use 1 (sequential) or more")
    if args.child:
        print(json.dumps({**child(*args.child), "peak_rss_mib": peak_rss_mib()}))
        return
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BATCHML_ENGINE_CACHE", str(workdir / "engine-cache"))
    data = ensure_data(workdir, args.rows, args.seed)
    models = [train_variant(data, args.trees, 1 + i, workdir) for i in range(args.shadows + 1)]
    # A B A B: both paths take turns, so a change in the machine's load falls on both alike.
    kinds = ("alone", "shadows")
    measured: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for _ in range(args.repeat):
        for kind in kinds:
            project = setup(workdir, data, models, args.engine)
            try:
                measured[kind].append(
                    run_child(
                        __file__, ["--child", kind, project["toml"], project["dataset"], str(args.partitions)]
                    )
                )
            finally:
                shutil.rmtree(project["project"])
    results = {kind: min(runs, key=lambda r: r["seconds"]) for kind, runs in measured.items()}
    for kind, runs in measured.items():
        results[kind]["runs_seconds"] = [round(r["seconds"], 2) for r in runs]
        results[kind]["runs_cpu_seconds"] = [round(r["cpu_seconds"], 2) for r in runs]
        results[kind]["runs_load"] = [round(r["load"], 1) for r in runs]
        results[kind]["cpu_seconds"] = min(r["cpu_seconds"] for r in runs)
    ratio = results["shadows"]["seconds"] / results["alone"]["seconds"]
    cpu_ratio = results["shadows"]["cpu_seconds"] / results["alone"]["cpu_seconds"]
    summary = {"rows": args.rows, "trees": args.trees, "shadows": args.shadows, "engine": args.engine,
               "partitions": args.partitions, "cores": os.cpu_count(), "results": results,
               "ratio": round(ratio, 3), "cpu_ratio": round(cpu_ratio, 3)}  # fmt: skip
    if args.json:
        print(json.dumps(summary))
        return
    print(
        f"rows={args.rows:,} trees={args.trees} engine={args.engine} partitions={args.partitions}"
        f" cores={os.cpu_count()}"
    )
    print(f"{'path':<34}{'seconds':>9}{'CPU s':>8}{'rows/s':>13}{'peak MiB':>10}")
    for kind, label in (("alone", "champion alone"), ("shadows", f"champion + {args.shadows} shadows")):
        r = results[kind]
        print(
            f"{label:<34}{r['seconds']:>9.2f}{r['cpu_seconds']:>8.2f}{r['rows'] / r['seconds']:>13,.0f}"
            f"{r['peak_rss_mib']:>10.0f}  runs s {r['runs_seconds']} CPU s {r['runs_cpu_seconds']}"
            f" load {r['runs_load']}"
        )
    print(f"ratio (champion + {args.shadows} shadows / champion alone): {ratio:.2f} wall, {cpu_ratio:.2f} CPU"
          "  (target <= 2.2; fastest wall and least CPU of --repeat each)")  # fmt: skip


if __name__ == "__main__":
    main()
