"""The flow run a record was written for: stamped by the library inside `provenance.flow_run`, NULL outside.

These run without Prefect: the flow layer only sets the ids (tests/test_flows.py shows a real flow run's).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import batchml
from batchml import provenance
from batchml.models.registry import RegistryReader
from batchml.scoring.publications import PublicationLog
from batchml.scoring.runs import get_run
from batchml.store.records import RECORD_HASH, seal

IDS = {"flow_run_id": "0b9e-flow-run", "deployment_id": "7c1d-deployment", "flow_name": "pipeline"}
NULLS = dict.fromkeys(provenance.FIELDS)

TABLES = {
    "runs": "SELECT flow_run_id, deployment_id, flow_name FROM runs",
    "models": "SELECT flow_run_id, deployment_id, flow_name FROM models",
    "alias_events": "SELECT flow_run_id, deployment_id, flow_name FROM alias_events",
    "publications": "SELECT flow_run_id, deployment_id, flow_name FROM publications",
}


def _sql(project: batchml.Project) -> dict[str, list[tuple[str | None, ...]]]:
    con = batchml.connect(project)
    try:
        return {table: con.execute(sql).fetchall() for table, sql in TABLES.items()}
    finally:
        con.close()


def _ids(record: dict[str, object]) -> dict[str, object]:
    return {field: record.get(field, "missing") for field in provenance.FIELDS}


def _pipeline(project: batchml.Project) -> str:
    batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    batchml.promote(project, "default_risk", model.version, reason="test")
    run = batchml.score(project, "default_risk")
    batchml.publish(project, "default_risk", run.run_id)
    return run.run_id


def test_records_written_inside_a_flow_run_carry_its_ids(project: batchml.Project) -> None:
    with provenance.flow_run(**IDS):
        run_id = _pipeline(project)
    assert provenance.current() == NULLS  # the ids end with the block

    card = RegistryReader(project.storage).get("default_risk", 1).card
    [promotion] = RegistryReader(project.storage).events("default_risk")
    [publication] = PublicationLog(project.storage).events("default_risk")
    manifest = get_run(project.storage, "default_risk", run_id).manifest
    assert [_ids(r) for r in (card, promotion, publication, manifest)] == [IDS] * 4
    expected = (IDS["flow_run_id"], IDS["deployment_id"], IDS["flow_name"])
    assert _sql(project) == {table: [expected] for table in TABLES}


def test_records_written_outside_a_flow_record_nulls(project: batchml.Project) -> None:
    run_id = _pipeline(project)
    manifest = get_run(project.storage, "default_risk", run_id).manifest
    [publication] = PublicationLog(project.storage).events("default_risk")
    assert _ids(manifest) == _ids(publication) == NULLS
    assert _sql(project) == {table: [(None, None, None)] for table in TABLES}


def test_records_older_than_the_fields_read_as_null_in_sql(project: batchml.Project) -> None:
    with provenance.flow_run(**IDS):
        _pipeline(project)
    root = Path(project.storage.url.removeprefix("file://"))
    records = [p for p in root.rglob("*.json") if "flow_run_id" in p.read_text()]
    assert len(records) >= 4  # card, alias event, manifest, publication event
    for path in records:  # as a batchml from before these fields wrote them
        stored = json.loads(path.read_text())
        old = {k: v for k, v in stored.items() if k not in (*provenance.FIELDS, RECORD_HASH)}
        path.chmod(0o644)
        path.write_text(json.dumps(seal(old)))
    batchml.rebuild_catalog(project)
    assert _sql(project) == {table: [(None, None, None)] for table in TABLES}


def test_an_empty_flow_run_id_is_refused_naming_the_field() -> None:
    refused = pytest.raises(batchml.InvalidNameError, match=r"^flow_run_id '' is invalid: use a non-empty")
    with refused, provenance.flow_run(""):
        pass
