"""Which class `prediction` is the probability of: `positive_class` in the config, else a documented default
(the second class in sorted order), recorded in the card and printed by `train` and `models show`.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

import batchml
from batchml.cli import app
from batchml.config import parse_config
from batchml.errors import ConfigError, DataError
from batchml.models.registry import ModelVersion, RegistryReader
from batchml.models.training import fit
from batchml.monitoring.performance import encode_labels
from tests.conftest import PROJECT_TOML
from tests.models.test_training import awkward_table, spec

STATUS = PROJECT_TOML.replace('target = "defaulted"', 'target = "Status"').replace(
    "[models.default_risk.params]", 'exclude = ["defaulted"]\n{extra}\n[models.default_risk.params]'
)


def status_toml(source: Path, extra: str = "") -> str:
    return STATUS.replace("{extra}", extra).format(source=source)


@pytest.fixture
def good_bad(tmp_path: Path, loans_csv: Path) -> Path:
    """The loans with a text target: Status "bad" for a default, "good" otherwise."""
    path = tmp_path / "status.parquet"
    frame = pl.read_csv(loans_csv, try_parse_dates=True)
    status = pl.when(pl.col("defaulted") == 1).then(pl.lit("bad")).otherwise(pl.lit("good"))
    frame.with_columns(Status=status).write_parquet(path)
    return path


def cli(project: batchml.Project, *args: str) -> str:
    out = CliRunner().invoke(app, ["--config", str(project.base_dir / "batchml.toml"), *args])
    assert out.exit_code == 0, (out.stdout, out.stderr)
    return out.stdout


def test_positive_class_makes_prediction_the_probability_of_that_class() -> None:
    table = awkward_table()  # outcome is "no" / "yes"
    default = fit(table, spec())
    chosen = fit(table, spec(positive_class="no"))
    assert (default.classes, chosen.classes) == (["no", "yes"], ["yes", "no"])
    assert default.holdout is not None and chosen.holdout is not None
    is_no = np.array([v == "no" for v in chosen.holdout.table.column("outcome").to_pylist()])
    assert np.array_equal(chosen.holdout.y == 1, is_no)
    raw = chosen.holdout.raw
    assert raw[is_no].mean() > 0.5 > raw[~is_no].mean()  # P(no): high where the outcome is no
    assert chosen.metrics["auc"] == pytest.approx(roc_auc_score(is_no, raw))
    assert chosen.metrics["auc"] == pytest.approx(default.metrics["auc"], abs=0.01)


def test_good_bad_with_positive_class_bad_scores_p_bad(
    good_bad: Path, make_project: Callable[..., batchml.Project]
) -> None:
    project = make_project(status_toml(good_bad, 'positive_class = "bad"'))
    batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    assert (model.card["classes"], model.card["positive_class"]) == (["good", "bad"], "bad")
    batchml.promote(project, "default_risk", model.version, reason="test")
    run = batchml.score(project, "default_risk")
    table = pa.concat_tables(pq.read_table(Path(project.storage.root, f.path)) for f in run.files)
    source = pl.read_parquet(good_bad)
    status = dict(zip(source["loan_id"], source["Status"], strict=True))
    bad = np.array([status[i] == "bad" for i in table.column("entity_id").to_pylist()])
    prediction = table.column("prediction").to_numpy()
    assert prediction[bad].mean() > 2 * prediction[~bad].mean()  # P(bad), the rarer class
    predicted = np.array(table.column("predicted_class").to_pylist())
    assert np.array_equal(predicted == "bad", prediction >= 0.5)
    assert roc_auc_score(bad, prediction) > 0.7
    labels = pl.DataFrame({"label": ["bad", "good"]})
    assert encode_labels(labels, model).tolist() == [1.0, 0.0]  # delayed labels are encoded the same way

    text = " ".join(cli(project, "train", "default_risk").split())
    assert "classes: good, bad; prediction = P(Status = bad) (positive_class in the config)" in text
    shown = json.loads(cli(project, "models", "show", "default_risk", "--json"))
    assert (shown["classes"], shown["positive_class"]) == (["good", "bad"], "bad")
    assert shown["prediction"] == "P(Status = bad)"
    assert "prediction = P(Status = bad)" in " ".join(cli(project, "models", "show", "default_risk").split())


def test_without_positive_class_the_default_rule_is_printed(
    good_bad: Path, make_project: Callable[..., batchml.Project]
) -> None:
    project = make_project(status_toml(good_bad))
    batchml.snapshot_dataset(project, "loans")
    trained = json.loads(cli(project, "train", "default_risk", "--json"))
    assert (trained["classes"], trained["positive_class"]) == (["bad", "good"], "good")
    assert trained["prediction"] == "P(Status = good)"
    text = " ".join(cli(project, "models", "show", "default_risk").split())
    assert "classes: bad, good; prediction = P(Status = good)" in text
    assert "default: the second class in sorted order; set positive_class to choose" in text


def test_positive_class_not_among_the_labels_fails_naming_them(
    good_bad: Path, make_project: Callable[..., batchml.Project]
) -> None:
    project = make_project(status_toml(good_bad, 'positive_class = "ugly"'))
    batchml.snapshot_dataset(project, "loans")
    expected = r"positive_class 'ugly' is not a label of target 'Status'.*'bad', 'good'"
    with pytest.raises(DataError, match=expected):
        batchml.train(project, "default_risk")
    assert RegistryReader(project.storage).list_models() == []


def test_positive_class_of_a_boolean_or_integer_target() -> None:
    every_third = np.arange(3000) % 3 == 0
    table = awkward_table().append_column("flag", pa.array(every_third))
    table = table.append_column("n", pa.array(every_third.astype(np.int64)))
    drop = ["outcome", "value", "tier"]
    assert fit(table, spec(target="flag", exclude=[*drop, "n"])).classes == ["0", "1"]  # default: true
    assert fit(table, spec(target="flag", exclude=[*drop, "n"], positive_class=False)).classes == ["1", "0"]
    assert fit(table, spec(target="n", exclude=[*drop, "flag"], positive_class=0)).classes == ["1", "0"]


def test_positive_class_is_for_binary_models_only(loans_csv: Path) -> None:
    multiclass = 'task = "multiclass"\npositive_class = "1"'
    toml = PROJECT_TOML.format(source=loans_csv).replace('task = "binary"', multiclass)
    with pytest.raises(ConfigError, match=r"positive_class applies to binary models only.*multiclass"):
        parse_config(tomllib.loads(toml))


def test_old_cards_without_positive_class_read_the_default() -> None:
    model = ModelVersion("m", 1, {"task": "binary", "classes": ["0", "1"], "target": "defaulted"})
    assert (model.positive_class, model.prediction_meaning) == ("1", "P(defaulted = 1)")
