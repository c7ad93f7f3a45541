"""One error tree for batchml.

    BatchMLError                      root: catch this to catch everything batchml raises on purpose
    ├── ConfigError                   batchml.toml is missing, malformed or names something invalid
    ├── InvalidNameError              a user-supplied name is not allowed (e.g. '../x')
    ├── NotFoundError                 a dataset, model, version, alias or run does not exist
    ├── SchemaError                   input columns or dtypes do not match what is expected
    ├── DataError                     the data itself is unusable (empty, one class, bad target)
    ├── IntegrityError                a stored file does not match the hash its manifest (or, for a record,
    │                                 the record itself) recorded
    ├── ConflictError                 someone else committed the same thing first
    ├── ReadOnlyError                 a write was attempted through a read-only path
    ├── QueryTimeoutError             a reader's query ran past its time limit and was interrupted
    ├── PromotionError                a version failed its promotion gates (or was forced without a reason)
    └── TransientError                I/O that may succeed if retried (flows map it to Prefect retries)

Every message says what was wrong, with the value, and what is allowed.
"""

from __future__ import annotations


class BatchMLError(Exception):
    """Root of every error batchml raises on purpose."""

    #: True when retrying the same call may succeed (network blips, throttling).
    transient: bool = False

    def __str__(self) -> str:
        from batchml.redact import redact  # credentials never reach a message, whoever built it

        return redact(super().__str__())


class ConfigError(BatchMLError):
    """The project configuration is missing, malformed, or refers to something invalid."""


class InvalidNameError(BatchMLError, ValueError):
    """A user-supplied name (dataset, model, alias, path part) is not allowed."""

    def __init__(self, kind: str, value: str, allowed: str) -> None:
        super().__init__(f"{kind} {value!r} is invalid: use {allowed}")
        self.kind = kind
        self.value = value
        self.allowed = allowed


class NotFoundError(BatchMLError, LookupError):
    """A named thing does not exist; the message lists what does."""

    def __init__(
        self, kind: str, value: str, available: list[str] | None = None, hint: str | None = None
    ) -> None:
        shown = ", ".join(available[:20]) if available else "none"
        more = f" (+{len(available) - 20} more)" if available and len(available) > 20 else ""
        then = f". {hint}" if hint else ""
        super().__init__(f"{kind} {value!r} not found; available: {shown}{more}{then}")
        self.kind = kind
        self.value = value
        self.available = list(available or [])


class SchemaError(BatchMLError):
    """Columns or dtypes of an input do not match what the model or dataset expects."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        detail = "".join(f"\n  - {p}" for p in problems or [])
        super().__init__(message + detail)
        self.problems = list(problems or [])


class DataError(BatchMLError):
    """The data cannot be used as asked (empty input, a single class, an unusable target)."""


class IntegrityError(BatchMLError):
    """A stored file does not match the sha256 or size in its manifest, or a record its own hash."""

    def __init__(self, path: str, expected: str, actual: str) -> None:
        super().__init__(f"integrity check failed for {path}: expected {expected}, found {actual}")
        self.path = path
        self.expected = expected
        self.actual = actual


class ConflictError(BatchMLError):
    """Another writer committed the same key first."""


class ReadOnlyError(BatchMLError):
    """A statement that writes was sent through a read-only interface."""


class QueryTimeoutError(BatchMLError):
    """A query ran longer than its time limit and was interrupted."""


class PromotionError(BatchMLError):
    """An alias may not move to a version whose gates failed, unless forced with a reason."""


class TransientError(BatchMLError):
    """A failure that may go away on retry (storage timeouts, throttling)."""

    transient = True
