"""Shared fixtures: a small seeded loan dataset and throwaway projects on real local storage."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# LightGBM's OpenMP threads spin while waiting; on a busy 2-core box that makes tiny fits 20x slower.
# Must be set before lightgbm loads libgomp, i.e. before batchml is imported below.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Prefect keeps its home out of ~/.prefect and sends nothing anywhere. Set here, before any test module
# imports prefect, whatever order they are collected in. This file runs a second time as `tests.conftest`
# (test modules import its constants): that run keeps the first run's home.
if "BATCHML_TEST_PREFECT_HOME" not in os.environ:
    os.environ["BATCHML_TEST_PREFECT_HOME"] = tempfile.mkdtemp(prefix="batchml-test-prefect-")
    atexit.register(shutil.rmtree, os.environ["BATCHML_TEST_PREFECT_HOME"], ignore_errors=True)
os.environ["PREFECT_HOME"] = os.environ["BATCHML_TEST_PREFECT_HOME"]
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import batchml
from batchml.serving import prediction_tables
from batchml.store.storage import Storage
from batchml.testing import write_loans
from tests.s3_server import AWS_UNSET, MotoS3, aws_environment, moto_s3

SAMPLE_ROWS = 4000

PROJECT_TOML = """
[storage]
root = "store"

[datasets.loans]
source = "{source}"

[models.default_risk]
dataset = "loans"
entity_id = "loan_id"
timestamp = "application_date"
target = "defaulted"
task = "binary"

[models.default_risk.params]
num_iterations = 30
num_leaves = 15
"""


@pytest.hookimpl(trylast=True)  # after `-m` has selected: `-m "not slow"` keeps the quick variants
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop a `quick_variant_of(NAME)` test when NAME runs too: it checks a subset of NAME's cases, for fast
    loops (`pytest -m "not slow"`), and would only repeat them in a full run."""
    selected = {item.name for item in items}
    markers = {item: item.get_closest_marker("quick_variant_of") for item in items}
    repeats = [item for item, marker in markers.items() if marker and marker.args[0] in selected]
    if repeats:
        config.hook.pytest_deselected(items=repeats)
        items[:] = [item for item in items if item not in repeats]


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One temporary Prefect server (SQLite) for the whole session, whichever test module asks first.

    Defined here, not in a test module: a fixture imported into another module is a second fixture, and two
    servers alive at once leave the flows of the second waiting on the first one's concurrency slots.
    """
    from prefect.testing.utilities import prefect_test_harness  # prefect loads only where a test needs it

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoS3]:
    """One moto S3 server per session, started by the first test that asks; the AWS chain sees fake
    credentials and a loopback-only endpoint."""
    with pytest.MonkeyPatch.context() as patch:
        for name in AWS_UNSET:
            patch.delenv(name, raising=False)
        for name, value in aws_environment().items():
            patch.setenv(name, value)
        with moto_s3() as server:
            yield server


@pytest.fixture
def no_cached_s3fs(moto: MotoS3) -> Iterator[None]:
    """s3fs caches filesystem instances (and their listings) per arguments: no test sees another's."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def bucket(moto: MotoS3) -> str:
    """A fresh bucket for one test."""
    return moto.new_bucket()


@pytest.fixture(scope="session")
def loans_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded CSV of SAMPLE_ROWS loans, written once per session (treat as read-only)."""
    return write_loans(tmp_path_factory.mktemp("source") / "loans.csv", rows=SAMPLE_ROWS, seed=7)


@pytest.fixture
def make_project(tmp_path: Path, loans_csv: Path) -> Callable[..., batchml.Project]:
    """Build a project in a fresh folder; `toml` may replace the default config text."""

    def make(toml: str | None = None, folder: str = "project") -> batchml.Project:
        root = tmp_path / folder
        root.mkdir(parents=True, exist_ok=True)
        (root / "batchml.toml").write_text(toml or PROJECT_TOML.format(source=loans_csv))
        return batchml.Project.open(root / "batchml.toml")

    return make


@pytest.fixture
def project(make_project: Callable[..., batchml.Project]) -> batchml.Project:
    """A fresh project with the loans dataset configured but nothing stored yet."""
    return make_project()


@pytest.fixture
def champion(project: batchml.Project) -> batchml.ModelVersion:
    """The loans snapshot, a trained default_risk model, promoted to champion."""
    batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    batchml.promote(project, "default_risk", model.version, reason="fixture")
    return model


@pytest.fixture
def published(project: batchml.Project, champion: batchml.ModelVersion) -> batchml.PredictionRun:
    """A scored and published run of the champion."""
    run = batchml.score(project, "default_risk")
    batchml.publish(project, "default_risk", run.run_id)
    return run


@pytest.fixture
def run_file_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run ids whose Parquet files a build reads (the rest were copied from the previous serving file)."""
    reads: list[str] = []
    original = prediction_tables.run_files_sql

    def spy(storage: Storage, runs: list[batchml.PredictionRun], verify: bool) -> str | None:
        reads.extend(run.run_id for run in runs)
        return original(storage, runs, verify)

    monkeypatch.setattr(prediction_tables, "run_files_sql", spy)
    return reads
