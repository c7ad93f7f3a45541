"""Who, where and with what code: the lineage recorded in model cards and run manifests."""

from __future__ import annotations

import getpass
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("batchml", "lightgbm", "numpy", "polars", "pyarrow", "duckdb", "scikit-learn")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide what a model computes."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def code_version() -> str:
    """The version of the scoring code, part of every prediction run's content key."""
    return f"batchml-{package_versions()['batchml']}"


def git_state(path: Path) -> dict[str, Any]:
    """The git commit of `path` and whether the work tree has uncommitted changes (None outside git)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=path, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def actor() -> dict[str, str]:
    """The user and host doing the work."""
    return {"user": getpass.getuser(), "host": socket.gethostname()}
