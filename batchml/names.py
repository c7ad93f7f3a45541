"""Validation of user-supplied names and parsing of `NAME@VERSION` references."""

from __future__ import annotations

import re

from batchml.errors import InvalidNameError

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
