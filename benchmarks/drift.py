"""Side-by-side drift benchmark: Evidently's DataDriftPreset and batchml's drift on the same two tables.

    python benchmarks/drift.py [--rows 1000000] [--workdir benchmarks/out]

Two seeded Parquet tables (reference and current), ``--rows`` rows x 30 columns (20 numeric, 10 categorical);
the current table has a known shift in 6 columns (4 numeric, 2 categorical), the other 24 are drawn from the
same distributions. Each path runs in its own child process and reads the Parquet files itself:

- evidently: ``pandas.read_parquet`` of both tables, then ``Report([DataDriftPreset()]).run(cur, ref)`` with
  the columns declared numeric / categorical (its defaults at this size: normed Wasserstein distance, numeric
  columns, Jensen-Shannon distance for categorical ones, threshold 0.1).
- batchml: ``batchml.monitoring.drift.drift_between`` streaming record batches of both files (reference
  profiled into decile bins and category shares, current counted into them; PSI + binned KS / PSI + JS,
  default thresholds).

Wall time is measured inside the child around the work only (reading included, imports not). Peak RSS is the
child's own ``VmHWM`` (whole process), not ``ru_maxrss`` (see benchmarks/_harness.py).
Data generation is setup and not timed. Results are printed and written to ``<workdir>/drift_<rows>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _harness import peak_rss_mib, run_child

NUMERIC = [f"num_{i:02d}" for i in range(20)]
CATEGORICAL = [f"cat_{i:02d}" for i in range(10)]
COLUMNS = NUMERIC + CATEGORICAL
SHIFTED = ["num_00", "num_01", "num_02", "num_03", "cat_00", "cat_01"]
LEVELS = [f"level_{i}" for i in range(8)]


def _table(rows: int, seed: int, shifted: bool) -> pa.Table:
    """One seeded table; with ``shifted`` the columns in SHIFTED move (mean, scale, tail, rate, mix, new)."""
    rng = np.random.default_rng([seed, int(shifted)])
    data: dict[str, Any] = {}
    for i, name in enumerate(NUMERIC):
        kind = i % 4  # normal, normal, lognormal, poisson
        if kind == 2:
            values = np.exp(rng.normal(9.0 + (0.4 if shifted and name == "num_02" else 0.0), 0.6, rows))
        elif kind == 3:
            values = rng.poisson(4.5 if shifted and name == "num_03" else 3.0, rows).astype(np.float64)
        else:
            mean = 0.5 if shifted and name == "num_00" else 0.0
            sd = 2.0 if shifted and name == "num_01" else 1.0
            values = rng.normal(mean, sd, rows) * 10 + 50
        nulls = rng.random(rows) < 0.02
        data[name] = pa.array(values, mask=nulls)
    base = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.07, 0.05, 0.03])
    for name in CATEGORICAL:
        probs, levels = base, LEVELS
        if shifted and name == "cat_00":
            probs = base[::-1]
        if shifted and name == "cat_01":
            probs, levels = np.append(base * 0.85, 0.15), [*LEVELS, "level_new"]
        codes = rng.choice(len(levels), rows, p=probs / probs.sum())
        data[name] = pa.array(np.asarray(levels, dtype=object)[codes], pa.string())
    return pa.table(data)


def ensure_data(workdir: Path, rows: int, seed: int) -> tuple[Path, Path]:
    """The reference and current Parquet files for (rows, seed), generated unless already present."""
    paths = []
    for shifted in (False, True):
        path = workdir / f"drift_{'current' if shifted else 'reference'}_{rows}_seed{seed}.parquet"
        if not (path.exists() and pq.ParquetFile(path).metadata.num_rows == rows):
            pq.write_table(_table(rows, seed, shifted), path, row_group_size=128 * 1024)
        paths.append(path)
    return paths[0], paths[1]


def child_evidently(reference: Path, current: Path) -> dict[str, Any]:
    """Evidently's DataDriftPreset on both tables read with pandas."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    start = time.perf_counter()
    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    ref = Dataset.from_pandas(pd.read_parquet(reference), data_definition=definition)
    cur = Dataset.from_pandas(pd.read_parquet(current), data_definition=definition)
    snapshot = Report([DataDriftPreset()]).run(cur, ref)
    seconds = time.perf_counter() - start
    flagged, methods = [], set()
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if not config["type"].endswith("ValueDrift"):
            continue
        method, value, limit = config["method"], float(metric["value"]), float(config["threshold"])
        methods.add(method)
        if (value < limit) if "p_value" in method else (value >= limit):
            flagged.append(config["column"])
    return {"seconds": seconds, "flagged": sorted(flagged), "methods": sorted(methods)}


def child_batchml(reference: Path, current: Path) -> dict[str, Any]:
    """batchml's drift_between, streaming record batches of both files."""
    from batchml.monitoring.drift import drift_between

    def batches(path: Path) -> Any:
        # pre_buffer=False: a local file needs no coalesced read-ahead (it halves Arrow's peak allocation)
        return pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=65_536, columns=COLUMNS)

    start = time.perf_counter()
    result = drift_between(batches(reference), batches(current), COLUMNS)
    seconds = time.perf_counter() - start
    statistics = sorted({r["statistic"] for r in result.metrics})
    return {"seconds": seconds, "flagged": result.summary["drifted_columns"], "methods": statistics}


def report(results: dict[str, dict[str, Any]], rows: int) -> str:
    """The results as text: time, memory and ratios, then the flagged columns of each path."""
    base = results["evidently"]
    lines = [
        f"rows={rows:,} per table x {len(COLUMNS)} columns ({len(NUMERIC)} numeric, {len(CATEGORICAL)} "
        f"categorical); {os.cpu_count()} cores; known shift in {', '.join(SHIFTED)}",
        "peak RSS = each child's own VmHWM (whole process incl. interpreter and imports)",
        f"{'path':<10}{'seconds':>9}{'speed x':>9}{'peak MiB':>10}{'mem x':>8}  shifts caught  statistics",
    ]
    for name, r in results.items():
        caught = len(set(SHIFTED) & set(r["flagged"]))
        lines.append(
            f"{name:<10}{r['seconds']:>9.2f}{base['seconds'] / r['seconds']:>9.1f}{r['peak_rss_mib']:>10.0f}"
            f"{r['peak_rss_mib'] / base['peak_rss_mib']:>8.2f}  {caught}/{len(SHIFTED):<11}  "
            + ", ".join(r["methods"])
        )
    for name, r in results.items():
        lines.append(f"{name} flags: {', '.join(r['flagged']) or 'none'}")
    same = set(results["evidently"]["flagged"]) == set(results["batchml"]["flagged"])
    lines.append(f"same columns flagged: {'yes' if same else 'no'}")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments; in child mode run one path, otherwise generate the data, run both and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--repeat", type=int, default=1, help="runs per path; the fastest is reported")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, reference, current = args.child
        child = {"evidently": child_evidently, "batchml": child_batchml}[kind]
        result = child(Path(reference), Path(current))
        print(json.dumps({**result, "peak_rss_mib": peak_rss_mib()}))
        return

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    reference, current = ensure_data(workdir, args.rows, args.seed)
    results = {
        kind: run_child(__file__, ["--child", kind, str(reference), str(current)], args.repeat)
        for kind in ("evidently", "batchml")
    }
    print(report(results, args.rows))
    meta = {
        "rows": args.rows,
        "seed": args.seed,
        "shifted": SHIFTED,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "rss_method": "VmHWM of each child process, read by the child at exit",
    }
    out = workdir / f"drift_{args.rows}.json"
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
