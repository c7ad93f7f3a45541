"""Alerts from breaches (recorded once each, listed in SQL) and debounced retrain triggers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import batchml
from batchml.config import DriftConfig, MonitoringConfig, RetrainConfig
from batchml.models.registry import RegistryReader
from batchml.monitoring import alerts
from batchml.monitoring.drift import monitor_run

DRIFTED = {"verdict": "drifted", "drifted_share": 0.5, "max_drifted_share": 0.3, "prediction_drifted": True}
PERFORMANCE = {
    "labels_version": "loan_labels@abc",
    "rows": [
        {"model_version": 1, "run_id": "r1", "period": "2026-01-01", "slice": "all", "slice_value": "all",
         "metric": "auc", "value": 0.61, "validation_value": 0.8, "rows": 500, "degraded": True},
        {"model_version": 1, "run_id": "r1", "period": "2026-01-01", "slice": "region",
         "slice_value": "north", "metric": "auc", "value": 0.79, "validation_value": 0.8, "rows": 500,
         "degraded": False},
    ],
}  # fmt: skip


def test_breaches_become_alerts_once_and_land_in_sql(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    version = RegistryReader(project.storage).get("default_risk", 1)
    config = MonitoringConfig(retrain=RetrainConfig(max_model_age_days=1.0))
    later = datetime.now(UTC) + timedelta(days=2)
    found = alerts.find_breaches(
        "default_risk", version, published.run_id, config, DRIFTED, PERFORMANCE, at=later
    )
    assert [a["kind"] for a in found] == ["drift", "prediction_drift", "performance", "model_age"]
    assert found[2]["value"] == 0.61 and found[2]["threshold"] == 0.8
    assert found[3]["threshold"] == 1.0 and found[3]["value"] > 2.0
    assert (
        alerts.find_breaches("default_risk", version, published.run_id, config, {"verdict": "stable"}) == []
    )

    new = alerts.record(project.storage, found)
    assert [a["seq"] for a in new] == [1, 2, 3, 4] and all(a["at"] for a in new)
    assert alerts.record(project.storage, found) == []  # the same breaches again: nothing new
    assert len(alerts.list_alerts(project.storage, "default_risk")) == 4

    batchml.rebuild_catalog(project)
    con = batchml.connect(project)
    try:
        rows = con.execute("SELECT kind, version, run_id, value FROM alerts ORDER BY seq").fetchall()
    finally:
        con.close()
    assert [r[0] for r in rows] == ["drift", "prediction_drift", "performance", "model_age"]
    assert rows[0][1:3] == (1, published.run_id)


def test_retrain_triggers_are_debounced_and_exclusive(project: batchml.Project) -> None:
    breach = alerts.breach(
        "default_risk", "drift", "run:x", version=1, run_id="x", detail="drifted", value=0.5, threshold=0.3
    )
    results: list[dict[str, object] | None] = []

    def claim() -> None:
        results.append(alerts.claim_retrain(project.storage, "default_risk", [breach], 24))

    racers = [threading.Thread(target=claim) for _ in range(4)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    [won] = [r for r in results if r is not None]
    assert won["id"] == "r-default_risk-000001" and won["alert_ids"] == [breach["id"]]
    assert alerts.claim_retrain(project.storage, "default_risk", [breach], 24) is None  # inside the window
    tomorrow = datetime.now(UTC) + timedelta(hours=25)
    again = alerts.claim_retrain(project.storage, "default_risk", [breach], 24, at=tomorrow)
    assert again is not None and again["seq"] == 2

    alerts.record_outcome(
        project.storage, won, {"status": "held_back", "model_version": 2, "detail": "gates"}
    )
    listed = alerts.list_retrains(project.storage, "default_risk")
    assert [r["outcome"] and r["outcome"]["status"] for r in listed] == ["held_back", None]
    tables = alerts.catalog_tables(project.storage)
    assert tables["retrains"].column("status").to_pylist() == ["held_back", "running"]


def test_the_training_data_scored_again_is_no_breach(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    """The published run scored the model's own training data (default time split): no drift, no alert."""
    version = RegistryReader(project.storage).get("default_risk", 1)
    drift = monitor_run(project.storage, "default_risk", published.run_id, DriftConfig()).summary
    assert alerts.find_breaches("default_risk", version, published.run_id, MonitoringConfig(), drift) == []
