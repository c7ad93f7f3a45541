"""Publish seconds: how long the serving build that first served a publication took, kept per publication.

A run's manifest is committed before the run is published (and a run may be published, rolled back to and
published again), and a publication event is appended before the serving file that serves it is built. So
neither record can hold the publish time. It is measured by the build and kept per publication event:

- `publish_s` is the wall time of the serving build that first served the event (in this serving folder):
  from the build holding the serving lock to the new file's data checkpointed on disk. It covers reading
  the catalog, copying or loading the run tables, indexing and the checkpoint; it does not cover verifying
  the run files and appending the event before the build (`publish` does that first) nor the file's
  atomic flip after it (milliseconds). A build serves the newest event of each model's published log it
  newly reflects: a publish, or a rollback back to an earlier run.
- The build writes that row into the new file's `publish_timings` table (so the file it installs already
  shows its own publish time) and beside the file (`logstate.beside`). After the flip, the row becomes the
  storage record `publications/<model>/timings/<seq>.json`, created if absent: storage stays the truth
  (the next build reads every record), racing writers write the same bytes and exactly one create wins.
- A crash between the flip and the record leaves the row beside the installed file; `record_publish_timings`
  finishes it: a mutating command that builds nothing (e.g. the re-run) and the next build both call it.

`run_stats` (a view in the serving file) joins each run's scoring telemetry (`runs`) to the publish time of
the newest publication that made it current.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from batchml.errors import ConflictError
from batchml.scoring.telemetry import STAGES
from batchml.serving.logstate import PUBLISHED, LogState, beside
from batchml.store.storage import Storage

TABLE = "publish_timings"  # also the key of the rows written beside the serving file
#: One row per run: its scoring telemetry (from its manifest, in `runs`) and the publish time of the newest
#: publication that made it current (NULL: never published, or published before publish times were kept).
RUN_STATS_VIEW = f"""CREATE VIEW run_stats AS
    SELECT r.run_id, r.model, r.rows, {", ".join(f"r.{s}_s" for s in STAGES)}, r.wall_s, r.threads,
        r.rows_per_s, r.peak_rss_mib, p.publish_s, p.seq AS publish_seq
    FROM runs r LEFT JOIN (
        SELECT * FROM {TABLE}
        QUALIFY row_number() OVER (PARTITION BY model, run_id ORDER BY seq DESC) = 1
    ) p ON p.model = r.model AND p.run_id = r.run_id"""


#: Where the publish timing records of a model are (`<seq>.json`: seq of the publication event).
FOLDER = "publications/{model}/timings"


def _record_path(model: str, seq: int) -> str:
    return f"{FOLDER.format(model=model)}/{seq:09d}.json"


def newly_served(before: LogState | None, after: LogState) -> list[tuple[str, int]]:
    """(model, seq) of the newest published event of each model that `after` reflects and `before` did not."""
    seen = before or {}
    return [
        (model, seq)
        for (model, log), seq in sorted(after.items())
        if log == PUBLISHED and seq > seen.get((model, log), 0)
    ]


def add_own_rows(
    con: duckdb.DuckDBPyConnection,
    served: Iterable[tuple[str, int]],
    seconds: float,
    serving_file: str,
    built_at: datetime,
) -> list[dict[str, Any]]:
    """Insert this build's rows (events it first served, with no record yet) into `publish_timings`; return
    them as the JSON records they become (what `record_publish_timings` stores)."""
    rows = []
    for model, seq in served:
        found = con.execute(
            f"SELECT action, run_id, EXISTS (SELECT 1 FROM {TABLE} t WHERE t.model = $m AND t.seq = $s) "
            "FROM publications WHERE model = $m AND seq = $s",
            {"m": model, "s": seq},
        ).fetchone()
        if found is None or found[2]:  # no such event (cannot happen: same state), or already recorded
            continue
        row = {
            "model": model,
            "seq": seq,
            "action": found[0],
            "run_id": found[1],
            "publish_s": round(seconds, 6),
            "serving_file": serving_file,
            "built_at": built_at.isoformat(),
        }
        con.execute(
            f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?)",
            [model, seq, found[0], found[1], row["publish_s"], serving_file, built_at],
        )
        rows.append(row)
    return rows


def record_publish_timings(storage: Storage, serving_file: Path) -> int:
    """Store the publish timing rows the build of `serving_file` left beside it that storage lacks; return
    how many were created. Idempotent: a row already recorded (by this or a racing writer) is left as is."""
    created = 0
    for row in beside(serving_file, TABLE) or []:
        path = _record_path(row["model"], int(row["seq"]))
        if storage.exists(path):
            continue
        try:
            storage.create_json(path, row)
            created += 1
        except ConflictError:  # a racing writer created the same record first
            pass
    return created
