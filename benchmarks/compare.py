"""Run comparison benchmark: `compare_runs` in memory against from the run files (bounded), at N rows.

    python benchmarks/compare.py [--rows 1000000] [--order same|shuffled] [--repeat 1] [--json]

Writes two seeded runs of N rows each (entity id `L000000001`..., a binary prediction and its class; the
new run = the old + noise, in the same order as a shadow's run, or `shuffled` so the per-entity measures
join), as scoring lays them out (files of up to 4M rows, row groups of 131,072), under
``benchmarks/out/compare_<rows>_<order>/``. Then each path runs in its own child process: ``memory`` (the
in-memory path, threshold lifted) and ``bounded`` (threshold 0: from the files, DuckDB capped). Each child
reports the seconds of `compare_runs`, its peak RSS (VmHWM) and its RSS before the call (interpreter and
imports), so peak - before is what the comparison added. The two paths' numbers are checked to agree.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from _harness import peak_rss_mib, run_child

ROWS_PER_FILE = 4_000_000
ROW_GROUP = 131_072
SCHEMA = pa.schema(
    [("entity_id", pa.string()), ("prediction", pa.float64()), ("predicted_class", pa.string())]
)


def rss_mib() -> float:
    """This process's resident set size now (VmRSS) in MiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def write_runs(folder: Path, rows: int, order: str, seed: int) -> dict[str, Any]:
    """Two runs as files in a local store at `folder`; their manifests (what `compare_runs` reads)."""
    from batchml.store.storage import Storage

    done = folder / "runs.json"
    if done.exists():
        return dict(json.loads(done.read_text()))
    storage = Storage(f"file://{folder}/store")
    rng = np.random.default_rng(seed)
    old_values = rng.beta(2, 5, rows)
    new_values = np.clip(old_values + rng.normal(0, 0.03, rows), 0, 1)
    ids = pl.select(
        pl.format("L{}", pl.int_range(rows, eager=False).cast(pl.String).str.zfill(9))
    ).to_series()
    positions = rng.permutation(rows) if order == "shuffled" else np.arange(rows)
    manifests = {}
    for name, values, rows_order in (("old", old_values, np.arange(rows)), ("new", new_values, positions)):
        frame = pl.DataFrame({"entity_id": ids, "prediction": values}).with_columns(
            predicted_class=pl.when(pl.col("prediction") >= 0.5).then(pl.lit("yes")).otherwise(pl.lit("no"))
        )[rows_order]
        files = []
        for i, start in enumerate(range(0, rows, ROWS_PER_FILE)):
            path = f"runs/{name}/part-{i:05d}.parquet"
            table = frame.slice(start, ROWS_PER_FILE).to_arrow().cast(SCHEMA)
            with storage.open_write(path) as sink:
                pq.write_table(table, sink, row_group_size=ROW_GROUP, compression="zstd",
                               use_dictionary=["predicted_class"])  # fmt: skip
            files.append({"path": path, "sha256": sink.sha256.hexdigest(), "size": sink.size})
        manifests[name] = {"run_id": name, "model_version": 1, "files": files, "rows": rows}
    result = {"url": storage.url, "runs": manifests}
    done.write_text(json.dumps(result))
    return result


def child(mode: str, runs_json: str) -> dict[str, Any]:
    """Compare the two runs by one path; seconds, RSS before the call and the comparison."""
    from batchml.monitoring import run_compare
    from batchml.scoring.runs import PredictionRun
    from batchml.store.storage import Storage

    spec = json.loads(Path(runs_json).read_text())
    storage = Storage(spec["url"])
    new, old = PredictionRun(spec["runs"]["new"]), PredictionRun(spec["runs"]["old"])
    limit = 2 * (new.rows + old.rows) if mode == "memory" else 0
    before = rss_mib()
    start = time.perf_counter()
    report = run_compare.compare_runs(storage, new, old, in_memory_rows=limit)
    return {"seconds": time.perf_counter() - start, "before_mib": before, "report": report}


def agree(a: Any, b: Any) -> bool:
    """Counts equal, floats within 1e-12 relative (NaN equals NaN)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(agree(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)
    return bool(a == b)


def main() -> None:
    """Write the runs (once per size and order), compare them by both paths, print both."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--order", choices=["same", "shuffled"], default="same")
    parser.add_argument("--paths", default="memory,bounded")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({**child(*args.child), "peak_rss_mib": peak_rss_mib()}))
        return
    folder = (args.workdir / f"compare_{args.rows}_{args.order}_seed{args.seed}").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    write_runs(folder, args.rows, args.order, args.seed)
    results = {
        path: run_child(__file__, ["--child", path, str(folder / "runs.json")], args.repeat)
        for path in args.paths.split(",")
    }
    reports = [r.pop("report") for r in results.values()]
    same = all(agree(reports[0], r) for r in reports[1:])
    summary = {"rows": args.rows, "order": args.order, "results": results, "same_numbers": same,
               "comparison": reports[0]}  # fmt: skip
    if args.json:
        print(json.dumps(summary))
        return
    print(f"rows={args.rows:,} per run, order={args.order}")
    print(f"{'path':<10}{'seconds':>9}{'peak MiB':>10}{'before MiB':>12}{'added MiB':>11}  runs s")
    for path, r in results.items():
        added = r["peak_rss_mib"] - r["before_mib"]
        print(f"{path:<10}{r['seconds']:>9.2f}{r['peak_rss_mib']:>10.0f}{r['before_mib']:>12.0f}{added:>11.0f}"
              f"  {r['runs_seconds']}")  # fmt: skip
    print(f"same numbers on both paths: {same}")
    if not same:
        raise SystemExit(f"the paths disagree: {reports}")


if __name__ == "__main__":
    main()
