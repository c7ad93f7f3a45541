"""Serving snapshots: with object storage, every serving file is also committed there for any host to fetch.

    serving/snapshots/<sha256>.duckdb    a serving file, named by the sha256 of its bytes (written once)
    serving/events/<000000001>.json      the snapshot log: file entry + the event-log state the file reflects

The publication event is appended before the file it leads to is built (DESIGN.md, operations), so it cannot
name the file; a snapshot event instead names the file and references the publication, alias and staging
events it reflects by their seq (`logs`: the file's own `serving_logs`). The newest snapshot is the last
event of that log, decided from storage alone.

Committing (after a build, under the serving folder's lock): the file is uploaded with put-if-absent under
its hash, then its event is compare-and-appended, but only if its state strictly dominates the newest
snapshot's (every log at least as far, one further). So two racing publishers cannot make an older state
newest, the newest snapshot only ever moves forward, and the build of the final state always lands. A crash
between upload and event leaves an unreferenced object (gc collects it after its grace period); the next
command that touches the project finds the local file newer than the newest snapshot and completes the
commit (the upload then finds its object and verifies it).

Pulling (`batchml serving pull`, `batchml.connect()`): if the newest snapshot reflects anything the local
file does not, it is streamed into a temp file in the serving folder, its sha256 and size checked against
the event, made read-only and flipped in like a build (`pointer`); a mismatch is refused and the previous
file stays. Local storage needs none of this: the serving file is built on the same disk.

Pruning (after each commit, and `batchml gc`): a snapshot that a newer one replaced more than
`SNAPSHOT_GRACE_SECONDS` ago (by its successor's event time) is deleted; its event stays as the record of
what was served. Only the newest snapshot is ever pulled, so the grace covers a pull of the previous one in
flight on another host (and clock skew between hosts).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from batchml.errors import ConflictError, IntegrityError, NotFoundError
from batchml.serving.logstate import LOOKUP_FILES, LogState, served_state, write_state_file
from batchml.serving.pointer import (
    GRACE_SECONDS,
    current_file_name,
    install,
    new_serving_file,
    serving_lock,
    serving_path,
)
from batchml.store.eventlog import EventLog
from batchml.store.storage import FileEntry, Storage

log = logging.getLogger(__name__)

SNAPSHOT_FILES = "serving/snapshots"
SNAPSHOT_LOG = "serving/events"
#: How long a replaced snapshot stays in storage (see the module docstring).
SNAPSHOT_GRACE_SECONDS = 3600.0
_CHUNK = 1 << 20
_MAX_ATTEMPTS = 20


@dataclass(frozen=True)
class Snapshot:
    """One committed serving file: its snapshot event's seq, the stored file and the log state it reflects."""

    seq: int
    file: FileEntry
    state: LogState

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> Snapshot:
        """Parse a snapshot event as stored."""
        state = {(str(e["model"]), str(e["log"])): int(e["seq"]) for e in event["logs"]}
        return cls(seq=int(event["seq"]), file=FileEntry.from_dict(event["file"]), state=state)

    @property
    def name(self) -> str:
        """How messages call it: `snapshot 3 (1a2b3c4d5e6f)`."""
        return f"snapshot {self.seq} ({self.file.sha256[:12]})"


@dataclass(frozen=True)
class Pulled:
    """What `pull` did: the newest snapshot, and whether its bytes were fetched (False: already current)."""

    snapshot: Snapshot
    fetched: bool
    path: Path


def has_news(base: LogState | None, other: LogState) -> bool:
    """True if `other` reflects an event `base` does not (or there is no `base`)."""
    return base is None or any(seq > base.get(key, 0) for key, seq in other.items())


def newest_snapshot(storage: Storage) -> Snapshot | None:
    """The newest committed snapshot (one folder listing and one small read), or None if there is none."""
    event = EventLog(storage, SNAPSHOT_LOG).newest()
    return Snapshot.from_event(event) if event else None


def _local_file(serving_dir: Path) -> tuple[Path | None, LogState | None]:
    """The current local serving file and the log state it records (None, None: there is no file)."""
    link = serving_path(serving_dir)
    if not link.exists():
        return None, None
    return link.resolve(), served_state(serving_dir)  # its `.logs` beside it: no DuckDB start-up


def _sha256_of(path: Path) -> FileEntry:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileEntry(f"{SNAPSHOT_FILES}/{digest.hexdigest()}.duckdb", digest.hexdigest(), size)


def _upload(storage: Storage, local: Path, entry: FileEntry) -> None:
    """Put `local` at `entry.path` if absent; an object already there must hold exactly these bytes."""
    full = storage.full_path(entry.path)
    try:
        with open(local, "rb") as source, storage.fs.open(full, "xb") as target:
            shutil.copyfileobj(source, target, _CHUNK)
    except FileExistsError:  # a rerun after a crash between upload and event (or the very same bytes)
        storage.verify(entry)
        return
    storage.fs.invalidate_cache(full.rsplit("/", 1)[0])
    stored = int(storage.fs.info(full)["size"])  # the transfer itself is checksummed by the S3 client
    if stored != entry.size:
        raise IntegrityError(storage.uri(entry.path), f"{entry.size} bytes", f"{stored} bytes")


def commit_snapshot(storage: Storage, serving_dir: Path) -> Snapshot | None:
    """Commit the local serving file as the newest snapshot if it is ahead of it; return the new snapshot.

    None if there is no local file or the newest snapshot already reflects everything it does. Call it with
    the serving folder's lock held (`pointer.serving_lock`), so the file is not replaced meanwhile.
    """
    local, state = _local_file(serving_dir)
    if local is None or state is None:
        return None  # a file from before serving files recorded their state: the next build commits
    events = EventLog(storage, SNAPSHOT_LOG)
    entry: FileEntry | None = None
    for _ in range(_MAX_ATTEMPTS):
        newest = newest_snapshot(storage)
        if newest is not None and (state == newest.state or has_news(state, newest.state)):
            return None  # it holds nothing newer (or another host's file reflects events this one lacks)
        if entry is None:  # uploaded once, and only when it will be referenced (a stale file never is)
            entry = _sha256_of(local)
            _upload(storage, local, entry)
        logs = [{"model": m, "log": name, "seq": seq} for (m, name), seq in sorted(state.items())]
        event = {"action": "snapshot", "file": entry.to_dict(), "logs": logs, "host": socket.gethostname()}
        try:
            stored = events.append(event, expected_seq=(newest.seq if newest else 0) + 1)
        except ConflictError:
            continue  # another host committed first: decide again on the log as it is now
        snapshot = Snapshot.from_event(stored)
        log.info("committed serving %s to %s", snapshot.name, storage.uri(entry.path))
        for path in retired_snapshots(storage, datetime.now(UTC) - timedelta(seconds=SNAPSHOT_GRACE_SECONDS)):
            storage.delete(path)
        return snapshot
    raise ConflictError(f"could not commit a serving snapshot to {SNAPSHOT_LOG} after {_MAX_ATTEMPTS} tries")


def retired_snapshots(storage: Storage, replaced_before: datetime) -> list[str]:
    """Stored snapshot files that a newer snapshot replaced before `replaced_before`; never the newest's.

    Walks the snapshot log back from the newest event while the events' files are still stored: a file is
    replaced when the next event is appended, so once one event's file is gone (pruned), every older one's
    is too, and a prune reads only the events of the files it keeps. Unreferenced files (a crash between
    upload and event) are `gc`'s, by their age.
    """
    stored = {f"{SNAPSHOT_FILES}/{name}" for name in storage.list_dir(SNAPSHOT_FILES)}
    events = EventLog(storage, SNAPSHOT_LOG)
    keep: set[str] = set()
    retired: list[str] = []
    replaced_at: datetime | None = None  # the time the event after the one in hand was appended
    for seq in range(events.last_seq(), 0, -1):
        event = storage.read_json(f"{SNAPSHOT_LOG}/{seq:09d}.json")
        path = str(event["file"]["path"])
        if path not in stored:
            break
        if replaced_at is None or replaced_at >= replaced_before:
            keep.add(path)  # the newest, or replaced within the grace period
        elif path not in keep and path not in retired:
            retired.append(path)
        replaced_at = datetime.fromisoformat(event["at"])
    return retired


def _fetch(
    storage: Storage, snapshot: Snapshot, serving_dir: Path, grace_seconds: float, lookup_files: bool
) -> Path:
    """Stream `snapshot` into the serving folder, check it, write its lookup files (with `lookup_files`),
    and flip the link to it (lock held)."""
    entry = snapshot.file
    final = new_serving_file(serving_dir, entry.sha256[:8])
    partial = serving_dir / f".tmp-pull-{uuid.uuid4().hex}"  # gc removes leftovers of a killed pull
    try:
        digest, size = hashlib.sha256(), 0
        with storage.open_read(entry.path) as source, open(partial, "wb") as target:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                target.write(chunk)
            target.flush()
            os.fsync(target.fileno())
        if (digest.hexdigest(), size) != (entry.sha256, entry.size):
            raise IntegrityError(
                storage.uri(entry.path),
                f"sha256 {entry.sha256} ({entry.size} bytes) as serving event {snapshot.seq} records",
                f"sha256 {digest.hexdigest()} ({size} bytes); refused, the local serving file is unchanged",
            )
        if lookup_files:  # derived from the file on each host: a snapshot is the file alone
            from batchml.serving.lookup_files import write_lookup_files  # numpy and pyarrow: only now

            current = current_file_name(serving_dir)  # its runs' lookup files are linked, not rewritten
            write_lookup_files(partial, final, serving_dir / current if current else None)
        write_state_file(final, snapshot.state, **{LOOKUP_FILES: lookup_files})  # before the file, as a build
        install(serving_dir, partial, final, grace_seconds)
    finally:
        partial.unlink(missing_ok=True)
    return final


def pull(
    storage: Storage,
    serving_dir: Path,
    *,
    grace_seconds: float = GRACE_SECONDS,
    missing_ok: bool = False,
    lookup_files: bool = True,
) -> Pulled | None:
    """Fetch the newest snapshot into `serving_dir` if it reflects anything the local file does not, with
    its lookup files unless `lookup_files` is off (`[serving] lookup_files`).

    NotFoundError if nothing was committed yet (None instead with `missing_ok`); IntegrityError if its bytes
    differ from what its event records (the local file is then left as it was).
    """
    newest = newest_snapshot(storage)
    if newest is not None:
        return _pull(storage, serving_dir, newest, grace_seconds, lookup_files)
    if missing_ok:
        return None
    raise NotFoundError(
        "serving snapshot",
        storage.uri(SNAPSHOT_LOG),
        hint="nothing was published with this storage yet: publish a prediction run first "
        "(batchml score MODEL, or batchml predictions publish MODEL RUN_ID)",
    )


def _pull(
    storage: Storage, serving_dir: Path, newest: Snapshot, grace_seconds: float, lookup_files: bool
) -> Pulled:
    path, state = _local_file(serving_dir)
    if path is not None and not has_news(state, newest.state):
        return Pulled(newest, fetched=False, path=path)  # the common case, decided without the lock
    with serving_lock(serving_dir):
        path, state = _local_file(serving_dir)
        if path is not None and not has_news(state, newest.state):
            return Pulled(newest, fetched=False, path=path)  # another process pulled or built it meanwhile
        final = _fetch(storage, newest, serving_dir, grace_seconds, lookup_files)
    log.info("pulled serving %s (%d bytes) into %s", newest.name, newest.file.size, final)
    return Pulled(newest, fetched=True, path=final)


def pull_if_current(
    storage: Storage, serving_dir: Path, current: LogState, lookup_files: bool = True
) -> bool:
    """Pull the newest snapshot if it reflects every event of `current`; True if the local file now does.

    What a host does instead of building a file another host has built already. A damaged snapshot is
    logged and skipped (False: the caller builds).
    """
    newest = newest_snapshot(storage)
    if newest is None or has_news(newest.state, current):
        return False
    try:
        _pull(storage, serving_dir, newest, GRACE_SECONDS, lookup_files)
    except IntegrityError as exc:
        log.warning("not using the newest serving snapshot: %s", exc)
        return False
    return True
