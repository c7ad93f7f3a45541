"""Mutating requests on a project's event logs: exactly once after a crash, never on a state unseen.

Every mutating verb (promote, rollback, publish, stage, promote-staged, predictions rollback) runs as one
`Mutation`:

1. When the request starts it reads the log state the current serving file reflects (`serving_logs`): that
   is the state the caller acted on (what it was shown). No serving file, or one that records no state: the
   logs as they are now.
2. Its operation key is the caller's (e.g. derived from a Prefect flow run id) or derived from the request
   and that state: `auto:rollback:champion@aliases:7` = "roll back champion as of alias event 7".
3. Under the project's operation lock it decides on the logs as read (`Operation.recorded`): an event that
   carries its key was appended by an interrupted run of this very request, and is only finished; an event
   the caller did not see refuses the request (ConflictError, nothing appended); else the decision is
   appended with compare-and-append.
4. Still under the lock, the serving file is rebuilt if it is behind the logs.

So a rerun after a crash (the serving file still shows the old state) maps to the same key and completes the
request once, while a second rollback after a completed one acts on the newer state and steps back again.
Explicit keys name the request alone: a retry with the same key finds its event wherever it is in the log,
and decisions are made on the log as read.

The lock is local to the serving folder: it orders requests of one host, so that of two identical requests
started together the second sees the first's completed result and is refused instead of resuming it.
Across hosts, compare-and-append still lets exactly one of two racing appends land.

`catch_up` brings a serving file that is behind the logs up to date (a crash between an event and the
rebuild leaves it so); commands that touch the project call it, readers (`batchml.connect`) never do. With
object storage it first tries the newest serving snapshot (another host may have built this very state),
and completes a snapshot commit a crash interrupted (see `snapshots`).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from batchml.errors import BatchMLError
from batchml.project import Project
from batchml.serving.logstate import (
    LOOKUP_FILES,
    SIZED_FOR,
    LogState,
    beside,
    event_log,
    lagging,
    log_state,
    served_state,
)
from batchml.serving.pointer import serving_lock
from batchml.serving.publish_timing import record_publish_timings
from batchml.serving.readers import serving_path
from batchml.serving.run_tables import LOOKUP_FILES_SUFFIX, READER_MEMORY_LIMIT
from batchml.serving.snapshots import commit_snapshot, pull_if_current
from batchml.sizes import size_bytes
from batchml.store.eventlog import DERIVED_PREFIX, Operation, check_operation_key

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _operation_lock(serving_dir: Path) -> Iterator[None]:
    """One mutating request at a time per serving folder, from its decision to its rebuild."""
    serving_dir.mkdir(parents=True, exist_ok=True)
    with open(serving_dir / ".operations.lock", "a") as handle:  # "a": no truncation, the mtime stays
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if the process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Mutation:
    """One mutating request on the logs `logs` ((model, log) pairs) of `project`; see the module docstring.

    Use as a context manager: `on(model, log)` gives the `Operation` to pass to the log writer, `finish()`
    rebuilds the serving file if it is behind. A BatchMLError inside (e.g. a refusal) still brings the
    serving file up to date before it propagates.
    """

    def __init__(
        self, project: Project, request: str, key: str | None, logs: Sequence[tuple[str, str]]
    ) -> None:
        self.project = project
        if key is not None:
            self.key, self.observed = check_operation_key(key), None
        else:
            recorded = served_state(project.serving_dir)
            self.observed = {
                (model, name): recorded.get((model, name), 0)
                if recorded is not None
                else event_log(project.storage, model, name).last_seq()
                for model, name in logs
            }
            state = ",".join(f"{name}:{seq}" for (_, name), seq in self.observed.items())
            self.key = f"{DERIVED_PREFIX}{request}@{state}"
        self._served: LogState | None = None
        self._lock: contextlib.ExitStack | None = None

    def __enter__(self) -> Mutation:
        stack = contextlib.ExitStack()
        stack.enter_context(_operation_lock(self.project.serving_dir))
        self._lock = stack
        self._served = served_state(self.project.serving_dir)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self._lock is not None
        with self._lock:
            if isinstance(error, BatchMLError):
                try:
                    self.finish()
                except BatchMLError as exc:  # the refusal is the news; a failed catch-up is logged
                    log.warning("could not bring the serving file up to date: %s", exc)

    def on(self, model: str, name: str) -> Operation:
        """This request as log `name` (aliases, published, staging) of `model` sees it."""
        observed = None if self.observed is None else self.observed[(model, name)]
        return Operation(self.key, observed, (self._served or {}).get((model, name), 0))

    def finish(self) -> Path:
        """Rebuild the serving file if the logs moved past it; return the current serving file.

        It compares with the state read when the lock was taken (the lock keeps other mutations out; a
        reader's catch-up in between would at worst make this a second, harmless build).
        """
        current = log_state(self.project.storage)
        if _rebuild_if_behind(self.project, self._served, current):
            self._served = current
        served = serving_path(self.project.serving_dir).resolve()
        if served.exists():  # a re-run after a crash between the flip and the publish times' record
            record_publish_timings(self.project.storage, served)
        return served


def catch_up(project: Project) -> list[str]:
    """Bring the serving file up to date with the logs; return what was behind (empty: it was current).

    Cheap when current: one folder listing per event log and one read of the file's `serving_logs`.
    """
    return _rebuild_if_behind(project, served_state(project.serving_dir), log_state(project.storage))


def _resized(project: Project, served: Path) -> str | None:
    """Why the serving file `served`'s indexes are sized for other readers than the project's `[serving]
    reader_memory_limit` (None: the same). A file records it beside itself; one that does not was sized for
    the default."""
    sized_for = beside(served, SIZED_FOR) or READER_MEMORY_LIMIT
    wanted = project.config.serving.reader_memory_limit
    if size_bytes(str(sized_for)) == size_bytes(wanted):
        return None
    return f"its indexes are sized for readers with {sized_for}, [serving] reader_memory_limit is {wanted}"


def _lookup_files_changed(project: Project, served: Path) -> str | None:
    """Why the serving file `served`'s lookup files differ from the project's `[serving] lookup_files`
    (None: as set). A file records whether its installer wrote them; for one that does not (its state
    beside it lost, or built before lookup files) the folder tells."""
    written = beside(served, LOOKUP_FILES)
    if written is None:
        written = any(served.parent.glob(f"{glob.escape(served.name)}.*.{LOOKUP_FILES_SUFFIX}.*"))
    wanted = project.config.serving.lookup_files
    if written == wanted:
        return None
    return f"it has {'' if written else 'no '}lookup files, [serving] lookup_files is {str(wanted).lower()}"


def _settings_changed(project: Project) -> str | None:
    """Why the current serving file was built for other `[serving]` settings than the project's (None: the
    same, or no file)."""
    link = serving_path(project.serving_dir)
    if not link.exists():
        return None
    served = link.resolve()
    changed = (_resized(project, served), _lookup_files_changed(project, served))
    return "; ".join(why for why in changed if why) or None


def _rebuild_if_behind(project: Project, recorded: LogState | None, current: LogState) -> list[str]:
    behind = lagging(recorded, current)
    resized = _settings_changed(project)  # the file follows from the logs and from these settings
    storage, serving_dir = project.storage, project.serving_dir
    remote = not storage.is_local
    files = project.config.serving.lookup_files
    pulled = bool(behind) and remote and not resized and pull_if_current(storage, serving_dir, current, files)
    if (behind or resized) and not pulled:
        # Imported here: building needs pyarrow and the run files, and every command checks (cheaply) first.
        from batchml.serving.database import build_serving_db

        why = "; ".join([*behind, *([resized] if resized else [])])
        log.info("serving file behind the event logs or the [serving] setting (%s): rebuilding", why)
        memory = project.config.serving.reader_memory_limit
        build_serving_db(storage, serving_dir, reader_memory_limit=memory, lookup_files=files)  # + snapshot
    elif remote and not behind:
        with serving_lock(serving_dir):  # completes a commit a crash interrupted after the build
            commit_snapshot(storage, serving_dir)
    return [*behind, *([resized] if resized else [])]
