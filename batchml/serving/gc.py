"""Garbage collection: remove what no record references, after a grace period.

A crash (or a writer that lost a race) can leave data files that no manifest lists, `.tmp-*` files of an
interrupted commit, and serving files no pointer names. They are invisible to readers but take space.
`collect` removes those older than the grace period; it never touches a file that any record references:

- references: every `{"path", "sha256", "size"}` entry in every JSON record under the storage root
  (dataset manifests, model cards, run manifests, report metadata, ...);
- candidates: unreferenced files in the data-file areas (`datasets/*/files/`, `models/*/files/`,
  `runs/<model>/<run_id>/`, `monitoring/<model>/<run_id>/report-*`, `serving/snapshots/`), `.tmp-*` files
  anywhere, and in the serving folder old `serving-*.duckdb` files the pointer no longer names (counted
  from when a newer file replaced them, see `pointer.retired_files`) plus `.building-*`/`.link-*` files
  and sidecars whose serving file is gone.

The one exception to "referenced": serving snapshots that a newer snapshot replaced before the grace period
(`snapshots.retired_snapshots`); their events stay as the record of what was served, and only the newest
snapshot is ever pulled.

JSON records themselves are never removed. A record that does not parse stops the collection with an
IntegrityError naming it: when in doubt, nothing is deleted. The grace period protects writers in flight
(their files are young) and readers still holding an old serving file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchml.serving.pointer import current_file_name, remove_serving_file, retired_files, serving_lock

if TYPE_CHECKING:  # `batchml gc --help` shows GRACE_SECONDS: importing this module stays cheap
    from batchml.store.storage import Storage

log = logging.getLogger(__name__)

GRACE_SECONDS = 3600.0
_DATA_AREAS = (
    re.compile(r"^datasets/[^/]+/files/[^/]+$"),
    re.compile(r"^models/[^/]+/files/[^/]+$"),
    re.compile(r"^runs/[^/]+/(?!manifests/)[^/]+/[^/]+$"),
    re.compile(r"^monitoring/[^/]+/[^/]+/report-[^/]+$"),
    re.compile(r"^serving/snapshots/[^/]+$"),
)
_SERVING_LEFTOVERS = re.compile(r"^(serving-.*\.duckdb\..*|\.building-.*|\.link-.*|\.tmp-.*)$")


@dataclass
class GcReport:
    """What a collection found: files removed (or that would be, on a dry run) and young orphans kept."""

    deleted: list[str] = field(default_factory=list)
    kept_young: list[str] = field(default_factory=list)
    referenced: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the CLI's `--json`)."""
        return {
            "deleted": self.deleted,
            "kept_young": self.kept_young,
            "referenced": self.referenced,
            "dry_run": self.dry_run,
        }


def _entries(obj: Any) -> set[str]:
    """Paths of every file entry (`{"path", "sha256", "size"}`) anywhere inside a JSON document."""
    found: set[str] = set()
    if isinstance(obj, dict):
        if isinstance(obj.get("path"), str) and "sha256" in obj:
            found.add(obj["path"])
        for value in obj.values():
            found |= _entries(value)
    elif isinstance(obj, list):
        for value in obj:
            found |= _entries(value)
    return found


def _all_files(storage: Storage) -> list[str]:
    """Every file under the storage root, as paths relative to it."""
    storage.fs.invalidate_cache(storage.root)
    try:
        found = storage.fs.find(storage.root)
    except FileNotFoundError:
        return []
    prefix = storage.root.rstrip("/") + "/"
    return sorted(str(f)[len(prefix) :] for f in found if str(f).startswith(prefix))


def referenced_files(storage: Storage, files: list[str] | None = None) -> set[str]:
    """Paths that some JSON record under the storage root references (IntegrityError if one is damaged)."""
    refs: set[str] = set()
    for path in files if files is not None else _all_files(storage):
        name = path.rsplit("/", 1)[-1]
        if name.endswith(".json") and not name.startswith(".") and not _is_data_file(path):
            refs |= _entries(storage.read_json(path))
    return refs


def _is_data_file(path: str) -> bool:
    return any(area.fullmatch(path) for area in _DATA_AREAS)


def _mtime(storage: Storage, path: str) -> float | None:
    """Modification time (epoch seconds) of a stored file, or None if the store does not say."""
    info = storage.fs.info(f"{storage.root}/{path}")
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
    return None


def _serving_leftovers(serving_dir: Path) -> list[Path]:
    """Crash leftovers in the serving folder: half-built files, links, and sidecars whose file is gone."""
    return [
        p
        for p in sorted(serving_dir.iterdir())
        if p.is_file()
        and not p.is_symlink()
        and _SERVING_LEFTOVERS.fullmatch(p.name)
        and not p.with_name(p.name.split(".duckdb.", 1)[0] + ".duckdb").exists()  # sidecars go with files
    ]


def _collect_serving_dir(serving_dir: Path, cutoff: float, report: GcReport) -> None:
    """Serving files replaced before `cutoff`, and leftovers older than it (under the build lock)."""
    with serving_lock(serving_dir):
        retired = retired_files(serving_dir, cutoff)
        current = current_file_name(serving_dir)
        report.kept_young += [
            str(p)
            for p in sorted(serving_dir.glob("serving-*.duckdb"))
            if p.name != current and p not in retired and not p.is_symlink()
        ]
        for path in retired:
            report.deleted.append(str(path))
            if not report.dry_run:
                remove_serving_file(path)
        for old in _serving_leftovers(serving_dir):
            with contextlib.suppress(FileNotFoundError):
                young = old.stat().st_mtime > cutoff
                (report.kept_young if young else report.deleted).append(str(old))
                if not (young or report.dry_run):
                    old.unlink()


def collect(
    storage: Storage,
    serving_dir: Path | None = None,
    *,
    grace_seconds: float = GRACE_SECONDS,
    dry_run: bool = False,
) -> GcReport:
    """Remove unreferenced files older than `grace_seconds` (list them only, if `dry_run`)."""
    if grace_seconds < 0:
        raise ValueError(f"grace_seconds {grace_seconds!r} is invalid: use a number >= 0")
    cutoff = time.time() - grace_seconds
    files = _all_files(storage)
    refs = referenced_files(storage, files)
    report = GcReport(referenced=len(refs), dry_run=dry_run)
    serving_prefix = None
    if serving_dir is not None and storage.is_local:
        rel = os.path.relpath(serving_dir, storage.root)
        serving_prefix = None if rel.startswith("..") else rel + "/"
    for path in files:
        name = path.rsplit("/", 1)[-1]
        if path in refs or (serving_prefix and path.startswith(serving_prefix)):
            continue  # referenced, or handled below with the serving folder's own rules
        if not (name.startswith(".tmp-") or _is_data_file(path)):
            continue
        mtime = _mtime(storage, path)
        if mtime is None or mtime > cutoff:
            report.kept_young.append(path)
            continue
        report.deleted.append(path)
        if not dry_run:  # paths come from listing the root (and may start with '.'): no name check needed
            storage.fs.rm_file(f"{storage.root}/{path}")
    if not storage.is_local:  # serving snapshots exist only with object storage
        from batchml.serving.snapshots import retired_snapshots

        for path in retired_snapshots(storage, datetime.fromtimestamp(cutoff, UTC)):
            report.deleted.append(path)
            if not dry_run:
                storage.delete(path)
    if serving_dir is not None and serving_dir.is_dir():
        _collect_serving_dir(serving_dir, cutoff, report)
    log.info(
        "gc: %s %d unreferenced files, kept %d younger than %.0f s",
        "would remove" if dry_run else "removed",
        len(report.deleted),
        len(report.kept_young),
        grace_seconds,
    )
    return report
