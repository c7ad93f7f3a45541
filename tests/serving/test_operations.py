"""Mutating requests on the event logs: operation keys, decisions on the state the caller saw, catch-up.

The crash suite (test_crash.py) kills these commands for real and the race tests (test_races.py) run them in
two processes; here each rule is shown on its own, in-process.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import batchml
from batchml import api
from batchml.errors import ConflictError, InvalidNameError
from batchml.models.registry import Registry, RegistryReader
from batchml.scoring.publications import PublicationLog
from batchml.serving import database, logstate
from batchml.store.eventlog import EventLog

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


def test_a_command_acting_on_a_state_it_did_not_see_is_refused_and_catches_up(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    """Another host moved the alias and this host's serving file does not show it yet: nothing is done."""
    (v2,) = _versions(project, 1)
    Registry(project.storage).promote(MODEL, v2, reason="on another host")  # no serving rebuild here
    with pytest.raises(ConflictError) as caught:
        batchml.rollback_model(project, MODEL)
    message = str(caught.value)
    assert "event 2" in message and "promote champion v1 -> v2" in message and "nothing was done" in message
    assert "batchml models history default_risk" in message
    assert [e["action"] for e in RegistryReader(project.storage).events(MODEL)] == ["promote", "promote"]
    assert _sql(project, "SELECT version FROM model_aliases") == [(v2,)]  # the refusal caught up
    assert batchml.rollback_model(project, MODEL)["to_version"] == 1  # now it acts on what it sees


# -- idempotency: operation keys -------------------------------------------------------------------------


def test_two_deliberate_rollbacks_step_back_twice(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    for version in _versions(project, 2):
        batchml.promote(project, MODEL, version)
    first = batchml.rollback_model(project, MODEL)
    second = batchml.rollback_model(project, MODEL)
    assert (first["to_version"], second["to_version"]) == (2, 1)
    assert first["operation"] != second["operation"]
    assert RegistryReader(project.storage).aliases(MODEL) == {"champion": 1}


def test_the_operation_key_names_the_request_and_the_state_it_acted_on(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    (v2,) = _versions(project, 1)
    event = batchml.promote(project, MODEL, v2)
    assert event["operation"] == "auto:promote:champion:v2@aliases:1"
    assert batchml.rollback_model(project, MODEL)["operation"] == "auto:rollback:champion@aliases:2"


def test_an_explicit_operation_key_is_carried_out_once(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    for version in _versions(project, 2):
        batchml.promote(project, MODEL, version)
    first = batchml.rollback_model(project, MODEL, operation_key="flow-run-1:rollback")
    again = batchml.rollback_model(project, MODEL, operation_key="flow-run-1:rollback")
    assert again == first and first["operation"] == "flow-run-1:rollback"
    other = batchml.rollback_model(project, MODEL, operation_key="flow-run-2:rollback")
    assert (first["to_version"], other["to_version"]) == (2, 1)
    for bad in ("", "auto:mine", "x" * 201, "line\nbreak"):
        with pytest.raises(InvalidNameError, match="operation key"):
            batchml.rollback_model(project, MODEL, operation_key=bad)
    assert len(RegistryReader(project.storage).events(MODEL)) == 5


def test_promoting_the_current_holder_again_appends_nothing_and_builds_nothing(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    served = batchml.database_path(project).resolve()
    events = RegistryReader(project.storage).events(MODEL)
    assert batchml.promote(project, MODEL, champion.version) == events[-1]
    assert RegistryReader(project.storage).events(MODEL) == events
    assert batchml.database_path(project).resolve() == served


def test_a_rerun_of_a_promote_staged_that_finished_its_events_only_rebuilds(
    project: batchml.Project, published: batchml.PredictionRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    (v2,) = _versions(project, 1)
    run = batchml.score(project, MODEL, version=v2)
    api.stage(project, MODEL, run.run_id)
    served = batchml.database_path(project).resolve()
    monkeypatch.setattr(database, "build_serving_db", _interrupted)  # operations imports it when it builds
    with pytest.raises(_Interrupted):
        api.promote_staged(project, MODEL)
    monkeypatch.undo()
    assert batchml.database_path(project).resolve() == served  # as a kill before the rebuild leaves it
    result = api.promote_staged(project, MODEL)
    assert (result["run_id"], result["model_version"]) == (run.run_id, v2)
    staged = PublicationLog(project.storage, "staging").events(MODEL)
    assert [e["action"] for e in staged] == ["publish", "clear"]
    assert _sql(project, "SELECT DISTINCT run_id FROM predictions") == [(run.run_id,)]


class _Interrupted(BaseException):
    """What a process killed after its events and before its rebuild leaves behind."""


def _interrupted(*args: Any, **kwargs: Any) -> Path:
    raise _Interrupted


# -- the serving file records the log state it reflects; commands bring it up to date ----------------------


def test_the_serving_file_records_the_log_state_it_reflects(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    api.stage(project, MODEL, published.run_id)
    rows = _sql(project, "SELECT model, log, seq FROM serving_logs ORDER BY log")
    assert rows == [(MODEL, "aliases", 1), (MODEL, "published", 1), (MODEL, "staging", 1)]


@pytest.mark.parametrize("beside", ["kept", "missing", "damaged"])
def test_the_state_beside_the_file_answers_catch_up_without_duckdb_and_the_file_is_the_fallback(
    project: batchml.Project, published: batchml.PredictionRun, monkeypatch: pytest.MonkeyPatch, beside: str
) -> None:
    served = batchml.database_path(project).resolve()
    state_file = served.with_name(served.name + ".logs")
    assert logstate.served_state(project.serving_dir) == logstate.read_state(served)
    if beside == "kept":  # the answer comes from the JSON alone
        monkeypatch.setattr(logstate, "read_state", lambda path: pytest.fail("opened the serving file"))
    elif beside == "missing":  # a file built before the state was written beside it
        state_file.unlink()
    else:
        state_file.write_text('{"serving_logs": [["default_risk", "aliases"')
    assert logstate.served_state(project.serving_dir) == {(MODEL, "aliases"): 1, (MODEL, "published"): 1}
    assert api.catch_up(project) == []


def test_readers_never_write_and_the_next_command_catches_up(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    (v2,) = _versions(project, 1)
    Registry(project.storage).promote(MODEL, v2, reason="on another host")
    served = batchml.database_path(project).resolve()
    before = sorted(os.listdir(project.serving_dir))
    batchml.connect(project).close()
    assert sorted(os.listdir(project.serving_dir)) == before  # a reader wrote nothing
    assert _sql(project, "SELECT version FROM model_aliases") == [(1,)]
    assert api.catch_up(project) == [f"{MODEL} aliases: served up to event 1 of 2"]
    assert batchml.database_path(project).resolve() != served
    assert _sql(project, "SELECT version FROM model_aliases") == [(v2,)]
    assert api.catch_up(project) == []  # up to date: nothing built


def test_catching_up_reads_only_the_event_folders(
    project: batchml.Project, published: batchml.PredictionRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[str] = []
    original = project.storage.read_bytes
    monkeypatch.setattr(project.storage, "read_bytes", lambda p: read.append(p) or original(p))
    assert api.catch_up(project) == []
    assert read == []  # listing folders answers "behind?"; no record was read
