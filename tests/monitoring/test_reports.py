"""Evidently reports of prediction runs: sampling, immutability, SQL, the CLI, and the page in a browser."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import batchml
from batchml.cli import app
from batchml.config import DriftConfig
from batchml.errors import InvalidNameError, NotFoundError
from batchml.monitoring.drift import DriftResult, load_drift, monitor_run
from batchml.monitoring.report_render import least_drifted
from batchml.monitoring.reports import (
    ReportRef,
    _sample_files,
    _sample_positions,
    load_report,
    render_run_report,
)
from batchml.store.storage import Storage
from batchml.testing import write_loans

MODEL = "default_risk"
ARTIFACTS = Path(__file__).parents[1] / "artifacts"


@pytest.fixture
def shifted_run(published: batchml.PredictionRun, project: batchml.Project, tmp_path: Path) -> str:
    """A run of the champion on a new `loans` version with larger amounts and lower credit scores."""
    frame = pl.read_csv(write_loans(tmp_path / "fresh.csv", rows=4000, seed=8))
    shifted = frame.with_columns(pl.col("amount") * 3, pl.col("credit_score") - 120)
    shifted.write_csv(tmp_path / "shifted.csv")
    batchml.snapshot_dataset(project, "loans", str(tmp_path / "shifted.csv"))
    return batchml.score(project, MODEL).run_id


def _evidently_verdicts(ref: ReportRef) -> dict[str, dict[str, Any]]:
    """Per column Evidently judged for drift: its method, value, threshold and whether it drifted."""
    from evidently.core.report import Snapshot

    verdicts = {}
    for metric in Snapshot.loads(Path(ref.json_uri).read_text()).dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            method, value, limit = config["method"], float(metric["value"]), float(config["threshold"])
            drifted = value < limit if "p_value" in method else value >= limit
            verdicts[config["column"]] = {
                "method": method,
                "value": value,
                "threshold": limit,
                "drifted": drifted,
            }
    return verdicts


def _batchml_flags(result: DriftResult) -> set[str]:
    summary = result.summary
    return set(summary["drifted_columns"]) | ({"prediction"} if summary["prediction_drifted"] else set())


def test_report_is_sampled_says_so_and_is_written_once(project: batchml.Project, shifted_run: str) -> None:
    storage = project.storage
    ref = render_run_report(storage, MODEL, shifted_run, sample_rows=1000, seed=7)
    assert (ref.sampled_reference_rows, ref.total_reference_rows) == (1000, 4000)
    assert (ref.sampled_current_rows, ref.total_current_rows) == (1000, 4000)
    folder = Path(storage.root) / "monitoring" / MODEL / shifted_run
    assert ref.html_uri.startswith(str(folder / "report-")) and ref.html_uri.endswith(".html")
    assert ref.json_uri == ref.html_uri.removesuffix(".html") + ".json"
    note = "a seeded random sample of 1,000 of 4,000 rows (seed 7)"
    assert note in Path(ref.html_uri).read_text()
    meta = json.loads((folder / "report_meta.json").read_text())
    assert note in meta["note"] and meta["seed"] == 7 and meta["sample_rows"] == 1000
    assert meta["reference"]["dataset_version"] != meta["current"]["dataset_version"]
    snapshot = json.loads(Path(ref.json_uri).read_text())
    assert note in snapshot["metadata"]["batchml_sample_note"]

    verdicts = _evidently_verdicts(ref)  # features and the prediction, as Evidently judged them
    assert {"amount", "credit_score", "region", "prediction"} <= set(verdicts)
    assert "predicted_class" not in verdicts  # batchml drift judges the prediction, not the class it implies
    assert verdicts["amount"]["drifted"] and verdicts["credit_score"]["drifted"]

    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    assert render_run_report(storage, MODEL, shifted_run, sample_rows=50) == ref  # no re-render
    assert load_report(storage, MODEL, shifted_run) == ref
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()} == before


def test_report_and_batchml_drift_agree_on_what_drifted(
    project: batchml.Project, published: batchml.PredictionRun, shifted_run: str
) -> None:
    """The training data scored again: neither flags anything. A shifted dataset: both flag the same columns,
    judged by the same methods where Evidently has them, at the thresholds of the config."""
    storage = project.storage
    config = DriftConfig(js=0.12, max_drifted_share=0.2, features={"amount": {"psi": 3.0, "ks": 1.0}})
    for run_id in (published.run_id, shifted_run):
        ref = render_run_report(storage, MODEL, run_id, config=config)  # records batchml's drift first
        drift = load_drift(storage, MODEL, run_id)
        assert drift is not None
        verdicts = _evidently_verdicts(ref)
        flagged = {column for column, verdict in verdicts.items() if verdict["drifted"]}
        assert flagged == _batchml_flags(drift), (run_id, verdicts, drift.summary)
        assert set(verdicts) == {r["feature"] for r in drift.metrics}  # the same columns, no others
        assert {c: v["method"] for c, v in verdicts.items() if c in {"amount", "region", "prediction"}} == {
            "amount": "psi", "region": "jensenshannon", "prediction": "psi"
        }  # fmt: skip
        assert verdicts["amount"]["threshold"] == 3.0 and verdicts["credit_score"]["threshold"] == 0.2
        assert verdicts["region"]["threshold"] == pytest.approx(0.12 * math.sqrt(math.log(2)))
        meta = json.loads(
            (Path(storage.root) / "monitoring" / MODEL / run_id / "report_meta.json").read_text()
        )
        assert meta["drift"]["governs_alerts"] == "batchml drift"
        assert (
            meta["drift"]["verdict"] == drift.summary["verdict"]
            and meta["drift"]["evidently_drift_share"] == 0.3
        )
        page = Path(ref.html_uri).read_text()
        assert "Alerts and retraining act on batchml drift&#x27;s verdict, not on Evidently&#x27;s" in page
        assert f"every row of {drift.summary['reference']['dataset_version']} (4,000 rows" in page
    assert _batchml_flags(monitor_run(storage, MODEL, published.run_id)) == set()
    assert _batchml_flags(monitor_run(storage, MODEL, shifted_run)) == {"credit_score", "prediction"}


def test_evidently_counts_a_dataset_drifted_exactly_when_batchml_does() -> None:
    # batchml: share > max_drifted_share; Evidently: share >= drift_share, so give it the least such share
    assert least_drifted(0.3, 10) == 4 and least_drifted(0.29, 100) == 30 and least_drifted(0.0, 5) == 1
    assert least_drifted(1.0, 10) == 11  # nothing is ever drifted


def test_unknown_run_or_bad_name_is_a_clear_error(project: batchml.Project) -> None:
    with pytest.raises(NotFoundError, match="prediction run of model 'default_risk' 'nope' not found"):
        render_run_report(project.storage, MODEL, "nope")
    with pytest.raises(InvalidNameError):
        render_run_report(project.storage, "../x", "nope")
    assert load_report(project.storage, MODEL, "nope") is None


def test_sample_reads_exact_rows_across_files_and_row_groups(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "store"))
    files = []
    for part in range(3):  # 3 files x 4 row groups x 25 rows; values = global row position
        table = pa.table({"x": np.arange(part * 100, part * 100 + 100)})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=25)
        files.append(storage.write_new(f"f{part}.parquet", sink.getvalue().to_pybytes()))
    picks = _sample_positions(300, 40, seed=7, side=0)
    assert picks is not None and len(picks) == 40 and len(set(picks.tolist())) == 40
    assert np.array_equal(picks, _sample_positions(300, 40, seed=7, side=0))  # seeded
    sample = _sample_files(storage, files, ["x"], picks)
    assert sample is not None and sample.column("x").to_pylist() == picks.tolist()
    assert _sample_positions(300, 300, seed=7, side=0) is None  # small enough: every row
    assert _sample_files(storage, files, ["x"], None).num_rows == 300  # type: ignore[union-attr]


def test_cli_renders_published_run_and_sql_lists_it(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    config = ["--config", str(project.base_dir / "batchml.toml")]
    env = {"BATCHML_CONFIG": None, "BATCHML_STORAGE": None}
    first = CliRunner().invoke(app, [*config, "report", MODEL, "--json"], env=env)
    assert first.exit_code == 0, (first.stdout, first.stderr)
    data = json.loads(first.stdout)
    assert data["run_id"] == published.run_id and not data["reused"]
    assert data["sampled_current_rows"] == data["total_current_rows"] == published.rows  # under the limit
    assert "all 4,000 rows" in Path(data["html_uri"]).read_text()
    again = CliRunner().invoke(app, [*config, "report", MODEL, "--run", published.run_id], env=env)
    assert again.exit_code == 0 and data["html_uri"] in again.stdout.replace("\n", "")

    con = batchml.connect(project)
    try:
        row = con.execute(
            "SELECT model, run_id, html_uri, sampled_current_rows, total_reference_rows, seed FROM reports"
        ).fetchall()
    finally:
        con.close()
    assert row == [(MODEL, published.run_id, data["html_uri"], published.rows, 4000, 7)]


def _chromium(fallback: str = "/usr/bin/chromium") -> str:
    found = shutil.which("chromium") or (fallback if Path(fallback).exists() else None)
    if found is None:
        message = "chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)"
        if "CI" in os.environ:
            pytest.fail(message)  # in CI the browser check must run, never silently pass
        pytest.skip(message)
    return found


def test_missing_chromium_fails_in_ci_and_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium is not installed"):
        _chromium(fallback="/nonexistent/chromium")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _chromium(fallback="/nonexistent/chromium")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(
    project: batchml.Project, shifted_run: str, tmp_path: Path
) -> None:
    browser = _chromium()
    ref = render_run_report(project.storage, MODEL, shifted_run, sample_rows=1000)
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--virtual-time-budget=10000",
    ]
    url = Path(ref.html_uri).as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True)
    page = re.sub(r"<(script|style)\b.*?</\1>", "", dom.stdout, flags=re.S)  # only what the page drew
    text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
    for expected in ("Dataset Drift", "Data Drift Summary", "amount", "credit_score", "Dataset Summary"):
        assert expected in text, expected
    assert re.search(r"Drift is detected for [1-9][0-9.]*% of columns", text), text[:2000]
    assert "a seeded random sample of 1,000 of 4,000 rows (seed 7)" in text

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1400,2000", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 20_000, "the screenshot is (nearly) blank"
    print(f"screenshot of the rendered report: {shot}")
