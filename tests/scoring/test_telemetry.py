"""Per-run telemetry in the manifest: busy seconds per stage, rows/s, peak RSS; not part of the run's key."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import batchml
from batchml.api import scoring_inputs
from batchml.models.registry import Registry
from batchml.scoring.partitions import commit_partitions, new_scored_at, plan_partitions, score_partition
from batchml.scoring.telemetry import STAGES


def check_telemetry(telemetry: dict[str, Any], rows: int) -> None:
    seconds = telemetry["seconds"]
    assert set(seconds) == set(STAGES) and all(s >= 0 for s in seconds.values())
    assert seconds["predict"] > 0 and seconds["write"] > 0
    wall = telemetry["wall_seconds"]
    assert wall > 0 and sum(seconds.values()) <= wall * telemetry["threads"]
    assert telemetry["rows_per_s"] == round(rows / wall, 1)
    assert telemetry["peak_rss_mib"] > 10  # a Python process with pyarrow and LightGBM loaded


def test_a_scored_run_records_where_its_time_went(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    run = batchml.score(project, "default_risk")
    check_telemetry(run.manifest["telemetry"], run.rows)
    assert run.telemetry == run.manifest["telemetry"]
    assert "telemetry" not in run.manifest["key"]


def test_a_reused_run_keeps_its_first_telemetry_and_run_id(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    first = batchml.score(project, "default_risk")
    again = batchml.score(project, "default_risk")
    assert again.reused and again.run_id == first.run_id
    assert again.telemetry == first.telemetry


def test_a_partitioned_run_sums_its_partitions_stage_seconds(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    registry = Registry(project.storage)
    _, dataset, opts = scoring_inputs(project, "default_risk")
    booster = registry.load_booster(champion)
    stamp = new_scored_at()
    storage, plan = project.storage, plan_partitions(project.storage, dataset, 2)
    results = [
        score_partition(storage, champion, booster, dataset, p, index=i, scored_at=stamp, options=opts)
        for i, p in enumerate(plan)
    ]
    run = commit_partitions(project.storage, champion, dataset, results, scored_at=stamp, options=opts)
    parts = [r["telemetry"] for r in results]
    check_telemetry(run.telemetry, run.rows)
    for stage in STAGES:
        assert abs(run.telemetry["seconds"][stage] - sum(p["seconds"][stage] for p in parts)) < 1e-5
    assert run.telemetry["wall_seconds"] == max(p["wall_seconds"] for p in parts)
    assert run.telemetry["threads"] == sum(p["threads"] for p in parts)
    assert run.telemetry["peak_rss_mib"] == max(p["peak_rss_mib"] for p in parts)


def test_peak_rss_is_the_process_own_not_the_parent_it_was_started_by() -> None:
    """`ru_maxrss` survives exec: a child of a big process (a worker, a benchmark) reported its parent's
    size. A small child started while this process holds 600 MiB must report far less."""
    held = bytearray(600 * 1024 * 1024)
    held[::4096] = b"x" * len(held[::4096])  # touch every page: resident, not just reserved
    child = subprocess.run(
        [sys.executable, "-c", "from batchml.scoring.telemetry import peak_rss_mib; print(peak_rss_mib())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert 1 < float(child.stdout) < 300
