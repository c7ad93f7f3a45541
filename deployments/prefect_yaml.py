"""deployments/prefect.yaml, generated from DEPLOYMENTS: `python -m deployments.prefect_yaml [--check]`.

The file is what `prefect deploy --all --prefect-file deployments/prefect.yaml` reads (run from the repository
folder, where its entrypoints are). It is committed so an operator can read and deploy it without Python, and
regenerated from the same list that `deployments.serve` serves, so the two cannot disagree
(tests/test_deployments_yaml.py fails when the committed file is stale).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from deployments import DEPLOYMENTS, POOL, DeploymentSpec

PATH = Path(__file__).with_name("prefect.yaml")

HEADER = f"""\
# Generated from deployments/__init__.py by `python -m deployments.prefect_yaml`: edit that list, not this.
#
# Deploy from the repository folder against a Prefect server (PREFECT_API_URL), then run a worker on the pool:
#   prefect work-pool create {POOL} --type process
#   prefect deploy --all --prefect-file deployments/prefect.yaml
#   BATCHML_REPO=$PWD prefect worker start --pool {POOL}
# The worker runs each flow in $BATCHML_REPO (the pull step below; read when a run starts, on the worker), so
# the entrypoints resolve there, and flows open $BATCHML_CONFIG, else $BATCHML_REPO/batchml.toml.
"""


def entrypoint(spec: DeploymentSpec) -> str:
    """`flows/score.py:score_and_publish`: the flow's file in the repository, as `flow.serve` has it."""
    module = spec.flow.fn.__module__
    return f"{module.replace('.', '/')}.py:{spec.flow.fn.__name__}"


def deployment_entry(spec: DeploymentSpec) -> dict[str, Any]:
    """One `deployments:` entry of prefect.yaml."""
    return {
        "name": spec.name,
        "description": spec.description,
        "entrypoint": entrypoint(spec),
        "tags": list(spec.tags),
        "parameters": dict(spec.parameters),
        "enforce_parameter_schema": True,
        "concurrency_limit": spec.concurrency_limit,
        "work_pool": {"name": POOL, "work_queue_name": "default"},
        "schedules": [{"cron": spec.cron, "timezone": spec.timezone}] if spec.cron else [],
        "triggers": [dict(t) for t in spec.triggers],
    }


def render(specs: tuple[DeploymentSpec, ...] = DEPLOYMENTS) -> str:
    """The text of prefect.yaml for `specs`."""
    document = {
        "name": "batchml",
        "prefect-version": "3.8.8",
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $BATCHML_REPO }}"}}],
        "deployments": [deployment_entry(spec) for spec in specs],
    }
    return HEADER + "\n" + yaml.safe_dump(document, sort_keys=False, width=110, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    """Write prefect.yaml, or with --check exit 1 when the committed file differs from DEPLOYMENTS."""
    prog, summary = "python -m deployments.prefect_yaml", __doc__.split("\n")[0]
    parser = argparse.ArgumentParser(prog=prog, description=summary)
    parser.add_argument("--check", action="store_true", help="fail if the file is not up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = PATH.read_text() if PATH.exists() else ""
        if current != text:
            print(f"{PATH} is stale: run `python -m deployments.prefect_yaml`", file=sys.stderr)
            return 1
        return 0
    PATH.write_text(text)
    print(f"wrote {PATH} ({len(DEPLOYMENTS)} deployments)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
