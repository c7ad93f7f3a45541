"""Append-only event logs in storage: one JSON file per event, numbered, created with put-if-absent.

Two writers racing for the same sequence number cannot both win. A decision (who holds an alias, which run
is published) is appended with `append_decided` as the entry right after the events it was made from, so it
lands only on the log it saw (compare-and-append). Replaying the files in order gives the state (alias
holders, published runs) at any point in time.

Every event a mutating request appends records the request's `operation` key; `Operation.recorded` finds
the event an earlier (interrupted) run of the same request appended, so a rerun only finishes the work.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from batchml import provenance
from batchml.errors import ConflictError, InvalidNameError
from batchml.store.storage import Storage

_MAX_ATTEMPTS = 100
#: Keys batchml derives itself start with this; a caller's own key may not.
DERIVED_PREFIX = "auto:"
_KEY = re.compile(r"^[!-~][ -~]{0,199}$")


def now() -> str:
    """The current time as an ISO-8601 UTC string (what every record uses)."""
    return datetime.now(UTC).isoformat()


class EventLog:
    """The events in one storage folder, in sequence order."""

    def __init__(self, storage: Storage, folder: str) -> None:
        self.storage = storage
        self.folder = folder

    def read(self) -> list[dict[str, Any]]:
        """All events, oldest first."""
        names = [n for n in self.storage.list_dir(self.folder) if n.endswith(".json")]
        return [self.storage.read_json(f"{self.folder}/{n}") for n in names]

    def newest(self) -> dict[str, Any] | None:
        """The newest event (None if none), reading one file."""
        seq = self.last_seq()
        return self.storage.read_json(f"{self.folder}/{seq:09d}.json") if seq else None

    def next_seq(self) -> int:
        """The sequence number the next event will take."""
        return self.last_seq() + 1

    def last_seq(self) -> int:
        """The sequence number of the newest event (0 if none), from the folder listing alone."""
        numbers = [n.removesuffix(".json") for n in self.storage.list_dir(self.folder) if n.endswith(".json")]
        return max((int(n) for n in numbers if n.isdigit()), default=0)

    def append(
        self, event: dict[str, Any], actor: str | None = None, *, expected_seq: int | None = None
    ) -> dict[str, Any]:
        """Add `event` (stamped with seq, at, by and flow run ids) as the next entry; return it as stored.

        With `expected_seq` the event is written only as that entry: if another writer took it first,
        ConflictError is raised instead of retrying, so a decision made on the log as it stood at
        `expected_seq - 1` can never land after an event it did not see (compare-and-append).
        """
        for _ in range(_MAX_ATTEMPTS):
            seq = self.next_seq() if expected_seq is None else expected_seq
            stored = {
                **event,
                "seq": seq,
                "at": now(),
                "by": actor or getpass.getuser(),
                **provenance.current(),  # the flow run appending it, if any: SQL leads back to it
            }
            try:
                self.storage.create_json(f"{self.folder}/{seq:09d}.json", stored)
                return stored
            except ConflictError:
                if expected_seq is not None:
                    raise
                continue
        raise ConflictError(f"could not append to {self.folder} after {_MAX_ATTEMPTS} attempts")


def replay_stacks(
    events: list[dict[str, Any]], group: str, value: str, until: datetime | None = None
) -> dict[str, list[Any]]:
    """Holders per `group` after replaying events up to `until`: promote/publish push, rollback pops.

    The last item of each stack is the current holder; the one before it is what a rollback returns to.
    """
    stacks: dict[str, list[Any]] = {}
    for event in events:
        if until is not None and datetime.fromisoformat(event["at"]) > until:
            break  # the state at `until` is the longest prefix stamped no later (clocks of hosts differ)
        apply_event(stacks, event, group, value)
    return stacks


def apply_event(stacks: dict[str, list[Any]], event: dict[str, Any], group: str, value: str) -> list[Any]:
    """Replay one event onto `stacks` (see `replay_stacks`); return the stack it changed."""
    stack = stacks.setdefault(event[group], [])
    if event["action"] == "rollback":
        del stack[-1:]  # a log from before compare-and-append may roll back more than was pushed
    elif event["action"] == "clear":
        stack.clear()
    else:
        stack.append(event[value])
    return stack


def check_operation_key(key: str) -> str:
    """Return a caller's operation key if allowed, else raise InvalidNameError saying what is."""
    if not _KEY.match(key) or key.startswith(DERIVED_PREFIX):
        allowed = (
            f"1-200 printable ASCII characters, not starting with {DERIVED_PREFIX!r} (batchml's own keys)"
        )
        raise InvalidNameError("operation key", key, allowed)
    return key


def describe(event: dict[str, Any]) -> str:
    """One event in a phrase: `event 5 rollback champion v3 -> v2 by alice at 2026-...`."""
    if "alias" in event:
        before = f"v{event['from_version']}" if event.get("from_version") is not None else "(none)"
        moved = f"{event['alias']} {before} -> v{event['to_version']}"
    else:
        moved = f"{event.get('from_run_id') or '(none)'} -> {event.get('run_id') or '(none)'}"
    return f"event {event['seq']} {event['action']} {moved} by {event.get('by')} at {event.get('at')}"


@dataclass(frozen=True)
class Operation:
    """One mutating request as one event log sees it: its key and the log state it acts on.

    `key` goes into every event the request appends. A derived key (`auto:<request>@<log>:<seq>,...`) names
    the request and the log state it acted on; any other key was given by the caller (e.g. a flow run id)
    and names the request alone. `observed` is the last seq of this log the caller acted on (None: the log
    as read, which is what explicit keys act on). `served` is the last seq the serving file reflects now.
    """

    key: str
    observed: int | None = None
    served: int = 0

    @property
    def explicit(self) -> bool:
        """True if the caller gave the key."""
        return not self.key.startswith(DERIVED_PREFIX)

    def recorded(self, events: list[dict[str, Any]], subject: tuple[str, str]) -> dict[str, Any] | None:
        """The event an earlier run of this request appended (only finishing is left), or None (to do).

        Explicit key: any event carrying it. Derived key: events after `observed` are news to the caller;
        if they are this request's own and not yet served, an interrupted run appended them. Any other news,
        or its own events already served (another process did the same request since this one read the
        state), raise ConflictError saying what changed; nothing is appended. `subject` is what the message
        calls the log, and the command that shows it.
        """
        name, look = subject
        if self.explicit:
            return next((e for e in reversed(events) if e.get("operation") == self.key), None)
        if self.observed is None:
            return None
        news = [e for e in events if int(e["seq"]) > self.observed]
        if not news:
            return None
        unseen = [e for e in news if e.get("operation") != self.key]
        if unseen:
            others = "; ".join(describe(e) for e in unseen[-3:])
            others = others if len(unseen) <= 3 else f"{len(unseen)} events, the last three: {others}"
            raise ConflictError(
                f"{name} changed since the state this command acted on (served up to event "
                f"{self.observed}): {others}; nothing was done: look with `{look}` and run it again if "
                "it still applies"
            )
        if int(news[-1]["seq"]) <= self.served:
            raise ConflictError(
                f"another process carried out this same request on {name} after this one read the state "
                f"({describe(news[-1])}); nothing was done: look with `{look}`"
            )
        return news[-1]


def append_decided(
    log: EventLog,
    events: list[dict[str, Any]],
    event: dict[str, Any],
    actor: str | None,
    operation: Operation | None,
    subject: tuple[str, str],
) -> dict[str, Any]:
    """Append `event`, decided on `events` (the whole log as read), as the entry right after them.

    If another writer appended first, ConflictError says so and nothing is written (compare-and-append).
    `subject` is what the message calls the log, and the command that shows it.
    """
    seq = max((int(e["seq"]) for e in events), default=0) + 1
    record = {**event, "operation": operation.key} if operation is not None else event
    try:
        return log.append(record, actor, expected_seq=seq)
    except ConflictError:
        raise ConflictError(
            f"{subject[0]} changed while this command was deciding (another writer took event {seq}); "
            f"nothing was done: look with `{subject[1]}` and run it again if it still applies"
        ) from None
