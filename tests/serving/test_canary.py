"""Canary releases: a stable salted share of entities served by the canary, ramped, rolled back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl
import pytest

import batchml
from batchml.api import score_with_shadows
from batchml.errors import ConfigError
from batchml.models.registry import RegistryReader
from batchml.serving import canary
from batchml.testing import write_loans
from tests.conftest import PROJECT_TOML, SAMPLE_ROWS
from tests.serving.test_compat import LTS_VENV, lts_answers

HEALTHY = "max_psi = 100.0\nmax_ks = 1.0\nmax_flip_rate = 1.0\n"


def canary_project(
    make_project: Callable[..., batchml.Project], loans_csv: Path, extra: str
) -> batchml.Project:
    """Champion v1; v2 (another model) holds the canary alias."""
    toml = (
        PROJECT_TOML.format(source=loans_csv) + "\n[models.default_risk.canary]\nshares = [0.1, 0.5, 1.0]\n"
    )
    project = make_project(toml + extra)
    batchml.snapshot_dataset(project, "loans")
    batchml.promote(project, "default_risk", batchml.train(project, "default_risk").version, reason="first")
    v2 = batchml.train(project, "default_risk", params={"num_leaves": 4, "num_iterations": 10})
    batchml.promote(project, "default_risk", v2.version, alias="canary", reason="try v2")
    return project


def served(project: batchml.Project) -> pl.DataFrame:
    con = batchml.connect(project)
    sql = "SELECT entity_id, variant, model_version, run_id, prediction FROM predictions"
    rows = con.execute(sql).fetchall()
    return pl.DataFrame(
        rows, schema=["entity_id", "variant", "model_version", "run_id", "prediction"], orient="row"
    )


def test_bucket_is_stable_uniform_and_the_same_in_sql() -> None:
    ids = [f"L{i:09d}" for i in range(20_000)]
    python = [canary.bucket("salt", i) for i in ids]
    con = duckdb.connect()
    sql = con.execute(f"SELECT {canary.bucket_sql('salt', 'id')} FROM unnest(?) AS t(id)", [ids]).fetchall()
    assert [r[0] for r in sql] == pytest.approx(python, abs=0)
    share = sum(b < 0.1 for b in python) / len(ids)
    assert abs(share - 0.1) < 4 * (0.1 * 0.9 / len(ids)) ** 0.5  # within sampling error
    assert canary.bucket("other", ids[0]) != python[0]  # another salt draws other entities


def test_canary_serves_its_share_one_row_per_entity_and_ramps_per_new_run(
    make_project: Callable[..., batchml.Project], loans_csv: Path, tmp_path: Path
) -> None:
    project = canary_project(make_project, loans_csv, HEALTHY)
    first = score_with_shadows(project, "default_risk")
    assert (first.canary["action"], first.canary["share"], first.canary["version"]) == ("advance", 0.1, 2)
    batchml.publish(project, "default_risk", first.served.run_id)
    rows = served(project)
    assert rows.height == rows["entity_id"].n_unique() == first.served.rows  # one row per entity
    arm = rows.filter(pl.col("variant") == "canary")
    expected = {e for e in rows["entity_id"] if canary.bucket("default_risk", e) < 0.1}
    assert set(arm["entity_id"]) == expected and 0 < len(expected) < rows.height
    assert set(arm["model_version"]) == {2} and set(arm["run_id"]) == {first.canary["run_id"]}
    assert set(rows.filter(pl.col("variant") == "control")["model_version"]) == {1}
    # The same run again is not a new healthy run: the ramp stays where it is.
    again = score_with_shadows(project, "default_risk")
    assert again.canary["seq"] == first.canary["seq"]
    # New data (same entities, other values): one step further; every canary entity stays in the canary.
    batchml.snapshot_dataset(project, "loans", str(write_loans(tmp_path / "new.csv", SAMPLE_ROWS, seed=8)))
    second = score_with_shadows(project, "default_risk")
    assert (second.canary["share"], second.canary["step"]) == (0.5, 1)
    batchml.api.catch_up(project)  # the canary log moved: rebuilt, the published run's step still stands
    assert set(served(project).filter(pl.col("variant") == "canary")["entity_id"]) == expected
    batchml.publish(project, "default_risk", second.served.run_id)
    wider = served(project)
    assert wider.height == wider["entity_id"].n_unique() == second.served.rows
    assert expected <= set(wider.filter(pl.col("variant") == "canary")["entity_id"])
    assert set(wider["run_id"]) == {second.served.run_id, second.canary["run_id"]}


def test_a_breach_rolls_the_canary_back_as_an_alias_event_with_the_reason(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    project = canary_project(make_project, loans_csv, HEALTHY + "max_mean_abs_delta = 0.0\n")
    result = score_with_shadows(project, "default_risk")
    assert result.canary["action"] == "rollback" and "mean_abs_delta" in result.canary["reason"]
    registry = RegistryReader(project.storage)
    assert "canary" not in registry.aliases("default_risk")
    event = registry.events("default_risk")[-1]
    assert (event["action"], event["alias"], event["from_version"], event["automatic"]) == (
        "rollback",
        "canary",
        2,
        True,
    )
    assert event["reason"].startswith("canary v2 rolled back: diverges from control")
    batchml.publish(project, "default_risk", result.served.run_id)
    assert set(served(project)["variant"]) == {"control"}
    con = batchml.connect(project)
    reason = con.execute("SELECT reason FROM alias_events WHERE alias = 'canary' AND action = 'rollback'")
    assert reason.fetchone() == (event["reason"],)
    # Re-running finds no canary to score or step: nothing more is appended.
    again = score_with_shadows(project, "default_risk")
    assert again.canary == {} and registry.events("default_risk")[-1]["seq"] == event["seq"]


def test_lookup_answers_each_entity_from_its_arm(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    project = canary_project(make_project, loans_csv, HEALTHY)
    batchml.publish(project, "default_risk", score_with_shadows(project, "default_risk").served.run_id)
    view = served(project).sort("entity_id")
    assert set(view["variant"]) == {"control", "canary"}
    ids = view["entity_id"].to_list()
    con = batchml.connect(project)
    for chosen in (ids, [view.filter(pl.col("variant") == "canary")["entity_id"][0]]):  # many ids; one
        found = pl.from_arrow(batchml.lookup(con, "default_risk", chosen))
        assert isinstance(found, pl.DataFrame)
        expected = view.filter(pl.col("entity_id").is_in(chosen))
        assert found.select(expected.columns).equals(expected)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("shares = [0.5, 0.1]", "increasing"),
        ("shares = [0.5, 1.5]", "shares"),
        ('alias = "champion"', "must not be 'champion'"),
    ],
)
def test_canary_config_errors_name_the_value(
    make_project: Callable[..., batchml.Project], loans_csv: Path, section: str, message: str
) -> None:
    toml = PROJECT_TOML.format(source=loans_csv) + f"\n[models.default_risk.canary]\n{section}\n"
    with pytest.raises(ConfigError, match=message):
        make_project(toml)


@pytest.mark.slow
def test_a_canary_serving_file_answers_the_same_in_duckdb_lts(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    if not (LTS_VENV / ".installed-stamp").exists():
        pytest.skip(f"no DuckDB 1.4 virtualenv at {LTS_VENV}: `make test` builds it")
    project = canary_project(make_project, loans_csv, HEALTHY)
    batchml.publish(project, "default_risk", score_with_shadows(project, "default_risk").served.run_id)
    queries = {"arms": "SELECT variant, model_version, count(*), count(DISTINCT entity_id) FROM predictions "
               "GROUP BY ALL ORDER BY ALL"}  # fmt: skip
    with batchml.connect(project) as con:
        expected = [[str(v) for v in row] for row in con.execute(queries["arms"]).fetchall()]
    path = batchml.database_path(project).resolve()
    lts = lts_answers(LTS_VENV, path, queries)
    assert lts["version"].startswith("1.4.") and len(expected) == 2
    assert [[str(v) for v in row] for row in lts["answers"]["arms"]] == expected
