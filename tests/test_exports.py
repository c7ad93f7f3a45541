"""The public API is what `__all__` says, kept sorted and pinned; the library keeps its layers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import batchml

ROOT = Path(__file__).resolve().parents[1]

#: The public surface, written out: a name that appears, moves or goes must be a decision made here.
PUBLIC_API = [
    "BatchMLError",
    "Config",
    "ConfigError",
    "ConflictError",
    "DataError",
    "DatasetVersion",
    "IntegrityError",
    "InvalidNameError",
    "ModelSpec",
    "ModelVersion",
    "NotFoundError",
    "PredictionRun",
    "Project",
    "PromotionError",
    "QueryTimeoutError",
    "ReadOnlyError",
    "SchemaError",
    "TransientError",
    "connect",
    "database_path",
    "load_config",
    "lookup",
    "promote",
    "publish",
    "query",
    "read_dataset",
    "rebuild_catalog",
    "register_model",
    "rollback_model",
    "rollback_predictions",
    "score",
    "snapshot_dataset",
    "train",
]


def test_all_is_pinned() -> None:
    assert batchml.__all__ == PUBLIC_API


def test_every_public_name_has_one_home_and_importing_batchml_loads_none() -> None:
    code = (
        "import sys, batchml; loaded = sorted(m for m in sys.modules if m.startswith('batchml.')); "
        "homes = sorted(batchml._HOME_OF); [getattr(batchml, n) for n in batchml.__all__]; "
        "print(loaded, homes)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"{['batchml.redact']} {sorted(PUBLIC_API)}"


def test_all_is_sorted_and_complete() -> None:
    assert batchml.__all__ == sorted(batchml.__all__)
    public = {name for name in dir(batchml) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(batchml, name)).__name__ == "module"}
    assert set(batchml.__all__) == public - modules


def test_library_layering_contract_holds() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is a dev dependency"
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
