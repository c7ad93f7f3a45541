"""Delayed labels: ingest, and metrics joined to the run that was published at each label's time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

import batchml
from batchml.data import labels
from batchml.monitoring import performance
from batchml.scoring.publications import PublicationLog
from tests.conftest import PROJECT_TOML

MONITORING = """
[models.default_risk.monitoring.labels]
dataset = "loan_labels"
entity_id = "loan_id"
label = "defaulted"
label_time = "known_at"

[models.default_risk.monitoring.performance]
metric = "auc"
max_drop = 0.05
period = "day"
slices = ["region"]
min_rows = 300
"""


@pytest.fixture
def project(make_project: Callable[..., batchml.Project], loans_csv: Path) -> batchml.Project:
    """The default project plus a labels config."""
    return make_project(PROJECT_TOML.format(source=loans_csv) + MONITORING)


def _labels(loans_csv: Path, times: list[datetime], path: Path, flip: bool = False) -> Path:
    """The first len(times) loans' true `defaulted` (flipped if asked), known at `times`."""
    loans = pl.read_csv(loans_csv).head(len(times))
    label = (1 - pl.col("defaulted")) if flip else pl.col("defaulted")
    frame = loans.select("loan_id", label.alias("defaulted")).with_columns(
        pl.Series("known_at", times, dtype=pl.Datetime("us", "UTC"))
    )
    frame.write_parquet(path)
    return path


def test_labels_ingest_versions_and_checks_columns(
    project: batchml.Project, loans_csv: Path, tmp_path: Path
) -> None:
    now = datetime.fromisoformat("2026-01-01T00:00:00+00:00")
    source = _labels(loans_csv, [now] * 100, tmp_path / "labels.parquet")
    version = labels.ingest(project, "loan_labels", str(source))
    assert (version.rows, version.columns) == (100, ["loan_id", "defaulted", "known_at"])
    assert labels.ingest(project, "loan_labels", str(source)).reused

    pl.read_parquet(source).drop("known_at").write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(batchml.SchemaError, match=r"'known_at' \(label time\)"):
        labels.ingest(project, "loan_labels", str(tmp_path / "bad.parquet"))
    assert len(batchml.data.datasets.list_versions(project.storage, "loan_labels")) == 1  # nothing stored
    with pytest.raises(batchml.ConfigError, match="no model takes labels from dataset 'other'"):
        labels.ingest(project, "other", str(source))


def test_labels_join_the_run_published_at_label_time(
    project: batchml.Project, published: batchml.PredictionRun, loans_csv: Path, tmp_path: Path
) -> None:
    second = batchml.train(project, "default_risk", params={"num_iterations": 10})
    batchml.promote(project, "default_risk", second.version, reason="test")
    run_b = batchml.score(project, "default_risk")
    batchml.publish(project, "default_risk", run_b.run_id)
    at_a, at_b = (
        datetime.fromisoformat(e["at"]) for e in PublicationLog(project.storage).events("default_risk")
    )
    times = (
        [at_a - timedelta(days=1)] * 10
        + [at_a + (at_b - at_a) / 2] * 1990
        + [at_b + timedelta(hours=1)] * 2000
    )
    source = _labels(loans_csv, times, tmp_path / "labels.parquet")
    version = labels.ingest(project, "loan_labels", str(source))
    spec = project.config.model("default_risk")

    result = performance.compute(project.storage, "default_risk", spec, version)
    assert (result.record["labels"], result.record["joined"], result.record["without_publication"]) == (
        4000,
        3990,
        10,
    )
    overall = {
        (r["model_version"], r["run_id"]): r
        for r in result.rows
        if r["slice"] == "all" and r["metric"] == "auc"
    }
    assert {k: r["rows"] for k, r in overall.items()} == {
        (1, published.run_id): 1990,
        (2, run_b.run_id): 2000,
    }
    assert all(r["degraded"] is False for r in overall.values())  # labelled rows are training rows: no drop
    assert (
        overall[(1, published.run_id)]["validation_value"]
        == batchml.train(project, "default_risk").card["metrics"]["auc"]
    )
    small = [r for r in result.rows if r["slice"] == "region" and r["rows"] < 300]
    assert small and all(r["degraded"] is None for r in small)  # reported, not judged
    assert performance.compute(project.storage, "default_risk", spec, version).reused

    batchml.rebuild_catalog(project)
    con = batchml.connect(project)
    try:
        rows = con.execute(
            "SELECT model_version, run_id, sum(rows) FROM performance_metrics "
            "WHERE slice = 'all' AND metric = 'auc' GROUP BY ALL ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    assert rows == [(1, published.run_id, 1990), (2, run_b.run_id, 2000)]


def test_flipped_labels_are_flagged_as_degraded(
    project: batchml.Project, published: batchml.PredictionRun, loans_csv: Path, tmp_path: Path
) -> None:
    [event] = PublicationLog(project.storage).events("default_risk")
    later = datetime.fromisoformat(event["at"]) + timedelta(minutes=1)
    source = _labels(loans_csv, [later] * 2000, tmp_path / "flipped.parquet", flip=True)
    version = labels.ingest(project, "loan_labels", str(source))
    result = performance.compute(
        project.storage, "default_risk", project.config.model("default_risk"), version
    )
    degraded = result.degraded
    assert {(r["slice"], r["metric"]) for r in degraded} >= {("all", "auc")}
    [overall] = [r for r in degraded if r["slice"] == "all"]
    assert overall["value"] < 0.5 < overall["validation_value"] and overall["rows"] == 2000
    assert not [r for r in result.rows if r["metric"] != "auc" and r["degraded"] is not None]


def test_cli_labels_performance_and_alerts(
    project: batchml.Project, published: batchml.PredictionRun, loans_csv: Path, tmp_path: Path
) -> None:
    from tests.cli.test_cli import cli, cli_error, cli_json

    [event] = PublicationLog(project.storage).events("default_risk")
    later = datetime.fromisoformat(event["at"]) + timedelta(minutes=1)
    source = _labels(loans_csv, [later] * 1000, tmp_path / "labels.parquet", flip=True)
    assert "no model takes labels" in cli_error(project, "labels", "ingest", "other", str(source))
    ingested = cli_json(project, "labels", "ingest", "loan_labels", str(source))
    assert ingested["rows"] == 1000 and not ingested["reused"]
    record = cli_json(project, "performance", "default_risk")
    assert record["joined"] == 1000 and any(r["degraded"] for r in record["rows"])
    assert "degraded" in cli(project, "performance", "default_risk").stdout
    assert cli_json(project, "alerts", "default_risk") == {"alerts": []}  # the monitor raises alerts
