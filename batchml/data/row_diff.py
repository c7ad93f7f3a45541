"""Row-level diff of two dataset versions by an entity id: rows added, removed and changed.

Summary statistics hide row changes (the same mean over different rows), so `batchml datasets diff --by ID`
joins the two versions on the id with DuckDB (which spills to disk beyond a fixed memory cap, so any size
fits) and reports which ids were added, removed and changed, how many changed per column, and a few example
ids of each. Columns are compared where both versions have them; NULL equals NULL. Both versions' files are
hash-checked first.
"""

from __future__ import annotations

import tempfile
from typing import Any

import duckdb

from batchml.data.datasets import DatasetVersion
from batchml.errors import DataError, SchemaError
from batchml.store.storage import Storage

#: Example ids shown per kind of change and per changed column.
EXAMPLES = 5
_MEMORY_LIMIT = "512MB"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _check_unique(con: duckdb.DuckDBPyConnection, view: str, key: str, version: DatasetVersion) -> None:
    found = con.execute(f"SELECT count(*) FROM (SELECT {key} FROM {view} GROUP BY ALL HAVING count(*) > 1)")
    repeated = (found.fetchone() or (0,))[0]
    if repeated:
        raise DataError(
            f"column {key} is not an id in {version.ref}: {repeated:,} of its values repeat, and a row diff "
            "matches each row to one row: pick a unique column with --by"
        )


def _counts_and_examples(
    con: duckdb.DuckDBPyConnection, conditions: list[str]
) -> list[tuple[int, list[str]]]:
    """Per condition on `joined`: how many rows meet it, and the smallest few ids that do (one scan)."""
    first = f"min(id, {EXAMPLES})"
    parts = [f"count(*) FILTER (WHERE {c}), coalesce({first} FILTER (WHERE {c}), [])" for c in conditions]
    row = con.execute(f"SELECT {', '.join(parts)} FROM joined").fetchone() or ()
    return [(int(row[2 * i]), [str(v) for v in row[2 * i + 1]]) for i in range(len(conditions))]


def _nulls(con: duckdb.DuckDBPyConnection, view: str, key: str) -> int:
    return int((con.execute(f"SELECT count(*) FROM {view} WHERE {key} IS NULL").fetchone() or (0,))[0])


def row_diff(storage: Storage, old: DatasetVersion, new: DatasetVersion, by: str) -> dict[str, Any]:
    """Rows of `new` added, removed and changed since `old`, matched by the id column `by`."""
    for version in (old, new):
        if by not in version.columns:
            raise SchemaError(f"dataset {version.ref} has no column {by!r} to match rows by", version.columns)
    common = [c for c in new.columns if c in old.columns and c != by]
    key = _quoted(by)
    changed = {c: f"_changed_{i}" for i, c in enumerate(common)}  # flag columns, safe names
    with tempfile.TemporaryDirectory(prefix="batchml-diff-") as spill:
        con = duckdb.connect(config={"memory_limit": _MEMORY_LIMIT, "temp_directory": spill})
        try:
            if not storage.is_local:
                con.register_filesystem(storage.fs)
            con.execute(f"CREATE VIEW all_a AS SELECT * FROM {storage.verified_parquet(old.files)}")
            con.execute(f"CREATE VIEW all_b AS SELECT * FROM {storage.verified_parquet(new.files)}")
            without_id = {"old": _nulls(con, "all_a", key), "new": _nulls(con, "all_b", key)}
            con.execute(f"CREATE VIEW a AS SELECT * FROM all_a WHERE {key} IS NOT NULL")
            con.execute(f"CREATE VIEW b AS SELECT * FROM all_b WHERE {key} IS NOT NULL")
            _check_unique(con, "a", key, old)
            _check_unique(con, "b", key, new)
            flags = "".join(
                f", a.{_quoted(c)} IS DISTINCT FROM b.{_quoted(c)} AS {flag}" for c, flag in changed.items()
            )
            con.execute(
                f"CREATE TEMP TABLE joined AS SELECT CAST(coalesce(a.{key}, b.{key}) AS VARCHAR) AS id, "
                f"a.{key} IS NULL AS added, b.{key} IS NULL AS removed{flags} "
                f"FROM a FULL OUTER JOIN b ON a.{key} = b.{key}"
            )
            both = "NOT added AND NOT removed"
            any_change = " OR ".join(changed.values()) or "false"
            kinds = {"added": "added", "removed": "removed", "changed": f"{both} AND ({any_change})"}
            columns = {c: f"{both} AND {flag}" for c, flag in changed.items()}
            results = _counts_and_examples(con, [*kinds.values(), *columns.values()])
        finally:
            con.close()
    found = dict(zip(kinds, results[: len(kinds)], strict=True))
    per_column = dict(zip(columns, results[len(kinds) :], strict=True))
    counts = {kind: count for kind, (count, _) in found.items()}
    unchanged = new.rows - without_id["new"] - counts["added"] - counts["changed"]
    return {
        "by": by,
        "compared_columns": common,
        "rows": {**counts, "unchanged": unchanged, "without_id": without_id},
        "examples": {kind: examples for kind, (_, examples) in found.items()},
        "changed_columns": {
            c: {"changed": n, "examples": examples} for c, (n, examples) in per_column.items() if n
        },
    }
