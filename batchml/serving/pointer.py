"""The local serving folder: one writer at a time, the atomic flip of `batchml.duckdb`, old files collected.

Both ways a serving file reaches a host go through here: built from storage (`database`) or pulled as a
snapshot from object storage (`snapshots`). Either way the new file is complete and read-only before the
symlink is flipped to it with one `os.replace`; readers keep the file they opened, and files the link no
longer names are removed once they have been out of use for a grace period (DESIGN.md invariant 3). Light on
purpose: pulling a snapshot must not import what building one needs.
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
#: How long a serving file stays after a newer one replaced it. A reader keeps the file it opened (POSIX keeps
#: an unlinked file readable to whoever holds it open), so this only covers a reader that resolved the link
#: and has not opened the file yet (DuckDB resolves the link, then opens); batchml's own readers also
#: re-resolve once when the file they resolved is gone (`readers.connect_serving`).
GRACE_SECONDS = 60.0
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

    Files the link named before go once they have been replaced for `grace_seconds`.
    """
    ready.chmod(SERVING_FILE_MODE)
    os.replace(ready, final)
    link_tmp = serving_dir / f".link-{uuid.uuid4().hex}"
    os.symlink(final.name, link_tmp)
    os.replace(link_tmp, serving_dir / SERVING_FILE)  # the atomic flip readers see
    for old in retired_files(serving_dir, time.time() - grace_seconds):
        remove_serving_file(old)


def current_file_name(serving_dir: Path) -> str | None:
    """The name of the file the link names now (None before the first publish)."""
    link = serving_path(serving_dir)
    return os.readlink(link) if link.is_symlink() else None


def retired_files(serving_dir: Path, replaced_before: float) -> list[Path]:
    """Serving files the link no longer names and that were replaced before `replaced_before` (epoch s).

    Call it under `serving_lock`. A file stopped being current when the next file was installed, i.e. at
    that file's mtime (names sort by build start, and builds take turns under the lock). A
    file newer than the current one was never installed (a crash before the flip) and counts from its own
    mtime. A file's sidecars (`.logs`, `.wal`) share its fate.
    """
    current = current_file_name(serving_dir)
    files = sorted(p for p in serving_dir.glob("serving-*.duckdb") if not p.is_symlink())
    retired = []
    for index, path in enumerate(files):
        if path.name == current:
            continue
        replaced = bool(current) and path.name < str(current) and index + 1 < len(files)
        successor = files[index + 1] if replaced else path
        with contextlib.suppress(FileNotFoundError):
            if successor.stat().st_mtime < replaced_before:
                retired.append(path)
    return retired


def remove_serving_file(path: Path) -> None:
    """Remove a retired serving file, then its sidecars (the file first: whoever finds it finds its state)."""
    path.unlink(missing_ok=True)
    for sidecar in path.parent.glob(f"{path.name}.*"):
        sidecar.unlink(missing_ok=True)
