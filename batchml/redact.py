"""Keep credentials out of logs, errors and artifacts.

Storage URLs may carry `user:password@`, query parameters like `?token=...`, and storage options may hold
`key`/`secret`/`token`/`password`. Everything batchml prints, logs, raises or writes goes through `redact`
(errors via `BatchMLError.__str__`, logs via the filter `install_log_filter` puts on every `batchml.*` logger,
on the storage libraries' loggers and, in flows, on Prefect's, the serving file's `serving_info` and
`batchml info` via `redact_url`).
"""

from __future__ import annotations

import logging
import pkgutil
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
#: Option / parameter names whose values are credentials (`key`, `aws_secret_access_key`, `token`, ...).
_SECRET_NAME = r"[A-Za-z0-9_.-]*(?:key|secret|token|password|passwd|pwd|credentials?|signature)"
_STRONG_NAME = r"[A-Za-z0-9_.-]*(?:secret|token|password|passwd|credentials?)"
_EQ_NAME = rf"(?:[A-Za-z0-9_.-]*[_.-]key|{_STRONG_NAME}|[A-Za-z0-9_.-]*(?:pwd|signature))"
_SECRET_KEY = re.compile(rf"^{_SECRET_NAME}$", re.IGNORECASE)
_VALUE = r"(?P<q>['\"]?)[^\s'\"&,;})]+"
_PATTERNS = [
    # scheme://user:pass@host  ->  scheme://***@host
    (re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@"), rf"\g<scheme>{MASK}@"),
    # name=value (URL query, env, kwargs) and 'name': 'value' (dict reprs, JSON) for secret-looking names
    # (a bare `key=` only in a URL query or with a quoted value: prose like "use KEY=VALUE" stays readable)
    (re.compile(rf"(?P<name>\b{_EQ_NAME}\s*=\s*){_VALUE}", re.I), rf"\g<name>\g<q>{MASK}"),
    (re.compile(rf"(?P<name>[?&]key=){_VALUE}", re.I), rf"\g<name>\g<q>{MASK}"),
    (re.compile(r"(?P<name>\bkey\s*=\s*)(?P<q>['\"])[^'\"]*", re.I), rf"\g<name>\g<q>{MASK}"),
    (re.compile(rf"(?P<name>['\"]{_SECRET_NAME}['\"]\s*:\s*){_VALUE}", re.I), rf"\g<name>\g<q>{MASK}"),
    # password: value (prose) for names that are never anything but credentials
    (re.compile(rf"(?P<name>\b{_STRONG_NAME}\s*:\s*){_VALUE}", re.I), rf"\g<name>\g<q>{MASK}"),
    # AWS access key ids
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), MASK),
]


def redact(text: str) -> str:
    """`text` with credentials (URL user info, secret-named values, AWS key ids) replaced by `***`."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_url(url: str) -> str:
    """A storage URL safe to show: `s3://***@bucket/x?token=***`."""
    return redact(url)


def redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Storage options with the values of secret-named keys (recursively) replaced by `***`."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if _SECRET_KEY.match(str(key)):
            out[key] = MASK
        elif isinstance(value, Mapping):
            out[key] = redact_options(value)
        else:
            out[key] = redact(value) if isinstance(value, str) else value
    return out


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message and the traceback of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the record's message by its redacted, formatted form (never drops a record)."""
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:  # formatters print exc_text when it is set
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


_FILTER = RedactingFilter()


#: Loggers of the libraries that see storage URLs and options (their messages and errors may carry them).
DEPENDENCY_LOGGERS = ("fsspec", "s3fs", "aiobotocore", "botocore")


def install_dependency_log_filters() -> None:
    """Put the redacting filter on the storage libraries' loggers that exist now (call again after an
    import creates more: `Storage` does once its filesystem is made)."""
    for package in DEPENDENCY_LOGGERS:
        install_log_filter(package)


def install_log_filter(package: str = "batchml", path: list[str] | None = None) -> None:
    """Put the redacting filter on `package`'s logger and on the logger of each of its modules.

    Logger filters are not inherited, so each module's logger (`logging.getLogger(__name__)`) gets it; the
    loggers of modules imported later are created here in advance, so they carry it too.
    """
    names = [package]
    if path is not None:
        for module in pkgutil.iter_modules(path):
            names.append(f"{package}.{module.name}")
            if module.ispkg:
                inner = pkgutil.iter_modules([f"{path[0]}/{module.name}"])
                names += [f"{package}.{module.name}.{m.name}" for m in inner]
    names += [n for n in logging.root.manager.loggerDict if n.startswith(f"{package}.")]
    for name in dict.fromkeys(names):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
