"""What the benchmarks share: each path runs in a child process that reports its own time and peak memory.

Peak RSS is the child's own ``VmHWM`` from ``/proc/self/status`` (whole process: interpreter, imports, data),
read by the child at exit. Not ``ru_maxrss``: on Linux a child's ``ru_maxrss`` (``getrusage`` or
``os.wait4``) starts at the parent's high-water mark, because exec records the forked address space's peak.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM) in MiB."""
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return kib / 1024


def run_child(script: str, args: list[str], repeat: int = 1) -> dict[str, Any]:
    """Run ``script`` as a child with ``args`` ``repeat`` times; the fastest run's JSON result (its last
    stdout line), with every run's seconds under ``runs_seconds``."""
    runs = []
    for _ in range(repeat):
        proc = subprocess.run([sys.executable, script, *args], stdout=subprocess.PIPE, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"child {args[:2]} failed with exit code {proc.returncode}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {**min(runs, key=lambda r: r["seconds"]), "runs_seconds": [round(r["seconds"], 3) for r in runs]}


def sample_project_toml(num_iterations: int) -> str:
    """The batchml.toml of a benchmark project on `batchml sample-data loans.csv` (model `default_risk`)."""
    return f"""
[storage]
root = "store"

[datasets.loans]
source = "loans.csv"

[models.default_risk]
dataset = "loans"
entity_id = "loan_id"
timestamp = "application_date"
target = "defaulted"

[models.default_risk.params]
num_iterations = {num_iterations}
"""
