"""What `pip install batchml` gets: the wheel's files and requirements, and a CLI that works without Prefect.

Offline: the wheel is built and installed with uv from its cache, which `make`'s install has just filled (the
build backend for the editable install, every core dependency for the virtualenv).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest

import batchml

ROOT = Path(__file__).resolve().parent.parent
#: What the build reads: a copy of them is built, so the build writes nothing into the checkout.
SOURCES = ("pyproject.toml", "README.md", "batchml", "flows", "deployments")
#: Core requirements the library does not import by name (fsspec loads s3fs for s3:// roots).
LOADED_BY_OTHERS = {"s3fs"}
#: Extras the library imports inside the functions that need them, never at import time: the compiled scoring
#: engines (`batchml.scoring.engines` says when one is missing, and scoring falls back or names the extra).
LAZY_EXTRAS = ("engines",)
#: Requirements that belong in the `prefect` extra, never in the core.
PREFECT_ONLY = {"prefect", "fastapi", "sqlalchemy"}


def _uv(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("uv") is None:
        pytest.skip("uv is not installed in this virtualenv (`make` installs it)")
    done = subprocess.run(
        [sys.executable, "-m", "uv", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr
    return done


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (`scikit-learn>=1.4` -> `scikit-learn`)."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built offline from a copy of its sources."""
    work = tmp_path_factory.mktemp("wheel")
    (work / "src").mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, work / "src" / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, work / "src" / name)
    _uv("build", "--wheel", "--offline", "--quiet", "-o", str(work / "dist"), str(work / "src"))
    [built] = (work / "dist").glob("batchml-*.whl")
    return built


def test_the_wheel_ships_the_flows_and_deployments(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        path.relative_to(ROOT).as_posix()
        for folder in ("flows", "deployments")
        for pattern in ("*.py", "*.yaml")
        for path in (ROOT / folder).rglob(pattern)
    }
    assert {"flows/runner.py", "deployments/serve.py", "deployments/prefect.yaml"} <= shipped
    assert shipped <= names, sorted(shipped - names)
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_the_core_requirements_are_ranges_and_prefect_is_an_extra(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        [path] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(archive.read(path).decode())
    requires = meta.get_all("Requires-Dist") or []
    core = [r for r in requires if "extra ==" not in r]
    prefect = [r for r in requires if re.search(r"""extra == ["']prefect["']""", r)]
    assert core and not any("==" in r for r in core), core
    assert not PREFECT_ONLY & {_name(r) for r in core}, core
    assert {_name(r) for r in prefect} >= PREFECT_ONLY, prefect
    assert "Operating System :: POSIX" in (meta.get_all("Classifier") or [])


def test_the_core_requirements_are_what_the_library_imports() -> None:
    """Every third-party module batchml imports comes from a core requirement or an extra it imports lazily,
    and every core requirement is used."""
    imported = set()
    for path in (ROOT / "batchml").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {a.name.partition(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.partition(".")[0])
    own = {"batchml", "flows"}  # flows: `batchml run`'s stated exception, shipped in the same wheel
    third_party = imported - own - set(sys.stdlib_module_names)
    providers = metadata.packages_distributions()
    # An extra that is not installed has no distribution to look up: its module names it (lleaves, tl2cgen).
    distributions = {_name(providers.get(module, [module])[0]) for module in third_party}
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    core = {_name(r) for r in config["project"]["dependencies"]}
    extras = config["project"]["optional-dependencies"]
    lazy = {_name(r) for extra in LAZY_EXTRAS for r in extras[extra]}
    assert distributions <= core | lazy, sorted(distributions - core - lazy)
    assert core - distributions == LOADED_BY_OTHERS


@pytest.mark.slow  # a virtualenv of its own (~5 s offline from uv's cache) and a few CLI processes
def test_the_cli_works_without_prefect(wheel: Path, project: batchml.Project, tmp_path: Path) -> None:
    """`pip install batchml` (no extra): the CLI and queries work; a flow command names the extra."""
    venv = tmp_path / "venv"
    python = str(venv / "bin" / "python")
    _uv("venv", "--quiet", "--python", sys.executable, str(venv))
    _uv("pip", "install", "--offline", "--quiet", "--python", python, "-c", str(ROOT / "constraints.txt"),
        str(wheel))  # fmt: skip
    batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    batchml.promote(project, "default_risk", model.version, reason="test")
    run = batchml.score(project, "default_risk")
    batchml.publish(project, "default_risk", run.run_id)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHML_", "PYTHONPATH"))}
    config = str(project.base_dir / "batchml.toml")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [str(venv / "bin" / "batchml"), *args]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    no_prefect = subprocess.run([python, "-c", "import prefect"], capture_output=True, text=True, env=env)
    assert "No module named 'prefect'" in no_prefect.stderr
    assert cli("--help").returncode == 0
    query = cli("--config", config, "query", "SELECT count(*) AS n FROM predictions", "--json")
    assert query.returncode == 0, query.stderr
    assert str(run.rows) in query.stdout
    listed = cli("run")  # the flows are listed from their source, without importing Prefect
    assert listed.returncode == 0 and "pipeline" in listed.stdout, listed.stderr
    refused = cli("run", "pipeline", "--config", config)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        "error: flow 'pipeline' needs Prefect, which is not installed: pip install 'batchml[prefect]'"
    ]

