"""A local, content-addressed cache of compiled scoring engines.

    <root>/<key>/entry.json     what was built (model sha256, engine, engine version, platform) and the
                                sha256 of every file of the entry
    <root>/<key>/...            the compiled library and the model text it was built from
    <root>/<key>.lock           held while one process checks or builds the entry

`key` is the sha256 of (model sha256, engine, engine version, platform): anything that changes the machine
code gets a new entry. Artifacts are built on this machine, never downloaded. An entry is built in a temporary
directory and renamed into place in one step, so a crash leaves no half entry; every file is checked against
`entry.json` before the library is loaded, and a damaged entry is moved aside and rebuilt. Two processes
asking for the same entry at once take turns on the lock: one builds, the other finds the entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENTRY = "entry.json"
#: Environment variable naming the cache root (tests and shared build hosts point it elsewhere).
CACHE_ENV = "BATCHML_ENGINE_CACHE"


def cache_root() -> Path:
    """`$BATCHML_ENGINE_CACHE`, else `$XDG_CACHE_HOME/batchml/engines`, else `~/.cache/batchml/engines`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "batchml" / "engines"


def platform_tag() -> str:
    """OS, architecture, C library and Python: what a compiled library is bound to."""
    libc = "-".join(platform.libc_ver()) or "unknown-libc"
    return f"{sys.platform}-{platform.machine()}-{libc}-py{sys.version_info[0]}.{sys.version_info[1]}"


def entry_key(model_sha256: str, engine: str, version: str, tag: str | None = None) -> str:
    """The cache key of a compiled model: everything that determines its bytes."""
    fields = [model_sha256, engine, version, tag or platform_tag()]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def damage(folder: Path) -> str | None:
    """Why the entry in `folder` cannot be trusted, or None when every file matches its recorded sha256."""
    try:
        recorded = json.loads((folder / ENTRY).read_text())
        files = recorded["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable {ENTRY}: {exc}"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        actual = _sha256(path)
        if actual != expected:
            return f"{name} has sha256 {actual[:12]}, recorded {expected[:12]}"
    return None


#: Builds the files of an entry into the given (empty) folder; returns extra facts for `entry.json`.
Build = Callable[[Path], dict[str, Any]]


def cached_build(
    model_sha256: str, engine: str, version: str, build: Build, root: Path | None = None
) -> tuple[Path, dict[str, Any], bool]:
    """The folder of the verified entry for (model, engine, version, platform), built by `build` when
    missing or damaged; with its `entry.json` and whether this call built it."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    key = entry_key(model_sha256, engine, version)
    folder = root / key
    with (root / f"{key}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if folder.exists():
            why = damage(folder)
            if why is None:
                return folder, json.loads((folder / ENTRY).read_text()), False
            log.warning("compiled %s engine cache entry %s is damaged (%s): rebuilding", engine, folder, why)
            aside = root / f"{key}.damaged-{uuid.uuid4().hex[:8]}"
            os.replace(folder, aside)
            shutil.rmtree(aside, ignore_errors=True)
        building = Path(tempfile.mkdtemp(prefix=f"{key}.building-", dir=root))
        try:
            facts = build(building)
            files = {p.name: _sha256(p) for p in sorted(building.iterdir()) if p.is_file()}
            entry = {
                "model_sha256": model_sha256,
                "engine": engine,
                "engine_version": version,
                "platform": platform_tag(),
                **facts,
                "files": files,
            }
            (building / ENTRY).write_text(json.dumps(entry, indent=2, sort_keys=True))
            os.rename(building, folder)  # the commit point: an entry is whole or absent
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    return folder, entry, True
