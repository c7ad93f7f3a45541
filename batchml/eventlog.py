"""Append-only event logs in storage: one JSON file per event, numbered, created with put-if-absent.

Two writers racing for the same sequence number cannot both win; the loser re-reads and takes the next
one. Replaying the files in order gives the state (alias holders, published runs) at any point in time.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from typing import Any

from batchml.errors import ConflictError
from batchml.storage import Storage

_MAX_ATTEMPTS = 100


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

    def next_seq(self) -> int:
        """The sequence number the next event will take."""
        numbers = [n.removesuffix(".json") for n in self.storage.list_dir(self.folder) if n.endswith(".json")]
        return max((int(n) for n in numbers if n.isdigit()), default=0) + 1

    def append(
        self, event: dict[str, Any], actor: str | None = None, *, expected_seq: int | None = None
    ) -> dict[str, Any]:
        """Add `event` (stamped with seq, at and by) as the next entry and return it as stored.

        With `expected_seq` the event is written only as that entry: if another writer took it first,
        ConflictError is raised instead of retrying, so a decision made on the log as it stood at
        `expected_seq - 1` can never land after an event it did not see (compare-and-append).
        """
        for _ in range(_MAX_ATTEMPTS):
            seq = self.next_seq() if expected_seq is None else expected_seq
            stored = {**event, "seq": seq, "at": now(), "by": actor or getpass.getuser()}
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
            break
        stack = stacks.setdefault(event[group], [])
        if event["action"] == "rollback":
            stack.pop()
        elif event["action"] == "clear":
            stack.clear()
        else:
            stack.append(event[value])
    return stacks
