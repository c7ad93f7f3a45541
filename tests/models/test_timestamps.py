"""Dates as text: ISO read as is, other formats through timestamp_format, and never silently categories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from typer.testing import CliRunner

import batchml
from batchml.cli import app
from batchml.errors import DataError
from batchml.models.timestamps import date_format_of, timestamp_micros

MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

TOML = """
[storage]
root = "store"

[datasets.loans]
source = "{source}"

[models.m]
dataset = "loans"
entity_id = "id"
target = "bad"
{extra}

[models.m.params]
num_iterations = 10
"""


def _loans(path: Path, rows: int = 600) -> Path:
    """Loans issued over 24 months, the month written like 'Mar-2018'; later months default more."""
    rng = np.random.default_rng(5)
    month = rng.integers(0, 24, rows)
    frame = pl.DataFrame(
        {
            "id": [f"L{i:04d}" for i in range(rows)],
            "issue_d": [f"{MONTHS[m % 12]}-{2017 + m // 12}" for m in month],
            "amount": rng.normal(10_000, 3_000, rows),
            "bad": (rng.random(rows) < 0.1 + month / 60).astype(int),
        }
    )
    frame.write_csv(path)
    return path


def _cli(root: Path, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, ["--config", str(root / "batchml.toml"), *args])
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def _project(tmp_path: Path, extra: str) -> Path:
    root = tmp_path / "p"
    root.mkdir(exist_ok=True)
    (root / "batchml.toml").write_text(TOML.format(source=_loans(root / "loans.csv"), extra=extra))
    _cli(root, "datasets", "snapshot", "loans")
    return root


def test_month_names_with_a_time_split_need_and_use_timestamp_format(tmp_path: Path) -> None:
    root = _project(tmp_path, 'timestamp = "issue_d"')
    failed = _cli(root, "train", "m", code=1).stderr
    assert failed.count("\n") == 1 and "Traceback" not in failed
    assert "timestamp column 'issue_d' has '" in failed  # an example value, whichever comes first
    assert "not an ISO date: set timestamp_format" in failed and "(it looks like '%b-%Y')" in failed

    config = root / "batchml.toml"
    with_format = 'timestamp = "issue_d"\ntimestamp_format = "%b-%Y"'
    config.write_text(config.read_text().replace('timestamp = "issue_d"', with_format))
    model = batchml.train(batchml.Project.open(config), "m")
    assert model.card["split"]["method"] == "time" and model.card["split"]["test_rows"] > 0
    assert "issue_d" not in [f.name for f in model.features]


def test_iso_text_needs_no_format_and_a_wrong_format_names_the_value() -> None:
    iso = pa.array(["2018-03-01", "2018-03-02T12:00:00", None])
    assert list(timestamp_micros(iso, "d", None)) == [1519862400000000, 1519992000000000, 0]
    with_offset = pa.array(["2018-03-01T12:00:00+02:00", "2018-03-01T10:00:00Z"])
    assert len(set(timestamp_micros(with_offset, "d", None))) == 1  # the same instant
    wrong = r"has '2018/13/01', which does not match timestamp_format '%Y/%m/%d'"
    with pytest.raises(DataError, match=wrong):
        timestamp_micros(pa.array(["2018/03/01", "2018/13/01"]), "d", "%Y/%m/%d")
    assert date_format_of(pa.array(["Mar-2018", "Dec-2017"])) == "%b-%Y"
    assert date_format_of(pa.array(["2018-03-01", None])) == "iso"
    assert date_format_of(pa.array(["north", "south"])) is None
    assert date_format_of(pa.array([1, 2])) is None


def test_a_date_like_text_feature_is_not_silently_a_category(tmp_path: Path) -> None:
    root = _project(tmp_path, "")  # no timestamp: hash split, issue_d would be a feature
    failed = _cli(root, "train", "m", code=1).stderr
    assert "column 'issue_d' holds dates as text (%b-%Y)" in failed
    assert "timestamp = 'issue_d'" in failed and "exclude = ['issue_d']" in failed
    config = root / "batchml.toml"
    kept_as_category = 'target = "bad"\ncategorical = ["issue_d"]'
    config.write_text(config.read_text().replace('target = "bad"', kept_as_category, 1))
    kept = batchml.train(batchml.Project.open(config), "m")
    assert {f.name: f.kind for f in kept.features}["issue_d"] == "categorical"


def test_timestamp_format_needs_a_timestamp_and_strftime_codes(tmp_path: Path) -> None:
    configs = ['timestamp_format = "%b-%Y"', 'timestamp = "d"\ntimestamp_format = "Mon-YYYY"']
    for i, extra in enumerate(configs):
        root = tmp_path / str(i)
        root.mkdir()
        (root / "batchml.toml").write_text(TOML.format(source="x.csv", extra=extra))
        with pytest.raises(batchml.ConfigError, match="needs a timestamp column and strftime codes"):
            batchml.Project.open(root / "batchml.toml")
