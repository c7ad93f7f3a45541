"""deployments/prefect.yaml says what deployments/__init__.py says: the file `prefect deploy` reads and the
list `flow.serve` serves cannot disagree. (Deployed and run on a real server: test_deployments_pool.py.)"""

from __future__ import annotations

from typing import Any

import yaml
from prefect.events import DeploymentEventTrigger

from deployments import DEPLOYMENTS, POOL
from deployments.prefect_yaml import PATH, main, render


def test_the_committed_prefect_yaml_is_generated_from_the_deployments_list() -> None:
    assert PATH.read_text() == render(), "stale: run `python -m deployments.prefect_yaml`"
    assert main(["--check"]) == 0


def test_each_prefect_yaml_deployment_is_the_one_flow_serve_registers() -> None:
    document: dict[str, Any] = yaml.safe_load(PATH.read_text())
    entries = {d["name"]: d for d in document["deployments"]}
    assert list(entries) == [spec.name for spec in DEPLOYMENTS]
    for spec in DEPLOYMENTS:
        entry, served = entries[spec.name], spec.to_deployment()
        assert entry["entrypoint"] == served.entrypoint  # the same file and function
        assert entry["parameters"] == served.parameters and entry["enforce_parameter_schema"] is True
        assert entry["concurrency_limit"] == served.concurrency_limit
        assert [(s["cron"], s["timezone"]) for s in entry["schedules"]] == [
            (s.schedule.cron, s.schedule.timezone)  # type: ignore[union-attr]
            for s in served.schedules
        ]
        assert [DeploymentEventTrigger(**t) for t in entry["triggers"]] == served.triggers
        assert entry["work_pool"]["name"] == POOL and entry["tags"] == served.tags
    step = document["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert step == {"directory": "{{ $BATCHML_REPO }}"}  # resolved on the worker, when a run starts
