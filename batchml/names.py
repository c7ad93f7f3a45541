"""Validation of user-supplied names and URLs, and parsing of `NAME@VERSION` references."""

from __future__ import annotations

import re

from batchml.errors import ConfigError, InvalidNameError
from batchml.redact import redact_url

NAME_PATTERN = r"[a-z][a-z0-9_-]{0,63}"
# Matched with fullmatch: `re.match` with `$` accepts a trailing newline ("loans\n" would become a folder).
_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(kind: str, value: str) -> str:
    """Return `value` if it is a valid name for datasets, models and aliases, else raise naming it."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidNameError(f"{kind} name", str(value), NAME_PATTERN)
    return value


def parse_ref(ref: str, kind: str = "dataset", default_version: str = "latest") -> tuple[str, str]:
    """Split `NAME@VERSION` (version defaults to `latest`) and validate both parts."""
    name, _, version = ref.partition("@")
    version = version or default_version
    if not _VERSION.fullmatch(version):
        raise InvalidNameError(f"{kind} version", version, "'latest' or a version id like 'a1b2c3d4e5f6'")
    return check_name(kind, name), version


_USER_INFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/\s@]+@")


def refuse_credentials_in_url(url: str, what: str) -> str:
    """Return `url` unless it carries `user:password@`; such a URL is refused, naming it redacted.

    A URL is echoed in errors, logs and records (a dataset's source, the serving file's storage), so a secret
    in it would spread; and fsspec's object stores do not read credentials from it anyway.
    """
    if _USER_INFO.match(url):
        raise ConfigError(
            f"{what} {redact_url(url)!r} has credentials in it: remove 'user:password@' and use the "
            "credential chain instead (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, an instance role)"
        )
    return url
