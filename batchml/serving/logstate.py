"""Which state of the event logs a serving file reflects, and whether storage has moved past it.

Five logs per model decide what is served: `aliases` (models/<m>/events), `published`
(publications/<m>/events), `staging` (publications/<m>/staging), `canary` (releases/<m>/canary) and
`experiments` (releases/<m>/experiments). A
log's state is the seq of its newest event, known from a folder listing alone. Every serving file records
the state it was built from in its `serving_logs` table (model, log, seq); a file is behind when a log has a
newer event than it records.
The builder also writes that state beside the file (`<file>.logs`: JSON, though not named `.json`, which
storage-wide gc would take for a record), so that the check every command makes first reads a few bytes
instead of starting a DuckDB database (~0.04 s of CPU); a file without one (built by an older batchml, or
copied without it) is read through DuckDB.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

from batchml.serving.pointer import serving_path
from batchml.store.eventlog import EventLog
from batchml.store.storage import Storage

#: (model, log) → seq of its newest event.
LogState = dict[tuple[str, str], int]

ALIASES, PUBLISHED, STAGING, CANARY, EXPERIMENTS = "aliases", "published", "staging", "canary", "experiments"
LOGS: dict[str, str] = {
    ALIASES: "models/{model}/events",
    PUBLISHED: "publications/{model}/events",
    STAGING: "publications/{model}/staging",
    CANARY: "releases/{model}/canary",
    EXPERIMENTS: "releases/{model}/experiments",
}
TABLE = "serving_logs"
#: The key beside a serving file of the reader memory limit its indexes were sized for (`[serving]`).
SIZED_FOR = "reader_memory_limit"
#: Beside a serving file: whether its installer wrote lookup files (`[serving] lookup_files`, `lookup_files`).
LOOKUP_FILES = "lookup_files"
_PARENTS = {"models": (ALIASES,), "publications": (PUBLISHED, STAGING), "releases": (CANARY, EXPERIMENTS)}


def event_log(storage: Storage, model: str, log: str) -> EventLog:
    """The event log `log` (aliases, published or staging) of `model`."""
    return EventLog(storage, LOGS[log].format(model=model))


def log_state(storage: Storage) -> LogState:
    """The newest seq of every non-empty log, from folder listings (no record is read)."""
    state: LogState = {}
    for parent, logs in _PARENTS.items():
        for model in storage.list_dir(parent):
            for log in logs:
                seq = event_log(storage, model, log).last_seq()
                if seq:
                    state[(model, log)] = seq
    return state


def write_state(con: duckdb.DuckDBPyConnection, state: LogState) -> None:
    """Record `state` in the serving file being built on `con`."""
    con.execute(f"CREATE TABLE {TABLE} (model VARCHAR, log VARCHAR, seq BIGINT)")
    rows = [(model, log, seq) for (model, log), seq in sorted(state.items())]
    if rows:
        con.executemany(f"INSERT INTO {TABLE} VALUES (?, ?, ?)", rows)


def write_state_file(serving_file: Path, state: LogState, **extra: Any) -> None:
    """Write `state` beside the (not yet current) serving file `serving_file`, for `served_state`.

    `extra`: more JSON under their own keys (what the build records of itself, see `beside`)."""
    rows = [[model, log, seq] for (model, log), seq in sorted(state.items())]
    _state_file(serving_file).write_text(json.dumps({**extra, TABLE: rows}))


def beside(serving_file: Path, key: str) -> Any:
    """The value the build of `serving_file` wrote beside it under `key` (None if none or unreadable)."""
    try:
        return json.loads(_state_file(serving_file).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _state_file(serving_file: Path) -> Path:
    return serving_file.with_name(serving_file.name + ".logs")


def _read_state_file(serving_file: Path) -> LogState | None:
    try:
        rows = json.loads(_state_file(serving_file).read_text())[TABLE]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {(str(model), str(log)): int(seq) for model, log, seq in rows}


def read_state(path: Path) -> LogState | None:
    """The state the serving file `path` records; None if it records none (missing, or an older file)."""
    if not path.is_file():
        return None
    # A fresh in-memory database attaching the file: works while this process holds reader connections
    # to it with other settings (a second direct connect with different settings is refused).
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{_quoted(str(path))}' AS served (READ_ONLY)")
        rows = con.execute(f"SELECT model, log, seq FROM served.{TABLE}").fetchall()
    except duckdb.Error:
        return None
    finally:
        con.close()
    return {(str(model), str(log)): int(seq) for model, log, seq in rows}


def served_state(serving_dir: Path) -> LogState | None:
    """The log state the current serving file reflects; None if there is none or it does not record it."""
    link = serving_path(serving_dir)
    if not link.exists():
        return None
    current = link.resolve()
    beside = _read_state_file(current)
    return beside if beside is not None else read_state(current)


def lagging(recorded: LogState | None, current: LogState) -> list[str]:
    """Each log `current` has moved past `recorded`, as `model log: served up to event N of M`."""
    seen = recorded or {}
    return [
        f"{model} {log}: served up to event {seen.get((model, log), 0)} of {seq}"
        for (model, log), seq in sorted(current.items())
        if seq > seen.get((model, log), 0) or recorded is None
    ]


def _quoted(text: str) -> str:
    return text.replace("'", "''")
