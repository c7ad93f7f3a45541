"""Time values from a dataset column: timestamps and dates as stored, ISO-8601 text, or text in a format.

Exports often write dates as text ("2018-03-01", "Mar-2018"). ISO dates and datetimes (with or without a UTC
offset) are read without help; any other text needs the model's `timestamp_format` (strftime codes, e.g.
"%b-%Y"), and a value that does not parse fails with one line naming the column, the value and the key to set.
Text columns that look like dates are also recognised among the features, where they would otherwise become
categories silently (each month its own category, unseen as soon as new months arrive).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchml.errors import DataError

#: Formats tried when guessing what a text column of dates is written in (to suggest `timestamp_format`).
COMMON_FORMATS = ("%Y-%m-%d", "%Y-%m", "%b-%Y", "%b %Y", "%d/%m/%Y", "%m/%d/%Y", "%Y/%m/%d", "%d.%m.%Y")
_SAMPLE = 200


def _iso(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array | None:
    for kind in (pa.timestamp("us"), pa.timestamp("us", "UTC")):  # naive, then with offsets or "Z"
        try:
            return pc.cast(pc.cast(values, kind), pa.timestamp("us"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return None


def _parses(values: pa.Array, fmt: str) -> bool:
    parsed = pc.strptime(values, format=fmt, unit="us", error_is_null=True)
    return parsed.null_count == values.null_count


def date_format_of(values: pa.ChunkedArray | pa.Array) -> str | None:
    """"iso" or the strftime format a sample of these text values all parse with; None if not dates."""
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return None
    sample = pc.unique(pc.drop_null(values))[:_SAMPLE]
    if not len(sample):
        return None
    if _iso(sample) is not None:
        return "iso"
    return next((fmt for fmt in COMMON_FORMATS if _parses(sample, fmt)), None)


def timestamp_micros(
    column: pa.ChunkedArray | pa.Array, name: str, fmt: str | None, key: str = "timestamp_format"
) -> np.ndarray:
    """`column` as int64 microseconds since the epoch (nulls as 0: the earliest time).

    Timestamps and dates are taken as stored; text is parsed as ISO-8601, or with `fmt` when given.
    Unparseable text raises DataError naming `name`, an example value and `key`.
    """
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        if fmt is not None:
            parsed = pc.strptime(column, format=fmt, unit="us", error_is_null=True)
        else:
            parsed = _iso(column)
        if parsed is None or parsed.null_count != column.null_count:
            raise DataError(_unparsed(column, parsed, name, fmt, key))
        column = parsed
    return np.asarray(column.cast(pa.timestamp("us")).cast(pa.int64()).fill_null(0))


def _unparsed(
    column: pa.ChunkedArray | pa.Array,
    parsed: pa.ChunkedArray | pa.Array | None,
    name: str,
    fmt: str | None,
    key: str,
) -> str:
    failed = pc.is_null(parsed) if parsed is not None else pc.is_valid(column)
    example = pc.filter(column, pc.and_(failed, pc.is_valid(column)))[0].as_py()
    if fmt is not None:
        return f"timestamp column {name!r} has {example!r}, which does not match {key} {fmt!r}: fix the {key}"
    guess = date_format_of(pc.filter(column, pc.is_valid(column)))
    hint = f" (it looks like {guess!r})" if guess not in (None, "iso") else ""
    return (
        f"timestamp column {name!r} has {example!r}, which is not an ISO date: set {key} to its strftime "
        f"format in the model's config{hint}, e.g. {key} = \"%b-%Y\" for 'Mar-2018'"
    )
