"""The model registry: immutable model versions and aliases moved by append-only events.

    models/<name>/files/<sha256>.txt            LightGBM text model, content-addressed
    models/<name>/versions/<000001>.json        the model card; creating it commits the version
    models/<name>/events/<000000001>.json       alias moves: promote / rollback (who, when, from, to, why)

`RegistryReader` only reads; `Registry` adds the writes. Alias state is a replay of the events: each
promote pushes a holder, each rollback pops back to the previous one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from batchml.errors import ConflictError, DataError, IntegrityError, NotFoundError
from batchml.models.inputs import Feature
from batchml.models.promotion import refuse_promotion
from batchml.names import check_name
from batchml.store.eventlog import EventLog, Operation, append_decided, replay_stacks
from batchml.store.storage import FileEntry, Storage

if TYPE_CHECKING:
    import lightgbm as lgb

_MAX_ATTEMPTS = 100


@dataclass(frozen=True)
class ModelVersion:
    """One immutable model version and its card."""

    name: str
    version: int
    card: dict[str, Any]
    reused: bool = False

    @property
    def ref(self) -> str:
        """`name@version`."""
        return f"{self.name}@{self.version}"

    @property
    def features(self) -> list[Feature]:
        """The inputs the model binds by name."""
        return [Feature.from_dict(f) for f in self.card["features"]]

    @property
    def task(self) -> str:
        """binary, regression or multiclass."""
        return str(self.card["task"])

    @property
    def classes(self) -> list[str]:
        """Class labels in the model's index order (empty for regression)."""
        return list(self.card.get("classes", []))

    @property
    def positive_class(self) -> str | None:
        """The class a binary model's `prediction` is the probability of (the second of `classes`)."""
        classes = self.classes
        return classes[1] if self.task == "binary" and len(classes) == 2 else None

    @property
    def prediction_meaning(self) -> str:
        """What `prediction` holds, e.g. `P(Status = bad)`."""
        target = self.card.get("target") or "target"
        if self.positive_class is not None:
            return f"P({target} = {self.positive_class})"
        if self.task == "multiclass":
            return "P(predicted_class)"
        return f"predicted {target}"

    @property
    def model_file(self) -> FileEntry:
        """Where the LightGBM text model is stored, with its sha256."""
        return FileEntry.from_dict(self.card["model_file"])


def _parse_time(value: str | datetime) -> datetime:
    try:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    except ValueError:
        raise DataError(f"time {value!r} is not ISO-8601: use e.g. 2026-01-31T12:00:00+00:00") from None
    if moment.tzinfo is None:
        raise DataError(f"time {value!s} has no timezone: give one, e.g. 2026-01-31T12:00:00+00:00")
    return moment


class RegistryReader:
    """Read-only access to model versions, cards and alias history."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def _events(self, name: str) -> EventLog:
        return EventLog(self.storage, f"models/{check_name('model', name)}/events")

    def list_models(self) -> list[str]:
        """Names of models with at least one version."""
        return [n for n in self.storage.list_dir("models") if self.storage.list_dir(f"models/{n}/versions")]

    def list_versions(self, name: str) -> list[ModelVersion]:
        """All versions of `name`, oldest first."""
        folder = f"models/{check_name('model', name)}/versions"
        return [
            ModelVersion(name, int(entry.removesuffix(".json")), self.storage.read_json(f"{folder}/{entry}"))
            for entry in self.storage.list_dir(folder)
            if entry.endswith(".json")
        ]

    def get(self, name: str, version: int | str = "latest") -> ModelVersion:
        """A version by number (or `latest`); NotFoundError lists what exists."""
        versions = self.list_versions(name)
        if not versions:
            raise NotFoundError("model", name, self.list_models())
        if str(version) == "latest":
            return versions[-1]
        match = [v for v in versions if str(v.version) == str(version).lstrip("v")]
        if not match:
            raise NotFoundError(
                f"version of model {name!r}", str(version), [str(v.version) for v in versions]
            )
        return match[0]

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every alias move of model `name`, oldest first."""
        return self._events(name).read()

    def aliases(self, name: str, at: str | datetime | None = None) -> dict[str, int]:
        """Alias → version, now or as it stood at time `at`."""
        stacks = self._stacks(name, at)
        return {alias: stack[-1] for alias, stack in sorted(stacks.items()) if stack}

    def _stacks(self, name: str, at: str | datetime | None = None) -> dict[str, list[int]]:
        until = _parse_time(at) if at is not None else None
        return replay_stacks(self.events(name), group="alias", value="to_version", until=until)

    def resolve(self, name: str, alias: str | None = None, version: int | str | None = None) -> ModelVersion:
        """The version an alias points at, or an explicit version (alias wins when both are None: latest)."""
        if version is not None:
            return self.get(name, version)
        if alias is None:
            return self.get(name)
        current = self.aliases(name)
        if alias not in current:
            check_name("alias", alias)  # an invalid alias says what is allowed, not just "not found"
            available = [f"{a} (v{v})" for a, v in current.items()]
            versions = [str(v.version) for v in self.list_versions(name)]
            hint = (
                f"Point it at a version first: batchml models promote {name} VERSION --alias {alias} "
                f"(versions: {', '.join(versions[-10:])})"
                if versions
                else f"Train a version first: batchml train {name} --promote"
            )
            raise NotFoundError(f"alias of model {name!r}", alias, available, hint)
        return self.get(name, current[alias])

    def model_text(self, model: ModelVersion) -> bytes:
        """The stored LightGBM model text of a version, after checking it against its sha256."""
        entry = model.model_file
        text = self.storage.read_bytes(entry.path)
        actual = hashlib.sha256(text).hexdigest()
        if actual != entry.sha256:
            raise IntegrityError(self.storage.uri(entry.path), entry.sha256, actual)
        return text

    def load_booster(self, model: ModelVersion) -> lgb.Booster:
        """The LightGBM booster of a version, after checking the stored text against its sha256."""
        text = self.model_text(model)
        import lightgbm as lgb  # deferred: importing it takes seconds

        return lgb.Booster(model_str=text.decode())


class Registry(RegistryReader):
    """Registry writes: new versions, promotions, rollbacks."""

    def register(self, name: str, booster: lgb.Booster, card: dict[str, Any]) -> ModelVersion:
        """Store `booster` as the next version of `name` with `card` (lineage, features, metrics).

        If a version with the same `training_key` exists, it is returned instead (`reused=True`).
        """
        check_name("model", name)
        key = card.get("training_key")
        if key:
            for existing in self.list_versions(name):
                if existing.card.get("training_key") == key:
                    return ModelVersion(name, existing.version, existing.card, reused=True)
        text = booster.model_to_string().encode()
        digest = hashlib.sha256(text).hexdigest()
        path = f"models/{name}/files/{digest}.txt"
        if not self.storage.exists(path):
            self.storage.write_new(path, text)
        full_card = {**card, "name": name, "model_file": FileEntry(path, digest, len(text)).to_dict()}
        for _ in range(_MAX_ATTEMPTS):
            versions = self.list_versions(name)
            number = versions[-1].version + 1 if versions else 1
            try:
                self.storage.create_json(
                    f"models/{name}/versions/{number:06d}.json", {**full_card, "version": number}
                )
            except ConflictError:
                continue
            return ModelVersion(name, number, {**full_card, "version": number})
        raise ConflictError(f"could not allocate a version number for model {name!r}")

    def promote(
        self,
        name: str,
        version: int | str,
        alias: str = "champion",
        reason: str = "",
        actor: str | None = None,
        force: bool = False,
        *,
        operation: Operation | None = None,
    ) -> dict[str, Any]:
        """Point `alias` at `version`, recording who, when, from, to and why; return the event.

        A version whose gates failed is refused (PromotionError listing the failed checks) unless `force`
        is given with a `reason`; the event then records `forced: true` and the overridden checks. If
        `alias` already holds `version`, the event that made it so is returned and nothing is appended. The
        event is a compare-and-append on the log as read; `operation` (see `Operation.recorded`) also
        refuses a log that moved since the caller's state and finds the event of an interrupted run.
        """
        check_name("alias", alias)
        target = self.get(name, version)
        overridden = refuse_promotion(target.ref, alias, target.card.get("gates"), force, reason)
        log = self._events(name)
        events = log.read()
        stack = replay_stacks(events, group="alias", value="to_version").get(alias, [])
        if stack and stack[-1] == target.version:
            return next(e for e in reversed(events) if e["alias"] == alias)
        done = operation.recorded(events, self._subject(name)) if operation else None
        if done is not None:
            return done
        event: dict[str, Any] = {
            "action": "promote",
            "alias": alias,
            "from_version": stack[-1] if stack else None,
            "to_version": target.version,
        }
        if force:
            event |= {"forced": True, "overridden": overridden}
        subject = self._subject(name)
        return append_decided(log, events, {**event, "reason": reason}, actor, operation, subject)

    def rollback(
        self,
        name: str,
        alias: str = "champion",
        reason: str = "",
        actor: str | None = None,
        *,
        operation: Operation | None = None,
    ) -> dict[str, Any]:
        """Return `alias` to the version that held it before the current one; return the event.

        Compare-and-append on the log as read, so two rollbacks decided on the same log step back once.
        """
        check_name("alias", alias)
        log = self._events(name)
        events = log.read()
        done = operation.recorded(events, self._subject(name)) if operation else None
        if done is not None:
            return done
        stack = replay_stacks(events, group="alias", value="to_version").get(alias, [])
        if len(stack) < 2:
            raise NotFoundError(
                f"previous holder of alias {alias!r} of model {name!r}", alias, [str(v) for v in stack]
            )
        event = {"action": "rollback", "alias": alias, "from_version": stack[-1], "to_version": stack[-2]}
        subject = self._subject(name)
        return append_decided(log, events, {**event, "reason": reason}, actor, operation, subject)

    def withdraw(
        self,
        name: str,
        alias: str,
        version: int,
        reason: str,
        actor: str | None = None,
        *,
        automatic: bool = True,
    ) -> dict[str, Any]:
        """Take `alias` off `version` (a canary rolled back, automatically or by hand): it returns to its
        previous holder, or to none. Compare-and-append; if `alias` no longer holds `version`, the event
        that moved it last is returned and nothing is appended (a rerun after a crash, or another writer
        was first)."""
        check_name("alias", alias)
        log = self._events(name)
        events = log.read()
        stack = replay_stacks(events, group="alias", value="to_version").get(alias, [])
        if not stack or stack[-1] != version:
            return next((e for e in reversed(events) if e["alias"] == alias), {})
        event = {
            "action": "rollback",
            "alias": alias,
            "from_version": version,
            "to_version": stack[-2] if len(stack) > 1 else None,
            "reason": reason,
            "automatic": automatic,
        }
        return append_decided(log, events, event, actor, None, self._subject(name))

    def recorded(self, name: str, operation: Operation) -> dict[str, Any] | None:
        """The event `operation` already appended to `name`'s alias log (see `Operation.recorded`)."""
        return operation.recorded(self.events(name), self._subject(name))

    @staticmethod
    def _subject(name: str) -> tuple[str, str]:
        """What a conflict message calls the log, and the command that shows it."""
        return f"the alias log of model {name!r}", f"batchml models history {name}"
