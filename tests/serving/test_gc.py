"""`batchml gc`: unreferenced files older than the grace period go; referenced and young ones stay."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import batchml
from batchml.cli import app
from batchml.errors import IntegrityError
from batchml.scoring.publications import PublicationLog
from batchml.scoring.runs import get_run

MODEL = "default_risk"
HOUR = 3600.0


def _age(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _orphans(project: batchml.Project, run_id: str) -> dict[str, Path]:
    """Files a crash leaves behind: parts no manifest lists, a temp file of a commit, an old serving file."""
    root = Path(project.storage.root)
    made = {
        "dataset_part": root / "datasets/loans/files/deadbeef-00000.parquet",
        "run_part": root / f"runs/{MODEL}/{run_id}/0badf00d-00000.parquet",
        "other_run_dir": root / f"runs/{MODEL}/feedfacefeedface/12345678-00000.parquet",
        "model_file": root / f"models/{MODEL}/files/{'0' * 64}.txt",
        "tmp_manifest": root / f"runs/{MODEL}/manifests/.tmp-0123456789abcdef",
        "tmp_event": root / f"publications/{MODEL}/events/.tmp-fedcba9876543210",
        "old_serving": project.serving_dir / "serving-20200101T000000000000-abcdef01.duckdb",
        "building": project.serving_dir / ".building-serving-20200101T000000000000-abcdef02.duckdb",
    }
    for path in made.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"orphan")
    return made


def test_gc_removes_old_orphans_and_nothing_referenced(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    batchml.publish(project, MODEL, published.run_id)  # a second serving build: the first becomes old
    root = Path(project.storage.root)
    orphans = _orphans(project, published.run_id)
    young = root / "datasets/loans/files/young-00000.parquet"
    young.write_bytes(b"a writer in flight")
    for path in [*orphans.values(), *[p for p in project.serving_dir.glob("serving-*") if p.is_file()]]:
        _age(path, 2 * HOUR)
    current = batchml.database_path(project).resolve()
    _age(current, 2 * HOUR)  # old, but the pointer names it
    for path in root.rglob("*"):  # referenced files are old too: age alone must never remove them
        if path.is_file() and path not in orphans.values() and path != young:
            _age(path, 2 * HOUR)
    keep = {
        k: v for k, v in _all_files(root).items() if not any(str(o).endswith(k) for o in orphans.values())
    }

    dry = batchml.api.gc(project, dry_run=True)
    assert {Path(p).name for p in dry.deleted} >= {p.name for p in orphans.values()}
    assert all(p.exists() for p in orphans.values())  # a dry run removes nothing

    report = batchml.api.gc(project)
    assert sorted(report.deleted) == sorted(dry.deleted)
    assert not any(p.exists() for p in orphans.values())
    assert young.exists() and any(p.endswith("young-00000.parquet") for p in report.kept_young)
    after = _all_files(root)
    stale_serving = {  # old serving files and what lies beside them; the current file's stay
        k for k in keep if Path(k).name.startswith("serving-") and not Path(k).name.startswith(current.name)
    }
    assert {k: v for k, v in keep.items() if k not in stale_serving} == after  # byte for byte
    # Everything still reads and verifies.
    run = get_run(project.storage, MODEL, published.run_id)
    for entry in run.files:
        project.storage.verify(entry)
    con = batchml.connect(project)
    try:
        assert con.execute("SELECT count(*) FROM predictions").fetchone() == (published.rows,)
    finally:
        con.close()
    assert PublicationLog(project.storage).current(MODEL) == published.run_id


def test_gc_keeps_young_orphans_until_the_grace_period_passes(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    orphans = _orphans(project, published.run_id)
    report = batchml.api.gc(project)
    assert report.deleted == [] and all(p.exists() for p in orphans.values())
    assert len(report.kept_young) >= len(orphans)
    report = batchml.api.gc(project, grace_seconds=0)
    assert not any(p.exists() for p in orphans.values())


def test_gc_refuses_to_run_when_a_record_is_damaged(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    orphan = _orphans(project, published.run_id)["dataset_part"]
    manifest = Path(project.storage.root) / f"runs/{MODEL}/manifests/{published.run_id}.json"
    manifest.write_bytes(manifest.read_bytes()[:40])
    with pytest.raises(IntegrityError, match=f"{published.run_id}.json"):
        batchml.api.gc(project, grace_seconds=0)
    assert orphan.exists()


def test_gc_cli_dry_run_and_json(project: batchml.Project, published: batchml.PredictionRun) -> None:
    orphan = _age(_orphans(project, published.run_id)["run_part"], 2 * HOUR)
    config = str(project.base_dir / "batchml.toml")
    runner = CliRunner()
    dry = runner.invoke(app, ["--config", config, "gc", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would remove" in dry.output and orphan.name in dry.output and orphan.exists()
    done = runner.invoke(app, ["--config", config, "gc", "--grace-seconds", "60", "--json"])
    assert done.exit_code == 0, done.output
    assert any(p.endswith(orphan.name) for p in json.loads(done.output)["deleted"]) and not orphan.exists()
    bad = runner.invoke(app, ["--config", config, "gc", "--grace-seconds", "-1"])
    assert bad.exit_code == 2
