"""`run_stats` in the serving file: one row per run with its scoring telemetry, NULLs for old runs."""

from __future__ import annotations

import json
from pathlib import Path

import batchml
from batchml.scoring.telemetry import STAGES
from batchml.store.records import seal, unseal

COLUMNS = ", ".join(f"{stage}_s" for stage in STAGES)


def test_run_stats_has_one_row_per_run_with_its_telemetry(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    model = batchml.train(project, "default_risk", params={"num_leaves": 7})
    second = batchml.score(project, "default_risk", alias=None, version=model.version)
    batchml.publish(project, "default_risk", second.run_id)
    con = batchml.connect(project)
    rows = con.execute(
        f"SELECT run_id, model, rows, {COLUMNS}, wall_s, threads, rows_per_s, peak_rss_mib "
        "FROM run_stats ORDER BY run_id"
    ).fetchall()
    assert [r[0] for r in rows] == sorted([published.run_id, second.run_id])
    for row in rows:
        run = published if row[0] == published.run_id else second
        t = run.telemetry
        assert row[1:3] == ("default_risk", run.rows)
        assert row[3:] == (*(t["seconds"][s] for s in STAGES), t["wall_seconds"], t["threads"],
                           t["rows_per_s"], t["peak_rss_mib"])  # fmt: skip


def test_a_run_committed_before_telemetry_shows_nulls(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    manifest = Path(project.storage.root, f"runs/default_risk/manifests/{published.run_id}.json")
    old = unseal(json.loads(manifest.read_text()), str(manifest))
    del old["telemetry"]
    manifest.chmod(0o644)
    manifest.write_text(json.dumps(seal(old)))
    batchml.rebuild_catalog(project)
    sql = f"SELECT run_id, rows, {COLUMNS}, rows_per_s, peak_rss_mib FROM run_stats"
    row = batchml.connect(project).execute(sql).fetchone()
    assert row == (published.run_id, published.rows, *([None] * (len(STAGES) + 2)))
