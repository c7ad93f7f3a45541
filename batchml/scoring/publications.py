"""Which prediction run is published (or staged) per model: append-only logs of publication events.

    publications/<model>/events/<000000001>.json     the published channel: publish / rollback
    publications/<model>/staging/<000000001>.json    the staging channel: stage / clear

The logs in storage are the record; the serving DuckDB file is built from them.
"""

from __future__ import annotations

from typing import Any, Literal

from batchml.errors import ConflictError, NotFoundError
from batchml.names import check_name
from batchml.scoring.runs import get_run
from batchml.store.eventlog import EventLog, Operation, append_decided, replay_stacks
from batchml.store.storage import Storage

Channel = Literal["published", "staging"]
_FOLDERS: dict[str, str] = {"published": "events", "staging": "staging"}


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

    def publish(
        self,
        model: str,
        run_id: str,
        reason: str = "",
        actor: str | None = None,
        *,
        operation: Operation | None = None,
    ) -> dict[str, Any]:
        """Record that `run_id` (a committed run of `model`) is now current on this channel; return the event.

        Exactly once: if `run_id` is already current, the event that made it so is returned and nothing is
        appended. Otherwise the event is a compare-and-append on the log as read: if another writer appended
        first, re-deciding is the same request only when that made `run_id` current (then its event is
        returned); anything else is ConflictError and nothing is appended. `operation`: see
        `Operation.recorded`.
        """
        get_run(self.storage, model, run_id)  # raises NotFoundError listing the model's runs
        log = self._log(model)
        events = log.read()
        made = _made_current(events, model, run_id)
        if made is not None:
            return made
        done = operation.recorded(events, self._subject(model)) if operation else None
        if done is not None:
            return done
        event = {
            "model": model,
            "action": "publish",
            "run_id": run_id,
            "from_run_id": _current(events, model),
        }
        try:
            return append_decided(
                log, events, {**event, "reason": reason}, actor, operation, self._subject(model)
            )
        except ConflictError:
            made = _made_current(log.read(), model, run_id)
            if made is None:
                raise
            return made

    def clear(
        self, model: str, reason: str = "", actor: str | None = None, *, operation: Operation | None = None
    ) -> dict[str, Any]:
        """Record that no run is current on this channel (e.g. staging after its run was promoted).

        Compare-and-append like `publish`, so `from_run_id` is always the run this event cleared.
        """
        log = self._log(model)
        events = log.read()
        done = operation.recorded(events, self._subject(model)) if operation else None
        if done is not None:
            return done
        event = {"model": model, "action": "clear", "run_id": None, "from_run_id": _current(events, model)}
        return append_decided(
            log, events, {**event, "reason": reason}, actor, operation, self._subject(model)
        )

    def rollback(
        self, model: str, reason: str = "", actor: str | None = None, *, operation: Operation | None = None
    ) -> dict[str, Any]:
        """Return `model`'s current run on this channel to the one before it; return the event.

        Compare-and-append on the log as read: two concurrent rollbacks cannot both step back (the second
        gets ConflictError and can look again at what is published).
        """
        log = self._log(model)
        events = log.read()
        done = operation.recorded(events, self._subject(model)) if operation else None
        if done is not None:
            return done
        stack = replay_stacks(events, group="model", value="run_id").get(model, [])
        if len(stack) < 2:
            raise NotFoundError(f"previously published run of model {model!r}", "previous", stack)
        event = {"model": model, "action": "rollback", "run_id": stack[-2], "from_run_id": stack[-1]}
        return append_decided(
            log, events, {**event, "reason": reason}, actor, operation, self._subject(model)
        )

    def recorded(self, model: str, operation: Operation) -> dict[str, Any] | None:
        """The event `operation` already appended to this channel's log (see `Operation.recorded`)."""
        return operation.recorded(self.events(model), self._subject(model))

    def _subject(self, model: str) -> tuple[str, str]:
        """What a conflict message calls the log, and the command that shows it."""
        return f"the {self.channel} run of model {model!r}", f"batchml predictions list {model}"


def _current(events: list[dict[str, Any]], model: str) -> str | None:
    stack = replay_stacks(events, group="model", value="run_id").get(model, [])
    return stack[-1] if stack else None


def _made_current(events: list[dict[str, Any]], model: str, run_id: str) -> dict[str, Any] | None:
    """The event that made `run_id` current, if it is."""
    if _current(events, model) != run_id:
        return None
    return next(e for e in reversed(events) if e.get("run_id") == run_id)
