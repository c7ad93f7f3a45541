"""History readers answer what was served at a time: the canary or A/B arm's row, not the published run's."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

import batchml
from batchml import releases
from batchml.api import score_with_shadows
from tests.serving.test_ab_experiments import start, two_versions
from tests.serving.test_canary import HEALTHY, canary_project

MODEL = "default_risk"
AT = "SELECT * FROM prediction_at($model, $entity, $at)"


def publish_plain(project: batchml.Project) -> tuple[str, datetime]:
    """Publish the champion's run, no arm beside it yet; the run and a time it served alone."""
    run = batchml.score(project, MODEL, shadows=False)
    batchml.publish(project, MODEL, run.run_id)
    return run.run_id, datetime.now(UTC)


def served_now(project: batchml.Project) -> pa.Table:
    """`predictions` of the model, every entity, in entity id order (what apps read now)."""
    with batchml.connect(project) as con:
        sql = "SELECT * FROM predictions WHERE model = $model ORDER BY entity_id"
        return con.sql(sql, params={"model": MODEL}).to_arrow_table()


def check_history_serves_the_arms(project: batchml.Project, control: str, before: datetime) -> None:
    """At a time after the arms: history answers exactly what `predictions` serves, arm by arm, by lookup
    and by `prediction_at`; at `before` (no arm yet), the published run `control` for every entity."""
    view = served_now(project)
    after = datetime.now(UTC)
    ids = view.column("entity_id").to_pylist()
    variants = view.column("variant").to_pylist()
    assert len(set(variants)) == 2 and len(set(view.column("run_id").to_pylist())) == 2  # an arm is served
    with batchml.connect(project, history=True) as con:
        then = batchml.lookup(con, MODEL, ids, at=after)
        assert then.to_pylist() == view.to_pylist()  # every row, column for column, arm rows from arm runs
        for variant in sorted(set(variants)):  # one entity of each arm, through the macro
            row = view.slice(variants.index(variant), 1)
            entity = row.column("entity_id")[0].as_py()
            got = con.sql(AT, params={"model": MODEL, "entity": entity, "at": after}).to_arrow_table()
            assert got.to_pylist() == row.to_pylist()
            plan = con.sql(f"EXPLAIN ANALYZE {AT}", params={"model": MODEL, "entity": entity, "at": after})
            read = [int(n) for n in re.findall(r"Total Files Read: (\d+)", plan.fetchall()[0][1])]
            assert read and max(read) == 1  # each scan opens its run's one file, not every run's
            old = con.sql(AT, params={"model": MODEL, "entity": entity, "at": before}).fetchall()
            assert [(r[7], r[-1]) for r in old] == [(control, "control")]  # before the arm: the plain run
        earlier = batchml.lookup(con, MODEL, ids, at=before)
        assert earlier.num_rows == len(ids)
        assert set(earlier.column("run_id").to_pylist()) == {control}
        assert set(earlier.column("variant").to_pylist()) == {"control"}
        # prediction_history stays per published run: the arm runs are not in it
        runs = {r for (r,) in con.execute("SELECT DISTINCT run_id FROM prediction_history").fetchall()}
        assert runs == {control}


def test_history_serves_each_entity_its_canary_arm_from_when_the_step_stood(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    project = canary_project(make_project, loans_csv, HEALTHY)
    control, before = publish_plain(project)
    stepped = score_with_shadows(project, MODEL)  # the same read: the same control run, a canary step on it
    assert stepped.served.run_id == control and stepped.canary["action"] == "advance"
    batchml.api.catch_up(project)  # the serving file now serves the canary arm
    check_history_serves_the_arms(project, control, before)


def test_history_serves_each_entity_its_experiment_variant_while_the_experiment_ran(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    project = two_versions(make_project, loans_csv)
    control, before = publish_plain(project)
    start(project, reason="does v2 lower defaults?")
    scored = score_with_shadows(project, MODEL)
    assert scored.served.run_id == control and scored.experiment["runs"]["b"] != control
    batchml.api.catch_up(project)
    check_history_serves_the_arms(project, control, before)
    stopped = datetime.now(UTC)
    releases.stop_experiment(project, MODEL, "pricing", reason="enough")
    with batchml.connect(project, history=True) as con:  # stopped: everyone is served the published run
        later = batchml.lookup(con, MODEL, ["L000000042"], at=datetime.now(UTC))
        assert later.column("run_id").to_pylist() == [control]
        during = batchml.lookup(con, MODEL, served_now(project).column("entity_id").to_pylist(), at=stopped)
        assert len(set(during.column("run_id").to_pylist())) == 2  # what was served then is still the arms
