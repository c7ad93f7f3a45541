"""Mutating requests on the event logs: operation keys, decisions on the state the caller saw, catch-up.

The crash suite (test_crash.py) kills these commands for real and the race tests (test_races.py) run them in
two processes; here each rule is shown on its own, in-process.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import batchml
from batchml.errors import ConflictError
from batchml.eventlog import EventLog
from batchml.registry import Registry, RegistryReader

MODEL = "default_risk"


def _versions(project: batchml.Project, count: int) -> list[int]:
    """Train `count` more versions (v2, v3, ...) of MODEL."""
    leaves = (7, 5, 3, 11)
    return [batchml.train(project, MODEL, params={"num_leaves": leaves[i]}).version for i in range(count)]


def _sql(project: batchml.Project, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = batchml.connect(project)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _alias_at(project: batchml.Project, at: datetime) -> dict[str, int]:
    rows = _sql(
        project,
        "SELECT alias, alias_at(?, alias, ?) FROM (SELECT DISTINCT alias FROM alias_events) ORDER BY alias",
        [MODEL, at],
    )
    return {alias: version for alias, version in rows if version is not None}


# -- the catalog and alias_at() are one replay -------------------------------------------------------------


def test_model_aliases_and_alias_at_agree_after_promotes_and_rollbacks(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    v2, v3 = _versions(project, 2)
    steps = [
        lambda: batchml.promote(project, MODEL, v2),
        lambda: batchml.promote(project, MODEL, v3),
        lambda: batchml.rollback_model(project, MODEL),
        lambda: batchml.promote(project, MODEL, v3, alias="challenger"),
        lambda: batchml.promote(project, MODEL, v3),
        lambda: batchml.rollback_model(project, MODEL),
        lambda: batchml.rollback_model(project, MODEL),
        lambda: batchml.promote(project, MODEL, v2, alias="challenger"),
        lambda: batchml.rollback_model(project, MODEL, alias="challenger"),
    ]
    reader = RegistryReader(project.storage)
    for step in steps:
        step()
    moments = [datetime.fromisoformat(e["at"]) for e in reader.events(MODEL)]
    for at in [*moments, *(m + timedelta(microseconds=1) for m in moments), datetime.now(UTC)]:
        assert _alias_at(project, at) == reader.aliases(MODEL, at=at), at
    catalog = _sql(project, "SELECT alias, version FROM model_aliases ORDER BY alias")
    assert dict(catalog) == reader.aliases(MODEL) == {"champion": 1, "challenger": 3}


def _unpromoted_versions(project: batchml.Project) -> None:
    batchml.snapshot_dataset(project, "loans")
    batchml.train(project, MODEL)
    _versions(project, 2)


def _write_events(project: batchml.Project, events: list[dict[str, Any]]) -> None:
    """Alias events as a log left by older writers (not something today's commands write)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for seq, event in enumerate(events, start=1):
        at = (start + timedelta(seconds=event.pop("second"))).isoformat()
        record = {"alias": "champion", "reason": "", "by": "old", "seq": seq, "at": at, **event}
        project.storage.create_json(f"models/{MODEL}/events/{seq:09d}.json", record)


def test_alias_at_replays_a_log_that_an_old_race_left_double_rolled_back(project: batchml.Project) -> None:
    _unpromoted_versions(project)
    _write_events(
        project,
        [
            {"action": "promote", "from_version": None, "to_version": 1, "second": 0},
            {"action": "promote", "from_version": 1, "to_version": 2, "second": 1},
            {"action": "promote", "from_version": 2, "to_version": 3, "second": 2},
            {"action": "rollback", "from_version": 3, "to_version": 2, "second": 3},
            {"action": "rollback", "from_version": 3, "to_version": 2, "second": 3},  # on the same log
        ],
    )
    batchml.rebuild_catalog(project)
    assert RegistryReader(project.storage).aliases(MODEL) == {"champion": 1}
    assert _sql(project, "SELECT version FROM model_aliases") == [(1,)]
    assert _alias_at(project, datetime.now(UTC)) == {"champion": 1}


def test_alias_at_replays_a_log_whose_writers_clocks_disagree(project: batchml.Project) -> None:
    _unpromoted_versions(project)
    _write_events(
        project,
        [
            {"action": "promote", "from_version": None, "to_version": 1, "second": 0},
            {"action": "promote", "from_version": 1, "to_version": 2, "second": 20},
            {"action": "promote", "from_version": 2, "to_version": 3, "second": 10},  # a clock 10 s behind
        ],
    )
    batchml.rebuild_catalog(project)
    reader = RegistryReader(project.storage)
    for second in (5, 15, 25):
        at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=second)
        assert _alias_at(project, at) == reader.aliases(MODEL, at=at), second


# -- compare-and-append: a decision lands only on the log it was made from ---------------------------------


def test_a_promotion_decided_on_a_log_that_changed_before_its_append_lands_nowhere(
    project: batchml.Project, champion: batchml.ModelVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    v2, v3 = _versions(project, 2)
    registry = Registry(project.storage)
    original = EventLog.append
    raced: list[dict[str, Any]] = []

    def append_after_the_other_writer(self: EventLog, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if not raced:  # another host promotes between our read and our append
            monkeypatch.setattr(EventLog, "append", original)
            raced.append(registry.promote(MODEL, v2, reason="other"))
            monkeypatch.setattr(EventLog, "append", append_after_the_other_writer)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EventLog, "append", append_after_the_other_writer)
    with pytest.raises(ConflictError, match=r"alias log of model 'default_risk' changed.*nothing was done"):
        registry.promote(MODEL, v3, reason="mine")
    assert [e["to_version"] for e in registry.events(MODEL)] == [1, v2]
