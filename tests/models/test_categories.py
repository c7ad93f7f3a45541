"""High-cardinality categoricals: the cap is config, reported at training, and never makes a seen category
"unseen": the overflow is one "other" category, flagged `other:<col>`; a truly new value is `unseen:<col>`.
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
from typer.testing import CliRunner

import batchml
from batchml.cli import app
from batchml.config import ModelSpec, parse_config
from batchml.errors import ConfigError
from batchml.models.features import encode
from batchml.models.training import fit
from batchml.testing import generate_loans
from tests.conftest import PROJECT_TOML

TITLES = 4741
ROWS = 8000


def with_job_titles(frame: pl.DataFrame) -> pl.DataFrame:
    """`emp_title` with 4,741 distinct values, all of them in the earliest rows (the time split's train
    side): the first 4,741 rows by date have one title each, later rows repeat the first 50 titles."""
    frame = frame.sort("application_date", "loan_id")
    rank = pl.int_range(pl.len())
    title = pl.when(rank < TITLES).then(rank).otherwise(rank % 50)
    return frame.with_columns(emp_title=pl.format("title {}", title.cast(pl.String).str.zfill(4)))


def with_model_keys(toml: str, keys: str) -> str:
    """`toml` with `keys` added to the [models.default_risk] table."""
    return toml.replace("[models.default_risk.params]", f"{keys}\n[models.default_risk.params]")


@pytest.fixture
def titled(tmp_path: Path, make_project: Callable[..., batchml.Project]) -> Callable[[str], batchml.Project]:
    source = tmp_path / "titled.parquet"
    with_job_titles(generate_loans(ROWS, seed=3)).write_parquet(source)

    def make(extra: str = "") -> batchml.Project:
        project = make_project(with_model_keys(PROJECT_TOML.format(source=source), extra))
        batchml.snapshot_dataset(project, "loans")
        return project

    return make


def scored_flags(project: batchml.Project, run: batchml.PredictionRun) -> list[list[str]]:
    table = pa.concat_tables(pq.read_table(Path(project.storage.root, f.path)) for f in run.files)
    return table.column("flags").to_pylist()


def test_no_category_seen_in_training_is_flagged_unseen(titled: Callable[[str], batchml.Project]) -> None:
    project = titled("")
    model = batchml.train(project, "default_risk")
    batchml.promote(project, "default_risk", model.version, reason="test")
    run = batchml.score(project, "default_risk")  # the training data itself
    assert run.summary["unseen"] == {}
    flags = scored_flags(project, run)
    assert not any("unseen:emp_title" in f for f in flags)
    title = next(f for f in model.features if f.name == "emp_title")
    assert len(title.categories) + len(title.other) == TITLES  # every training title is known
    others = sum("other:emp_title" in f for f in flags)
    assert others == run.summary["other"]["emp_title"] > 0

    [capped] = model.card["capped_categories"]
    assert capped["column"] == "emp_title" and capped["distinct"] == TITLES
    assert (capped["kept"], capped["other"]) == (1000, TITLES - 1000)
    assert 0 < capped["other_rows"] < model.card["split"]["train_rows"]


def test_a_truly_new_category_is_still_unseen(
    titled: Callable[[str], batchml.Project], tmp_path: Path
) -> None:
    project = titled("")
    model = batchml.train(project, "default_risk")
    batchml.promote(project, "default_risk", model.version, reason="test")
    variant = tmp_path / "new-titles.parquet"
    frame = with_job_titles(generate_loans(ROWS, seed=3))
    new = pl.int_range(pl.len()) < 3
    frame.with_columns(emp_title=pl.when(new).then(pl.lit("astronaut")).otherwise("emp_title")).write_parquet(
        variant
    )
    ref = batchml.snapshot_dataset(project, "loans", str(variant)).ref
    run = batchml.score(project, "default_risk", dataset=ref)
    flags = scored_flags(project, run)
    assert [i for i, f in enumerate(flags) if "unseen:emp_title" in f] == [0, 1, 2]
    assert run.summary["unseen_examples"] == {"emp_title": ["astronaut"]}


def test_the_cap_is_config_and_train_reports_what_it_bucketed(
    titled: Callable[[str], batchml.Project],
) -> None:
    project = titled("")
    config = str(project.base_dir / "batchml.toml")
    out = CliRunner().invoke(app, ["--config", config, "train", "default_risk"])
    assert out.exit_code == 0, out.stdout
    text = " ".join(out.stdout.split())
    assert "emp_title: 4,741 distinct values, over max_categories 1000" in text
    assert "'other'" in text and "other:emp_title" in text and "exclude" in text
    shown = CliRunner().invoke(app, ["--config", config, "models", "show", "default_risk", "--json"])
    assert json.loads(shown.stdout)["card"]["capped_categories"][0]["column"] == "emp_title"
    assert "max_categories 1000" in " ".join(
        CliRunner().invoke(app, ["--config", config, "models", "show", "default_risk"]).stdout.split()
    )

    raised = titled("max_categories = 5000")
    model = batchml.train(raised, "default_risk")
    title = next(f for f in model.features if f.name == "emp_title")
    assert (len(title.categories), title.other) == (TITLES, ())
    assert model.card["capped_categories"] == []


def test_bad_cap_config_names_the_value(loans_csv: Path) -> None:
    toml = with_model_keys(PROJECT_TOML.format(source=loans_csv), "max_categories = 0")
    with pytest.raises(
        ConfigError, match=r"models\.default_risk\.max_categories: must be an integer, at least 1 \(got 0\)"
    ):
        parse_config(tomllib.loads(toml))


def test_overflow_is_one_category_in_training_and_scoring() -> None:
    rng = np.random.default_rng(0)
    values = [f"v{i}" for i in rng.integers(0, 40, 3000)]
    table = pa.table(
        {"id": [str(i) for i in range(3000)], "c": values, "y": rng.integers(0, 2, 3000).astype(np.int64)}
    )
    spec = ModelSpec.from_mapping(
        {
            "dataset": "d",
            "entity_id": "id",
            "target": "y",
            "max_categories": 10,
            "params": {"num_iterations": 5},
        }
    )
    result = fit(table, spec)
    [feature] = result.features
    assert len(feature.categories) == 10 and len(feature.other) == 30
    codes = encode(
        pa.table({"c": [feature.categories[0], feature.other[0], feature.other[-1], "new", None]}), [feature]
    )
    assert codes[:3, 0].tolist() == [0.0, 10.0, 10.0]  # every overflow value is code 10, "other"
    assert np.isnan(codes[3:, 0]).all()  # a new value and a null are missing
