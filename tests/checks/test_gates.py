"""Promotion gates: each gate passes on one config and blocks on another; promote refuses failed versions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import batchml
from batchml.cli import app
from batchml.models.promotion import describe
from batchml.models.registry import RegistryReader
from batchml.testing import generate_loans
from tests.conftest import PROJECT_TOML, SAMPLE_ROWS

MakeProject = Callable[..., batchml.Project]
MODEL = "default_risk"
#: The loans features in dataset order (for LightGBM's positional monotone_constraints).
LOAN_FEATURES = [
    "amount",
    "annual_income",
    "age",
    "credit_score",
    "debt_to_income",
    "open_accounts",
    "months_employed",
    "region",
    "purpose",
    "employment_type",
]


@pytest.fixture(scope="module")
def extra_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The loans plus `noise` (irrelevant), `coin` (a random group) and `band` (a group that tracks risk)."""
    rng = np.random.default_rng(1)
    frame = generate_loans(SAMPLE_ROWS, seed=7).with_columns(
        noise=pl.Series(rng.normal(size=SAMPLE_ROWS)),
        coin=pl.Series(rng.choice(["heads", "tails"], SAMPLE_ROWS)),
        band=pl.when(pl.col("credit_score") < 620).then(pl.lit("low")).otherwise(pl.lit("high")),
    )
    path = tmp_path_factory.mktemp("extra") / "loans.csv"
    frame.write_csv(path)
    return path


def configure(
    make_project: MakeProject,
    source: Path,
    gates: str = "",
    *,
    params: str = "",
    model: str = "",
    regression: bool = False,
) -> batchml.Project:
    """The test project (same folder and store on every call) with `gates` as the body of its gates table;
    `model` adds keys to the model table, `params` to its LightGBM params."""
    text = PROJECT_TOML.format(source=source).replace('task = "binary"\n', 'task = "binary"\n' + model)
    if regression:
        text = text.replace('target = "defaulted"\ntask = "binary"', 'target = "amount"\ntask = "regression"')
    return make_project(text + params + f"\n[models.{MODEL}.gates]\n" + gates)


def train(project: batchml.Project, **params: Any) -> batchml.ModelVersion:
    """Snapshot the configured source (a no-op after the first time) and train the model."""
    batchml.snapshot_dataset(project, "loans")
    return batchml.train(project, MODEL, params=params or None)


def checks(model: batchml.ModelVersion, gate: str) -> list[dict[str, Any]]:
    return [c for c in model.card["gates"]["checks"] if c["gate"] == gate]


def aliases(project: batchml.Project) -> dict[str, int]:
    return RegistryReader(project.storage).aliases(MODEL)


def cli(project: batchml.Project, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(
        app, ["--config", str(project.base_dir / "batchml.toml"), *args], env={"BATCHML_CONFIG": None}
    )
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


# -- no gates ----------------------------------------------------------------------------------------------


def test_without_gates_the_report_is_empty_and_notebook_models_are_promotable(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    assert champion.card["gates"] == {"passed": True, "checks": []}
    x = np.random.default_rng(0).normal(size=(200, 3))
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_iterations": 3}, lgb.Dataset(x, x[:, 0] > 0)
    )
    notebook = batchml.register_model(project, "notebook", booster, entity_id="loan_id")
    assert "gates" not in notebook.card
    assert batchml.promote(project, "notebook", notebook.version)["to_version"] == notebook.version


# -- each gate passes on one config and blocks on another ------------------------------------------------


def test_metric_gate(make_project: MakeProject, loans_csv: Path) -> None:
    project = configure(make_project, loans_csv, "metrics = {auc = {min = 0.6}, logloss = {max = 0.6}}")
    good = train(project)
    assert good.card["gates"]["passed"]
    assert [(c["name"], c["threshold"], c["passed"]) for c in checks(good, "metrics")] == [
        ("auc min", 0.6, True),
        ("logloss max", 0.6, True),
    ]
    assert checks(good, "metrics")[0]["value"] == good.card["metrics"]["auc"]

    project = configure(make_project, loans_csv, "metrics = {auc = {min = 0.99}}")
    bad = train(project)
    [check] = checks(bad, "metrics")
    assert not bad.card["gates"]["passed"] and check["passed"] is False and check["value"] < 0.99
    with pytest.raises(batchml.PromotionError, match=r"default_risk@2 failed 1 gate.*auc min = 0\.\d+ \(thr"):
        batchml.promote(project, MODEL, bad.version)
    assert aliases(project) == {}
    assert batchml.promote(project, MODEL, good.version)["to_version"] == good.version


def test_slice_gate_reports_small_slices_and_blocks_on_a_gap(
    make_project: MakeProject, loans_csv: Path
) -> None:
    project = configure(make_project, loans_csv, 'slices = {columns = ["region"], min_metric = 0.55}')
    good = train(project)
    by_name = {c["name"]: c for c in checks(good, "slices")}
    assert set(by_name) == {
        f"region={r} auc" for r in ("central", "east", "islands", "north", "south", "west")
    }
    islands = by_name["region=islands auc"]
    assert islands["passed"] is None and islands["detail"].startswith("skipped: too small (")
    assert "< min_rows 50" in islands["detail"]
    assert good.card["gates"]["passed"]  # a skipped slice is reported, and does not fail the gate
    assert all(c["passed"] for name, c in by_name.items() if name != "region=islands auc")

    project = configure(
        make_project, loans_csv, "slices = {bins = {credit_score = [600, 700]}, max_gap = 0.1}"
    )
    bad = train(project)
    by_name = {c["name"]: c for c in checks(bad, "slices")}
    assert set(by_name) == {"credit_score<600 gap", "credit_score in [600, 700) gap", "credit_score>=700 gap"}
    middle = by_name["credit_score in [600, 700) gap"]
    assert middle["passed"] is False and middle["value"] > 0.1 and "vs overall" in middle["detail"]
    assert not bad.card["gates"]["passed"]


def test_champion_gate_compares_on_the_same_rows_with_the_champions_own_features(
    make_project: MakeProject, loans_csv: Path
) -> None:
    gate = 'champion = {metric = "auc", margin = 0.01}'
    project = configure(make_project, loans_csv, gate, model='exclude = ["open_accounts"]\n')
    first = train(project)
    [check] = checks(first, "champion")
    assert check["passed"] is True and check["detail"] == "no champion to compare"
    batchml.promote(project, MODEL, first.version)

    project = configure(make_project, loans_csv, gate)  # the challenger also reads open_accounts
    challenger = train(project, num_leaves=7)
    [check] = checks(challenger, "champion")
    assert check["passed"] is True and "champion default_risk@1" in check["detail"]
    assert check["threshold"] == pytest.approx(first.card["metrics"]["auc"] - 0.01)

    project = configure(make_project, loans_csv, 'champion = {metric = "logloss", margin = 0.0}')
    worse = train(project, num_iterations=2)  # logloss: lower is better
    [check] = checks(worse, "champion")
    assert check["threshold"] == pytest.approx(first.card["metrics"]["logloss"])
    assert check["passed"] is False and check["value"] > check["threshold"]


def test_invariance_gate(make_project: MakeProject, extra_csv: Path) -> None:
    model = 'exclude = ["coin", "band"]\n'
    project = configure(
        make_project, extra_csv, 'invariance = {features = ["noise"], epsilon = 0.02}', model=model
    )
    good = train(project)
    [noise] = checks(good, "invariance")
    assert noise["passed"] is True and 0 < noise["value"] < 0.02

    gate = 'invariance = {features = ["noise", "credit_score"], epsilon = 0.02}'
    bad = train(configure(make_project, extra_csv, gate, model=model))
    assert [c["passed"] for c in checks(bad, "invariance")] == [True, False]
    assert checks(bad, "invariance")[1]["value"] > 0.05 and not bad.card["gates"]["passed"]


def test_direction_gate(make_project: MakeProject, loans_csv: Path) -> None:
    gate = 'direction = {decreasing = ["credit_score"]}'
    constraints = [-1 if f == "credit_score" else 0 for f in LOAN_FEATURES]
    good = train(configure(make_project, loans_csv, gate, params=f"monotone_constraints = {constraints}\n"))
    [check] = checks(good, "direction")
    assert (check["name"], check["value"], check["passed"]) == ("credit_score decreasing", 0.0, True)

    bad = train(configure(make_project, loans_csv, gate.replace("}", ", max_violation_share = 0.05}")))
    [check] = checks(bad, "direction")
    assert check["passed"] is False and check["value"] > 0.05 and "move the wrong way" in check["detail"]


def test_fairness_gate(make_project: MakeProject, extra_csv: Path) -> None:
    model = 'exclude = ["coin", "band"]\n'  # sensitive columns are not features, yet the gate reads them
    gate = 'fairness = {column = "coin", max_positive_rate_gap = 0.05, max_tpr_gap = 0.2}'
    good = train(configure(make_project, extra_csv, gate, model=model))
    assert [(c["name"], c["passed"]) for c in checks(good, "fairness")] == [
        ("coin positive rate gap", True),
        ("coin tpr gap", True),
    ]
    assert "heads" in checks(good, "fairness")[0]["detail"]

    gate = 'fairness = {column = "band", max_positive_rate_gap = 0.05}'
    bad = train(configure(make_project, extra_csv, gate, model=model))
    rate, tpr = checks(bad, "fairness")
    assert rate["passed"] is False and rate["value"] > 0.05 and "low" in rate["detail"]
    assert tpr["threshold"] is None and tpr["passed"] is True  # reported without a limit
    assert not bad.card["gates"]["passed"]


def test_flip_rate_gate(make_project: MakeProject, loans_csv: Path, champion: batchml.ModelVersion) -> None:
    project = configure(make_project, loans_csv, "flip_rate = {max = 0.02}")
    same = train(project)  # the champion's params: the same decisions
    [check] = checks(same, "flip_rate")
    assert (check["value"], check["passed"]) == (0.0, True)
    assert "champion default_risk@1" in check["detail"]

    shallow = train(project, num_iterations=3)  # barely moves off the base rate: flags nobody
    [check] = checks(shallow, "flip_rate")
    assert check["passed"] is False and check["value"] > 0.02


def test_flip_rate_without_a_champion_passes(make_project: MakeProject, loans_csv: Path) -> None:
    model = train(configure(make_project, loans_csv, "flip_rate = {max = 0.0}"))
    assert (
        checks(model, "flip_rate")[0]["detail"] == "no champion to compare" and model.card["gates"]["passed"]
    )


# -- bad configs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gate", "extra", "message"),
    [
        (
            "metrics = {f1 = {min = 0.5}}",
            {},
            "metric 'f1' is not computed for a binary model; use one of auc, ",
        ),
        ("metrics = {auc = {}}", {}, r"metrics\.auc: set min and/or max"),
        ('slices = {columns = ["regoin"]}', {}, "column 'regoin' is not in the dataset"),
        ('champion = {metric = "rmse"}', {}, "metric 'rmse' is not computed for a binary model"),
        ('invariance = {features = ["loan_id"]}', {}, "'loan_id' is not a feature of the model"),
        ('direction = {increasing = ["region"]}', {}, "'region' is categorical"),
        (
            'fairness = {column = "region"}',
            {"regression": True},
            "fairness: needs a binary model, this one is 'regr",
        ),
        ('fairness = {column = "gender"}', {}, "column 'gender' is not in the dataset"),
        ("flip_rate = {max = 0.1}", {"regression": True}, "regression model has no decision to flip"),
    ],
)
def test_bad_gate_configs_fail_before_training(
    make_project: MakeProject, loans_csv: Path, gate: str, extra: dict[str, bool], message: str
) -> None:
    project = configure(make_project, loans_csv, gate, **extra)
    batchml.snapshot_dataset(project, "loans")
    with pytest.raises(batchml.ConfigError, match=message):
        batchml.train(project, MODEL)
    assert RegistryReader(project.storage).list_models() == []


def test_unknown_gate_is_a_config_error(make_project: MakeProject, loans_csv: Path) -> None:
    known = r"gates\.metric: unknown key; allowed keys: auto_promote, metrics,"
    with pytest.raises(batchml.ConfigError, match=known):
        configure(make_project, loans_csv, "metric = {auc = {min = 0.5}}")


# -- promotion, CLI and SQL ---------------------------------------------------------------------------------


def test_refused_then_forced_promotion_is_recorded(
    make_project: MakeProject, loans_csv: Path, champion: batchml.ModelVersion
) -> None:
    project = configure(make_project, loans_csv, "metrics = {auc = {min = 0.99}}")
    trained = cli(project, "train", MODEL).stdout
    assert "gates: FAILED (1 of 1 checks)" in trained and "auc min" in trained

    refused = cli(project, "models", "promote", MODEL, "2", code=1).stderr
    assert "default_risk@2 failed 1 gate check(s), so it cannot become 'champion'" in refused
    assert "metrics: auc min = 0." in refused
    hint = "To promote anyway: batchml models promote default_risk 2 --alias champion --force --reason"
    assert hint in refused
    no_reason = cli(project, "models", "promote", MODEL, "2", "--force", code=1).stderr
    assert "needs a reason" in no_reason
    assert "=True" not in refused + no_reason and "reason=" not in refused + no_reason  # no Python hints
    assert aliases(project) == {"champion": 1} and len(RegistryReader(project.storage).events(MODEL)) == 1

    why = "reviewed: the 0.99 bar is aspirational"
    event = json.loads(
        cli(project, "models", "promote", MODEL, "2", "--force", "--reason", why, "--json").stdout
    )
    assert (event["forced"], event["reason"], event["to_version"]) == (True, why, 2)
    auc = RegistryReader(project.storage).get(MODEL, 2).card["metrics"]["auc"]
    assert event["overridden"] == [f"metrics: auc min = {auc:.4g} (threshold 0.99)"]
    assert aliases(project) == {"champion": 2}

    shown = json.loads(cli(project, "models", "show", f"{MODEL}@2", "--json").stdout)
    assert shown["gates"]["passed"] is False and shown["card"]["gates"] == shown["gates"]
    text = cli(project, "models", "show", f"{MODEL}@2").stdout
    assert "FAIL" in text and "auc min" in text

    batchml.rollback_model(project, MODEL, reason="back")  # rollback ignores gates
    assert aliases(project) == {"champion": 1}
    con = batchml.connect(project)
    try:
        rows = con.execute("SELECT to_version, forced, reason FROM alias_events ORDER BY seq").fetchall()
    finally:
        con.close()
    assert rows == [(1, False, "fixture"), (2, True, why), (1, False, "back")]


def test_train_promote_moves_the_alias_only_when_every_gate_passed(
    make_project: MakeProject, loans_csv: Path
) -> None:
    project = configure(make_project, loans_csv, "metrics = {auc = {min = 0.99}}")
    cli(project, "datasets", "snapshot", "loans")
    # No champion yet: scoring says how to get one instead of only "available: none".
    missing = cli(project, "score", MODEL, code=1).stderr
    assert "alias of model 'default_risk' 'champion' not found; available: none" in missing
    assert "Train a version first: batchml train default_risk --promote" in missing

    refused = cli(project, "train", MODEL, "--promote", code=1)
    assert "registered new version default_risk@1" in refused.stdout and "gates: FAILED" in refused.stdout
    assert refused.stderr.count("\n") == 1 and "cannot become 'champion'" in refused.stderr
    assert "batchml models promote default_risk 1 --alias champion --force --reason" in refused.stderr
    assert aliases(project) == {}
    missing = cli(project, "score", MODEL, code=1).stderr
    assert "Point it at a version first: batchml models promote default_risk VERSION" in missing
    assert "(versions: 1)" in missing

    project = configure(make_project, loans_csv, "metrics = {auc = {min = 0.6}}")
    promoted = json.loads(cli(project, "train", MODEL, "--promote", "--json").stdout)
    assert promoted["promotion"] == {"alias": "champion", "from": None, "to": 2}
    assert aliases(project) == {"champion": 2}
    again = cli(project, "train", MODEL, "--promote").stdout  # the same version: nothing moves
    assert "reused existing version default_risk@2" in again and "alias champion: already at v2" in again
    assert len(RegistryReader(project.storage).events(MODEL)) == 1


def test_gate_results_in_sql(
    make_project: MakeProject, loans_csv: Path, champion: batchml.ModelVersion
) -> None:
    project = configure(make_project, loans_csv, 'slices = {columns = ["region"], min_metric = 0.55}')
    model = train(project)
    batchml.rebuild_catalog(project)
    con = batchml.connect(project)
    try:
        rows = con.execute(
            "SELECT version, gate, name, value, threshold, passed, detail FROM gate_results ORDER BY name"
        ).fetchall()
    finally:
        con.close()
    assert {r[0] for r in rows} == {model.version}  # the champion had no gates: no rows
    assert [r[1:6] for r in rows] == [
        ("slices", c["name"], c["value"], c["threshold"], c["passed"])
        for c in sorted(checks(model, "slices"), key=lambda c: c["name"])
    ]
    assert ("region=islands auc", None) in [(r[2], r[5]) for r in rows]


def test_a_refused_check_shows_its_threshold_rounded_like_its_value() -> None:
    # A champion gate's threshold is derived (the champion's metric minus a tolerance) and ran to 16 digits.
    check = {"gate": "champion", "name": "auc min", "value": 0.79123456, "threshold": 0.8002715604718132}
    assert describe(check) == "champion: auc min = 0.7912 (threshold 0.8003)"
    assert describe({**check, "threshold": 1}) == "champion: auc min = 0.7912 (threshold 1)"
