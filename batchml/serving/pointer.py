"""The local serving folder: one writer at a time, the atomic flip of `batchml.duckdb`, old files collected.

Both ways a serving file reaches a host go through here: built from storage (`database`) or pulled as a
snapshot from object storage (`snapshots`). Either way the new file is complete and read-only before the
symlink is flipped to it with one `os.replace`; readers keep the file they opened, and files the link no
longer names are removed after a grace period (DESIGN.md invariant 3). Light on purpose: pulling a snapshot
must not import what building one needs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

#: The documented name readers open: a symlink to the current serving file.
SERVING_FILE = "batchml.duckdb"
GRACE_SECONDS = 3600.0
#: Read-only for everyone: opening a serving file read-write takes a deliberate chmod (root ignores modes;
#: an edit is then caught when the next build copies the run). The folder's own mode lets old files go.
SERVING_FILE_MODE = 0o444


def serving_path(serving_dir: Path) -> Path:
    """The documented path readers open: a symlink to the current serving file."""
    return serving_dir / SERVING_FILE


@contextlib.contextmanager
def serving_lock(serving_dir: Path) -> Iterator[None]:
    """One builder or puller at a time per serving folder, so the last flip reflects the latest records."""
    serving_dir.mkdir(parents=True, exist_ok=True)
    with open(serving_dir / ".build.lock", "a") as handle:  # "a": no truncation, the mtime stays
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def new_serving_file(serving_dir: Path, tag: str) -> Path:
    """A fresh name for the next serving file (`serving-<time>-<tag>.duckdb`; gc knows the pattern)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return serving_dir / f"serving-{stamp}-{tag}.duckdb"


def install(serving_dir: Path, ready: Path, final: Path, grace_seconds: float) -> None:
    """Make the complete file `ready` read-only, move it to `final` and flip the link to it (under the lock).

    Files the link named before stay for `grace_seconds` (readers may hold them), then go.
    """
    ready.chmod(SERVING_FILE_MODE)
    os.replace(ready, final)
    link_tmp = serving_dir / f".link-{uuid.uuid4().hex}"
    os.symlink(final.name, link_tmp)
    os.replace(link_tmp, serving_dir / SERVING_FILE)  # the atomic flip readers see
    _collect_old_files(serving_dir, final, grace_seconds)


def _collect_old_files(serving_dir: Path, keep: Path, grace_seconds: float) -> None:
    cutoff = time.time() - grace_seconds
    for old in serving_dir.glob("serving-*.duckdb*"):
        if old.name.startswith(keep.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            if old.stat().st_mtime < cutoff:
                old.unlink()
