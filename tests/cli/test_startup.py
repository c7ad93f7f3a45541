"""`batchml --help`, `query`, `models list` and `info` start without the heavy libraries.

These commands are what people and scripts run most; each fresh process used to import pyarrow, polars,
pandas, scipy and LightGBM (~4 s of CPU here) before doing anything. What a command imports is checked here
(deterministic); what it costs is measured by benchmarks/cli_startup.py (this machine is too noisy to time).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import batchml

#: Libraries these commands must not import: each costs 0.1-2 s of CPU in a fresh process (pydantic with
#: typer >= 0.29 or a pydantic config: ~0.17 s).
HEAVY = (
    "numpy", "pyarrow", "polars", "pandas", "scipy", "sklearn",
    "lightgbm", "evidently", "prefect", "pydantic",
)  # fmt: skip
#: Not needed with local storage either (~0.03 s); object storage goes through fsspec.
REMOTE_ONLY = ("fsspec",)

LIGHT_COMMANDS = [
    ["--help"],
    ["models", "--help"],
    ["query", "SELECT model, version FROM model_aliases"],
    ["query", "SELECT count(*) FROM predictions", "--json"],
    ["models", "list"],
    ["info", "--json"],
]


def _imported(args: list[str], cwd: Path) -> set[str]:
    """Top-level modules a fresh `python -m batchml ARGS` imports (from -X importtime)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHML_")}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "batchml", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 0, "\n".join(line for line in lines if not line.startswith("import time:"))
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0] for line in lines if line.startswith("import time:")
    }


def test_light_commands_import_no_heavy_library(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    unwanted = {*HEAVY, *REMOTE_ONLY}  # the project's storage is a local folder
    heavy = {" ".join(a): sorted(unwanted & _imported(a, project.base_dir)) for a in LIGHT_COMMANDS}
    assert heavy == {command: [] for command in heavy}


def test_a_command_that_needs_them_still_imports_them(tmp_path: Path) -> None:
    # The check above can fail: sample-data writes a CSV with pyarrow.
    assert "pyarrow" in _imported(["sample-data", str(tmp_path / "loans.csv"), "--rows", "10"], tmp_path)
