"""Memory sizes as DuckDB reads them: `'2GB'` is 2 x 10^9 bytes, `'2GiB'` 2 x 2^30.

One parser for every size batchml compares with DuckDB's: the `[serving]` reader memory limit (what the
serving build sizes its indexes by) and the limit a connection reports (`current_setting('memory_limit')`,
shown as e.g. '1.8 GiB'). It follows DuckDB's `StringUtil::TryParseFormattedBytes`, units case-insensitive,
so a size is the same number of bytes to batchml as to the reader DuckDB opens with it.
"""

from __future__ import annotations

import re

_UNITS = {
    **dict.fromkeys(("b", "byte", "bytes"), 1),
    **dict.fromkeys(("k", "kb", "kilobyte", "kilobytes"), 10**3),
    **dict.fromkeys(("m", "mb", "megabyte", "megabytes"), 10**6),
    **dict.fromkeys(("g", "gb", "gigabyte", "gigabytes"), 10**9),
    **dict.fromkeys(("t", "tb", "terabyte", "terabytes"), 10**12),
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[A-Za-z]+)\s*")
#: What a size may look like, for error messages.
ALLOWED = "a size like '2GB' or '512MB' (KB, MB, GB, TB: powers of 1000; KiB, MiB, GiB, TiB: of 1024)"


def size_bytes(text: str) -> int | None:
    """The bytes `text` stands for as DuckDB reads it ('2GB': 2 x 10^9; '1.8 GiB': 1.8 x 2^30); None if it
    is not a positive number with a unit (DuckDB's 'none'/negative 'no limit' is no size here)."""
    found = _SIZE.fullmatch(text) if isinstance(text, str) else None
    if found is None or found["unit"].lower() not in _UNITS:
        return None
    value = int(float(found["number"]) * _UNITS[found["unit"].lower()])
    return value if value > 0 else None
