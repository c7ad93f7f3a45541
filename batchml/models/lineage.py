"""Who, where, for which flow run and with what code: the lineage recorded in model cards and run manifests.

The code version is a content hash of batchml's own source files as installed, so that editing the code that
trains or scores gives new training and run keys (a package version string alone stays the same across edits).
Git commit and dirty flag are recorded beside it where the source lives in a repository: they tell where the
code came from, while the content hash decides what counts as the same work.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from batchml import provenance

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


PACKAGE_DIR = Path(__file__).resolve().parents[1]


def source_hash(package_dir: Path) -> str:
    """sha256 over the relative path and bytes of every `.py` file under `package_dir`, in path order."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(package_dir).as_posix()
        digest.update(f"{relative}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def code_version() -> str:
    """`batchml-<version>+<hash>`: the package version and a content hash of its source files.

    Part of every training key and prediction run key, recorded in model cards, run manifests and every
    prediction row (`code_version`). Computed once per process (~60 small files).
    """
    return f"batchml-{package_versions()['batchml']}+{source_hash(PACKAGE_DIR)[:16]}"


@functools.cache
def code_lineage() -> dict[str, Any]:
    """The code version, and the git commit of the source with a dirty flag if the source is tracked by git.

    `dirty` is true when any file under the package differs from the commit (untracked modules included:
    they are part of the code that ran).
    """
    found = git_state(PACKAGE_DIR, only=PACKAGE_DIR)
    return {"code_version": code_version(), "git_commit": found["commit"], "git_dirty": found["dirty"]}


def engine() -> str:
    """The prediction engine and its version, part of run keys (another LightGBM may score differently)."""
    try:
        return f"lightgbm=={metadata.version('lightgbm')}"
    except metadata.PackageNotFoundError:
        return "lightgbm==not-installed"


def git_state(path: Path, only: Path | None = None) -> dict[str, Any]:
    """The git commit of `path` and whether the work tree has uncommitted changes (None outside git).

    With `only`, the answer is about the files under `only`: None unless git tracks them (a package installed
    into a virtualenv inside some repository is not that repository's code), dirty if any differs or is new.
    """

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=path, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit is None or (only is not None and not git("ls-files", "--", str(only))):
        return {"commit": None, "dirty": None}
    if only is None:
        return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--", str(only)))}


def actor() -> dict[str, str | None]:
    """The user and host doing the work, and the flow run it is done for (None outside a flow: see
    `batchml.provenance`)."""
    return {"user": getpass.getuser(), "host": socket.gethostname(), **provenance.current()}
