"""The whole path: on data batchml has never seen (awkward names, integer ids, a regression target), and
`make demo` as a new user runs it, on a busy machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

import batchml

REPO = Path(__file__).resolve().parents[1]

AWKWARD_TOML = """
[storage]
root = "store"

[models.house-prices]
dataset = "houses"
entity_id = "Parcel #"
timestamp = "sold on"
target = "Sale Price (€)"
task = "regression"
exclude = ["notes; free text"]
categorical = ["zip code"]

[models.house-prices.params]
num_iterations = 25
"""


def write_houses(path: Path, rows: int = 3000, seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    area = rng.gamma(4.0, 30.0, rows)
    quarter = rng.choice(['Nörth "old"', "south, new", "east/west"], rows)
    zip_code = rng.choice([1010, 2020, 3030, 4040], rows)
    price = area * 2000 + (quarter == "south, new") * 50_000 + (zip_code == 4040) * 30_000
    pl.DataFrame(
        {
            "Parcel #": np.arange(10_000, 10_000 + rows),
            "sold on": pl.date_range(pl.date(2024, 1, 1), pl.date(2025, 12, 31), eager=True).sample(
                rows, with_replacement=True, seed=seed
            ),
            "living area (m²)": np.where(rng.random(rows) < 0.05, np.nan, area),
            "quartier [district]": quarter,
            "zip code": zip_code,
            "notes; free text": ["n/a"] * rows,
            "Sale Price (€)": price + rng.normal(0, 10_000, rows),
        }
    ).write_csv(path)


def test_any_tabular_dataset_works_with_only_a_config(
    make_project: Callable[..., batchml.Project], tmp_path: Path
) -> None:
    source = tmp_path / "houses.csv"
    write_houses(source)
    project = make_project(AWKWARD_TOML)
    version = batchml.snapshot_dataset(project, "houses", f"file://{source}")
    model = batchml.train(project, "house-prices")
    assert model.card["metrics"]["r2"] > 0.5
    kinds = {f.name: f.kind for f in model.features}
    assert kinds == {
        "living area (m²)": "numeric",
        "quartier [district]": "categorical",
        "zip code": "categorical",
    }
    batchml.promote(project, "house-prices", model.version)
    run = batchml.score(project, "house-prices")
    batchml.publish(project, "house-prices", run.run_id)
    con = batchml.connect(project)
    assert run.rows == version.rows == 3000
    lookup = "SELECT prediction, predicted_class FROM predictions WHERE model = ? AND entity_id = ?"
    row = con.execute(lookup, ["house-prices", "10042"]).fetchone()
    assert row is not None and row[0] > 0 and row[1] is None


@pytest.mark.slow
def test_make_demo_on_a_busy_machine_publishes_and_monitors_a_shifted_batch(tmp_path: Path) -> None:
    """`make demo`'s command (`python -m flows.demo`, smaller data) in a copy of the demo's files, started
    while two busy loops keep both CPUs of a small machine busy. There the ephemeral Prefect API took
    longer than its 20 s default to start and the demo failed before doing anything; the flows allow 180 s.
    The loops run until the first flow run begins (the API is up): loading the whole demo would only make the
    suite slower, not the check stronger. The demo runs its own ephemeral API (no PREFECT_* settings inherited
    from the tests' server), and its monitoring output is checked in the serving file, opened read-only as an
    app would."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "flows", copy / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "batchml.toml", copy / "batchml.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    demo = subprocess.Popen(
        [sys.executable, "-m", "flows.demo", "--rows", "20000"],
        cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert demo.stdout is not None
    lines: list[str] = []
    try:
        for line in demo.stdout:
            lines.append(line)
            if "Beginning flow run" in line:
                break
    finally:
        for process in busy:
            process.kill()
            process.wait()
    try:
        rest, _ = demo.communicate(timeout=500)
    finally:
        demo.kill()
    output = "".join(lines) + rest
    assert demo.returncode == 0, output[-8000:]
    assert "Timed out while attempting to connect" not in output
    assert any("Beginning flow run" in line for line in lines), output[-8000:]

    project = batchml.Project.open(copy / "batchml.toml")
    con = duckdb.connect(str(batchml.database_path(project)), read_only=True)
    try:
        published = "SELECT DISTINCT run_id, dataset_version FROM predictions"
        [(run_id, dataset)] = con.execute(published).fetchall()
        drifted = con.execute(
            "SELECT count(*) FILTER (drifted), count(*) FROM drift_metrics WHERE run_id = ?", [run_id]
        ).fetchone()
        kinds = {k for (k,) in con.execute("SELECT kind FROM alerts WHERE run_id = ?", [run_id]).fetchall()}
        [(html_uri,)] = con.execute("SELECT html_uri FROM reports WHERE run_id = ?", [run_id]).fetchall()
        [(status,)] = con.execute("SELECT status FROM retrains").fetchall()
    finally:
        con.close()
    assert dataset.startswith("new_applications@")  # the shifted batch is what apps now read
    assert drifted is not None and 0 < drifted[0] < drifted[1]
    assert {"drift", "prediction_drift"} <= kinds
    assert status == "unchanged"  # no outcomes for the new batch yet: nothing newer to retrain on
    report = Path(html_uri.removeprefix("file://"))
    assert report.is_file() and report.stat().st_size > 0
    assert str(report.relative_to(report.parents[3])) in output  # the summary says where to open it
    for what in ("FROM drift_metrics", "FROM alerts", "make serve"):
        assert what in output
