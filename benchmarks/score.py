"""Side-by-side batch scoring benchmark: naive pandas, the in-memory ceiling, and batchml score + publish.

    python benchmarks/score.py [--rows 2000000] [--trees 300] [--engine auto] [--json] [--workdir DIR]

Paths: ``naive`` (pandas read -> LightGBM predict -> to_parquet), ``ceiling`` (only the predict of the engine
batchml scores with, on a matrix already in memory, every core) and ``batchml`` (score + publish with
``[models.X.scoring] engine``). Every path runs in its own child process; wall time is measured inside the
child around the work only. Peak RSS is the child's own ``VmHWM`` (whole process: interpreter, imports,
data; see benchmarks/_harness.py). Data generation, model training, dataset snapshot, model registration and
engine compilation (cached in ``<workdir>/engine-cache``) are setup and are not timed. Results are printed as
a table (``--json``: one JSON object) and written to ``<workdir>/score_<rows>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import lightgbm as lgb
import numpy as np
import polars as pl
import psutil
import pyarrow.parquet as pq
from _harness import peak_rss_mib, run_child

from batchml.config import ScoringConfig

ENTITY, TIMESTAMP, TARGET = "loan_id", "application_date", "defaulted"
CATEGORICAL = ["region", "purpose", "employment_type"]
TRAIN_ROWS = 200_000
MODEL = "default_risk"


def ensure_data(workdir: Path, rows: int, seed: int) -> Path:
    """The benchmark Parquet file for (rows, seed), generated with ``write_loans`` unless already present."""
    from batchml.testing import write_loans

    path = workdir / f"loans_{rows}_seed{seed}.parquet"
    if not (path.exists() and pq.ParquetFile(path).metadata.num_rows == rows):
        write_loans(path, rows, seed)
    return path


def feature_names(data: Path) -> list[str]:
    """The model's feature columns: every column except the id, timestamp and target."""
    return [c for c in pq.ParquetFile(data).schema_arrow.names if c not in (ENTITY, TIMESTAMP, TARGET)]


def train_baseline(data: Path, trees: int, workdir: Path) -> Path:
    """Train LightGBM on the first ``TRAIN_ROWS`` rows (categoricals as pandas category); save as text."""
    path = workdir / f"{data.stem}_trees{trees}.txt"
    if path.exists():
        return path
    frame = pl.scan_parquet(data).head(TRAIN_ROWS).collect().to_pandas()
    for column in CATEGORICAL:
        frame[column] = frame[column].astype("category")
    params = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 31, "verbose": -1, "seed": 1}
    dataset = lgb.Dataset(frame[feature_names(data)], label=frame[TARGET])
    booster = lgb.train(params, dataset, num_boost_round=trees)
    booster.save_model(str(path))
    return path


def setup_batchml(workdir: Path, data: Path, model_path: Path, engine: str = "lightgbm") -> dict[str, Any]:
    """Create a fresh project, snapshot the data, register the baseline booster (its engines are checked on
    the dataset's first rows, compiled or taken from the cache) and promote it champion."""
    import batchml
    from batchml.scoring.engine_choice import choose

    root = Path(tempfile.mkdtemp(prefix="project_", dir=workdir))
    toml = root / "batchml.toml"
    toml.write_text(
        f'[storage]\nroot = "store"\n\n[models.{MODEL}]\ndataset = "loans"\nentity_id = "{ENTITY}"\n'
        f'timestamp = "{TIMESTAMP}"\ntarget = "{TARGET}"\ntask = "binary"\n\n'
        f'[models.{MODEL}.scoring]\nengine = "{engine}"\n'
    )
    project = batchml.Project.open(toml)
    dv = batchml.snapshot_dataset(project, "loans", str(data))
    booster = lgb.Booster(model_file=str(model_path))
    mv = batchml.register_model(project, MODEL, booster, entity_id=ENTITY, dataset=dv.ref, target=TARGET)
    found = [f["name"] for f in mv.card["features"] if f["kind"] == "categorical"]
    if found != CATEGORICAL:
        raise RuntimeError(f"register_model read categoricals {found}, expected {CATEGORICAL}")
    batchml.promote(project, MODEL, mv.version, alias="champion", reason="benchmark")
    chosen, _ = choose(mv, engine, project.config.model(MODEL).scoring.tolerance)
    return {
        "toml": str(toml),
        "dataset": dv.ref,
        "trees": mv.card["num_trees"],
        "project": str(root),
        "engine": chosen,
        "engines": mv.card.get("engines", {}),
    }


def cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used so far, in every thread."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def child_naive(data: Path, model: Path, out: Path) -> dict[str, Any]:
    """pandas.read_parquet -> Booster.predict on the whole frame -> DataFrame.to_parquet."""
    import pandas as pd

    booster = lgb.Booster(model_file=str(model))
    start, cpu = time.perf_counter(), cpu_seconds()
    frame = pd.read_parquet(data)
    for column in CATEGORICAL:
        frame[column] = frame[column].astype("category")
    prediction = booster.predict(frame[booster.feature_name()])
    pd.DataFrame({ENTITY: frame[ENTITY], "prediction": prediction}).to_parquet(out / "naive.parquet")
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu,
        "rows": len(frame),
        "trees": booster.num_trees(),
    }


def child_ceiling(data: Path, model: Path, engine: str) -> dict[str, Any]:
    """Only the engine's predict (every core) on a float64 matrix in memory (loaded before the clock)."""
    import hashlib

    from batchml.scoring.engines import LIGHTGBM, LightGBMEngine, compiled

    booster = lgb.Booster(model_file=str(model))
    text = model.read_bytes()
    predictor = (
        LightGBMEngine(booster)
        if engine == LIGHTGBM
        else compiled(engine, text, hashlib.sha256(text).hexdigest())[0]
    )
    names, levels = booster.feature_name(), booster.pandas_categorical or []
    categories = dict(zip(CATEGORICAL, levels, strict=True))
    frame = pl.read_parquet(data, columns=names)
    codes = [pl.col(c).replace_strict(v, list(range(len(v))), default=None) for c, v in categories.items()]
    matrix = frame.with_columns(codes).select(pl.all().cast(pl.Float64)).to_numpy()
    del frame
    start, cpu = time.perf_counter(), cpu_seconds()
    prediction = predictor.predict(matrix, 0)  # 0: the engine's default threads, one per core
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu,
        "threads": os.cpu_count(),
        "rows": len(prediction),
        "trees": booster.num_trees(),
        "engine": engine,
    }


def child_batchml(toml: str, dataset: str) -> dict[str, Any]:
    """``batchml.score`` + ``batchml.publish`` of the champion on the snapshot dataset."""
    import batchml

    project = batchml.Project.open(toml)
    start, cpu = time.perf_counter(), cpu_seconds()
    run = batchml.score(project, MODEL, alias="champion", dataset=dataset)
    scored, scored_cpu = time.perf_counter(), cpu_seconds()
    batchml.publish(project, MODEL, run.run_id)
    seconds, used = time.perf_counter() - start, cpu_seconds() - cpu
    if run.reused:
        raise RuntimeError(f"prediction run {run.run_id} was reused: the project is not fresh")
    return {
        "seconds": seconds,
        "cpu_seconds": used,
        "rows": run.rows,
        "score_seconds": scored - start,
        "score_cpu_seconds": scored_cpu - cpu,
        "publish_seconds": start + seconds - scored,
        "publish_cpu_seconds": cpu + used - scored_cpu,
        "stage_seconds": run.telemetry.get("seconds"),
        "score_peak_rss_mib": run.telemetry.get("peak_rss_mib"),  # before publish: what scoring held
        "threads": run.telemetry.get("threads"),
    }


def run_batchml(workdir: Path, data: Path, model: Path, repeat: int, engine: str) -> dict[str, Any]:
    """The batchml path ``repeat`` times, each on a fresh project (deleted afterwards); the fastest run."""
    import batchml

    runs = []
    for _ in range(repeat):
        setup = setup_batchml(workdir, data, model, engine)
        try:
            runs.append(
                {**run_child(__file__, ["--child", "batchml", setup["toml"], setup["dataset"]]), **setup}
            )
            # A plain read-only client: batchml.connect() disables file access, and this joins a file.
            served = batchml.database_path(batchml.Project.open(setup["toml"]))
            with duckdb.connect(str(served), read_only=True) as con:
                sql = "SELECT max(abs(p.prediction - n.prediction)), count(*) FROM predictions p JOIN "
                sql += f"read_parquet('{workdir / 'naive.parquet'}') n ON p.entity_id = n.{ENTITY}"
                diff, matched = con.execute(sql).fetchone() or (None, 0)
            runs[-1]["max_abs_diff_vs_naive"] = diff
            if matched != runs[-1]["rows"]:
                raise RuntimeError(
                    f"{matched} published predictions match naive ids, expected {runs[-1]['rows']}"
                )
        finally:
            shutil.rmtree(setup["project"])
    best = min(runs, key=lambda r: r["seconds"])
    del best["toml"], best["project"]
    return {
        **best,
        "runs_seconds": [round(r["seconds"], 3) for r in runs],
        "note": f"engine {best['engine']}: score {best['score_seconds']:.2f} s + publish "
        f"{best['publish_seconds']:.2f} s, CPU {best['cpu_seconds']:.2f} s over {best['seconds']:.2f} s = "
        f"{best['cpu_seconds'] / best['seconds']:.2f} of {os.cpu_count()} cores; "
        f"max |p - naive p| = {best['max_abs_diff_vs_naive']:.1e}",
    }


def report(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results as a text table with ratios to the naive path."""
    base = results["naive"]
    lines = [
        f"rows={meta['rows']:,}  trees={meta['trees']}  machine: {meta['cores']} cores, "
        f"{meta['ram_gib']} GiB RAM, python {meta['python']}, lightgbm {meta['lightgbm']}",
        "peak RSS = each child's own VmHWM (whole process incl. interpreter and imports)",
        f"{'path':<10}{'seconds':>9}{'rows/s':>13}{'speed x':>9}{'peak MiB':>10}{'mem x':>8}  trees  note",
    ]
    for name, r in results.items():
        seconds, rss = r["seconds"], r["peak_rss_mib"]
        speed, memory = base["seconds"] / seconds, rss / base["peak_rss_mib"]
        lines.append(
            f"{name:<10}{seconds:>9.2f}{r['rows'] / seconds:>13,.0f}{speed:>9.2f}{rss:>10.0f}{memory:>8.2f}"
            f"  {r.get('trees')!s:>5}  {r.get('note', '')}"
        )
    return "\n".join(lines)


def summarize(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """One JSON-ready object: per path rows/s, speed vs naive, peak RSS (and the engine, where one is used);
    batchml's speed against the ceiling of its engine."""
    base = results["naive"]["seconds"]
    paths = {
        name: {
            "rows_per_s": round(r["rows"] / r["seconds"]),
            "seconds": round(r["seconds"], 3),
            "speed_vs_naive": round(base / r["seconds"], 3),
            "peak_rss_mib": round(r["peak_rss_mib"]),
            **({"engine": r["engine"]} if "engine" in r else {}),
            **(
                {  # cores kept busy: CPU seconds of every thread over wall seconds (at most `cores`)
                    "cpu_s": round(r["cpu_seconds"], 3),
                    "cpu_utilisation": round(r["cpu_seconds"] / r["seconds"], 2),
                    "threads": r.get("threads"),
                }
                if "cpu_seconds" in r
                else {}
            ),
        }
        for name, r in results.items()
    }
    if "batchml" in results:
        worst = results["batchml"]["max_abs_diff_vs_naive"]
        paths["batchml"]["max_abs_diff_vs_naive"] = worst
        tolerance = ScoringConfig().tolerance  # the benchmark's project keeps the default
        paths["batchml"]["within_tolerance"] = worst is not None and worst <= tolerance
        paths["batchml"]["engines_checked"] = results["batchml"].get("engines", {})
        r = results["batchml"]
        paths["batchml"]["score"] = {
            "seconds": round(r["score_seconds"], 3),
            "cpu_s": round(r["score_cpu_seconds"], 3),
            "stage_seconds": r.get("stage_seconds"),
            "peak_rss_mib": r.get("score_peak_rss_mib"),
        }
        paths["batchml"]["publish"] = {
            "seconds": round(r["publish_seconds"], 3),
            "cpu_s": round(r["publish_cpu_seconds"], 3),
        }
        # The ratio of work done (CPU seconds, which other processes on the cores change least; wall seconds
        # follow the share of the cores each child got): the speed ratio if both kept the same cores busy.
        paths["batchml"]["cpu_vs_naive"] = round(results["naive"]["cpu_seconds"] / r["cpu_seconds"], 3)
        if "ceiling" in results:
            ratio = results["ceiling"]["seconds"] / results["batchml"]["seconds"]
            paths["batchml"]["speed_vs_ceiling"] = round(ratio, 3)
            paths["batchml"]["cpu_vs_ceiling"] = round(
                results["ceiling"]["cpu_seconds"] / r["cpu_seconds"], 3
            )
    return {"meta": meta, "paths": paths}


def main() -> None:
    """Parse arguments; in child mode run one path, otherwise set up, run all paths and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--repeat", type=int, default=1, help="runs per path; the fastest is reported")
    parser.add_argument(
        "--paths", default="naive,ceiling,batchml", help="comma-separated subset (naive always runs)"
    )
    parser.add_argument("--engine", default="auto", help="[models.X.scoring] engine of the batchml path")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = {
            "naive": lambda: child_naive(Path(rest[0]), Path(rest[1]), Path(rest[2])),
            "ceiling": lambda: child_ceiling(Path(rest[0]), Path(rest[1]), rest[2]),
            "batchml": lambda: child_batchml(rest[0], rest[1]),
        }[kind]()
        print(json.dumps({**result, "peak_rss_mib": peak_rss_mib()}))
        return

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BATCHML_ENGINE_CACHE", str(workdir / "engine-cache"))  # children inherit it
    data = ensure_data(workdir, args.rows, args.seed)
    model = train_baseline(data, args.trees, workdir)
    load = os.getloadavg()[0]  # other processes sharing the cores change every figure
    paths = args.paths.split(",")
    results: dict[str, dict[str, Any]] = {}
    results["naive"] = run_child(
        __file__, ["--child", "naive", str(data), str(model), str(workdir)], args.repeat
    )
    # batchml first: its setup checks (and compiles) the engines, and says which one scores
    batchml = run_batchml(workdir, data, model, args.repeat, args.engine) if "batchml" in paths else None
    engine = batchml["engine"] if batchml else ("lightgbm" if args.engine == "auto" else args.engine)
    if "ceiling" in paths:
        ceiling = run_child(__file__, ["--child", "ceiling", str(data), str(model), engine], args.repeat)
        results["ceiling"] = {**ceiling, "note": f"{engine} predict only; RSS incl. data loaded before"}
    if batchml:
        results["batchml"] = batchml
    meta = {
        "rows": args.rows,
        "trees": args.trees,
        "seed": args.seed,
        "repeat": args.repeat,
        "cores": os.cpu_count(),
        "load_average_1m": [round(load, 2), round(os.getloadavg()[0], 2)],  # before and after the paths
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "lightgbm": lgb.__version__,
        "numpy": np.__version__,
        "rss_method": "VmHWM of each child process, read by the child at exit",
    }
    summary = summarize(results, meta)
    print(json.dumps(summary) if args.json else report(results, meta))
    (workdir / f"score_{args.rows}.json").write_text(json.dumps({**summary, "results": results}, indent=2))


if __name__ == "__main__":
    main()
