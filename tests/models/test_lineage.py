"""Code lineage: the code version is a content hash of batchml's source: changed code never reuses a run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import batchml
from batchml.models import lineage
from batchml.scoring.runs import list_runs


def test_source_hash_follows_every_byte_of_every_module(tmp_path: Path) -> None:
    copy = tmp_path / "batchml"
    shutil.copytree(lineage.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert lineage.source_hash(copy) == lineage.source_hash(lineage.PACKAGE_DIR)
    scorer = copy / "scoring" / "pipeline.py"
    scorer.write_text(scorer.read_text() + "\n# a comment is a change too\n")
    edited = lineage.source_hash(copy)
    assert edited != lineage.source_hash(lineage.PACKAGE_DIR)
    (copy / "extra.py").write_text("")
    assert lineage.source_hash(copy) not in {edited, lineage.source_hash(lineage.PACKAGE_DIR)}
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "x.pyc").write_bytes(b"compiled files are not the source")
    assert lineage.source_hash(copy) == lineage.source_hash(copy)


def test_code_version_names_the_package_version_and_the_source_hash() -> None:
    version = lineage.code_version()
    assert version == f"batchml-{batchml.__version__}+{lineage.source_hash(lineage.PACKAGE_DIR)[:16]}"


def test_git_state_is_none_for_files_git_does_not_track(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    assert lineage.git_state(repo / "pkg", only=repo / "pkg") == {"commit": None, "dirty": None}
    subprocess.run([*git, "add", "pkg/a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    clean = lineage.git_state(repo / "pkg", only=repo / "pkg")
    assert clean["commit"] and clean["dirty"] is False
    (repo / "pkg" / "b.py").write_text("y = 2\n")  # an untracked module is part of the code that runs
    assert lineage.git_state(repo / "pkg", only=repo / "pkg")["dirty"] is True


@pytest.mark.slow
def test_editing_the_scoring_code_gives_a_new_run_not_a_reused_one(
    project: batchml.Project, champion: batchml.ModelVersion, tmp_path: Path
) -> None:
    original = batchml.score(project, "default_risk")
    # The same project scored by an edited copy of batchml: every prediction halved.
    edited = tmp_path / "edited"
    shutil.copytree(lineage.PACKAGE_DIR, edited / "batchml", ignore=shutil.ignore_patterns("__pycache__"))
    scorer = edited / "batchml" / "scoring" / "pipeline.py"
    source = scorer.read_text()
    call = "raw = engine.predict(matrix, threads)"
    assert call in source
    scorer.write_text(source.replace(call, call + " / 2"))
    config = str(project.base_dir / "batchml.toml")
    env = {**os.environ, "PYTHONPATH": str(edited)}
    command = [sys.executable, "-m", "batchml", "--config", config, "score", "default_risk"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "reused" not in done.stdout.lower()

    runs = list_runs(project.storage, "default_risk")
    assert len(runs) == 2
    new = next(r for r in runs if r.run_id != original.run_id)
    assert new.manifest["code_version"] != original.manifest["code_version"]
    assert new.manifest["code_version"].endswith(lineage.source_hash(edited / "batchml")[:16])
    assert new.manifest["code"]["code_version"] == new.manifest["code_version"]
    halved = pl.read_parquet([project.storage.uri(f.path) for f in new.files]).sort("entity_id")
    before = pl.read_parquet([project.storage.uri(f.path) for f in original.files]).sort("entity_id")
    assert (halved["prediction"] * 2).to_list() == before["prediction"].to_list()
    batchml.publish(project, "default_risk", new.run_id)
    with batchml.connect(project) as con:
        shown = con.execute("SELECT code_version FROM runs WHERE run_id = ?", [new.run_id]).fetchone()
        served = con.execute("SELECT DISTINCT code_version FROM predictions").fetchall()
    assert shown == (new.manifest["code_version"],)
    assert served == [(new.manifest["code_version"],)]
