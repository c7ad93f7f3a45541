"""Which prediction run is published (or staged) per model: append-only logs of publication events.

    publications/<model>/events/<000000001>.json     the published channel: publish / rollback
    publications/<model>/staging/<000000001>.json    the staging channel: stage / clear

The logs in storage are the record; the serving DuckDB file is built from them.
"""

from __future__ import annotations

from typing import Any, Literal

from batchml.errors import ConflictError, NotFoundError
from batchml.eventlog import EventLog, replay_stacks
from batchml.names import check_name
from batchml.scoring import get_run
from batchml.storage import Storage

Channel = Literal["published", "staging"]
_FOLDERS: dict[str, str] = {"published": "events", "staging": "staging"}
_MAX_ATTEMPTS = 100


class PublicationLog:
    """Publication events per model on one channel, and the current run derived from them."""

    def __init__(self, storage: Storage, channel: Channel = "published") -> None:
        self.storage = storage
        self.channel = channel
        self.folder = _FOLDERS[channel]

    def _log(self, model: str) -> EventLog:
        return EventLog(self.storage, f"publications/{check_name('model', model)}/{self.folder}")

    def models(self) -> list[str]:
        """Models that have publication events."""
        return [
            m
            for m in self.storage.list_dir("publications")
            if self.storage.list_dir(f"publications/{m}/{self.folder}")
        ]

    def events(self, model: str) -> list[dict[str, Any]]:
        """All publication events of `model`, oldest first."""
        return self._log(model).read()

    def stack(self, model: str) -> list[str]:
        """Published run ids, oldest first; the last is current."""
        return replay_stacks(self.events(model), group="model", value="run_id").get(model, [])

    def current(self, model: str) -> str | None:
        """The run id currently published for `model`, if any."""
        stack = self.stack(model)
        return stack[-1] if stack else None

    def publish(self, model: str, run_id: str, reason: str = "", actor: str | None = None) -> dict[str, Any]:
        """Record that `run_id` (a committed run of `model`) is now the published table.

        Exactly once: if `run_id` is already current, the event that made it so is returned and nothing is
        appended. The event is written as the next sequence number of the log as read (compare-and-append),
        so two processes publishing the same run concurrently cannot both append: the loser's create
        conflicts, it re-reads, and finds the run already current.
        """
        get_run(self.storage, model, run_id)  # raises NotFoundError listing the model's runs
        log = self._log(model)
        for _ in range(_MAX_ATTEMPTS):
            events = log.read()
            stack = replay_stacks(events, group="model", value="run_id").get(model, [])
            current = stack[-1] if stack else None
            if current == run_id:
                return next(e for e in reversed(events) if e.get("run_id") == run_id)
            event = {"model": model, "action": "publish", "run_id": run_id, "from_run_id": current}
            try:
                return log.append({**event, "reason": reason}, actor, expected_seq=_next_seq(events))
            except ConflictError:
                continue  # someone appended first: decide again on the log as it is now
        raise ConflictError(f"could not publish run {run_id!r} of model {model!r}: the log kept changing")

    def clear(self, model: str, reason: str = "", actor: str | None = None) -> dict[str, Any]:
        """Record that no run is current on this channel (e.g. staging after its run was promoted).

        Compare-and-append like `publish`, so `from_run_id` is always the run this event cleared.
        """
        log = self._log(model)
        for _ in range(_MAX_ATTEMPTS):
            events = log.read()
            stack = replay_stacks(events, group="model", value="run_id").get(model, [])
            current = stack[-1] if stack else None
            event = {"model": model, "action": "clear", "run_id": None, "from_run_id": current}
            try:
                return log.append({**event, "reason": reason}, actor, expected_seq=_next_seq(events))
            except ConflictError:
                continue
        raise ConflictError(
            f"could not clear the {self.channel} run of model {model!r}: the log kept changing"
        )

    def rollback(self, model: str, reason: str = "", actor: str | None = None) -> dict[str, Any]:
        """Return `model`'s published table to the run published before the current one.

        The event is appended only if the log is still as read: two concurrent rollbacks cannot both step
        back (the second gets ConflictError and can look again at what is published).
        """
        log = self._log(model)
        events = log.read()
        stack = replay_stacks(events, group="model", value="run_id").get(model, [])
        if len(stack) < 2:
            raise NotFoundError(f"previously published run of model {model!r}", "previous", stack)
        event = {"model": model, "action": "rollback", "run_id": stack[-2], "from_run_id": stack[-1]}
        try:
            return log.append({**event, "reason": reason}, actor, expected_seq=_next_seq(events))
        except ConflictError:
            raise ConflictError(
                f"the published run of model {model!r} changed while rolling back from {stack[-1]!r}; "
                "nothing was rolled back: check `batchml predictions list` and retry"
            ) from None


def _next_seq(events: list[dict[str, Any]]) -> int:
    return max((int(e["seq"]) for e in events), default=0) + 1
