"""Self-hashed records: every JSON record in storage carries the sha256 of its own content.

Manifests, model cards and events list the files they commit with sha256s, but the record itself is the
root of that chain: a hand edit (a changed `rows`, a rewritten actor) would otherwise be read as the truth.
`seal` adds `record_sha256`, the sha256 of the record's canonical JSON (sorted keys, no whitespace) without
that field; `unseal` checks it and returns the record without it, so a reader sees exactly what the writer
passed. A record with no hash is refused: it was edited, or written before records were sealed (pre-1.0,
such a store is re-created rather than trusted).

The hash detects edits made without recomputing it. It is not a signature: whoever can write the store and
knows this scheme can re-seal a forged record.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from batchml.errors import IntegrityError

#: The field holding a record's own hash.
RECORD_HASH = "record_sha256"


def _digest(record: dict[str, Any]) -> str:
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def seal(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` as it will read back (values JSON cannot hold turned to strings) plus its own hash."""
    record = json.loads(json.dumps(obj, default=str))
    if not isinstance(record, dict) or RECORD_HASH in record:
        raise TypeError(
            f"a record is a JSON object without a {RECORD_HASH!r} field, got {type(obj).__name__}"
        )
    return {**record, RECORD_HASH: _digest(record)}


def unseal(stored: Any, where: str) -> dict[str, Any]:
    """The record `stored` (parsed from the file `where`) without its hash, after checking that hash."""
    if not isinstance(stored, dict) or not isinstance(stored.get(RECORD_HASH), str):
        raise IntegrityError(
            where, f"a {RECORD_HASH} field", "none (edited, or written before records were sealed)"
        )
    record = {k: v for k, v in stored.items() if k != RECORD_HASH}
    actual = _digest(record)
    if actual != stored[RECORD_HASH]:
        raise IntegrityError(
            where,
            f"{RECORD_HASH} {stored[RECORD_HASH]}",
            f"content hashing to {actual} (edited after it was written)",
        )
    return record
