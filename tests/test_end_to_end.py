"""The whole path on data batchml has never seen: awkward names, integer ids, a regression target."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

import batchml

AWKWARD_TOML = """
[storage]
root = "store"

[models.house-prices]
dataset = "houses"
entity_id = "Parcel #"
timestamp = "sold on"
target = "Sale Price (€)"
task = "regression"
exclude = ["notes; free text"]
categorical = ["zip code"]

[models.house-prices.params]
num_iterations = 25
"""


def write_houses(path: Path, rows: int = 3000, seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    area = rng.gamma(4.0, 30.0, rows)
    quarter = rng.choice(['Nörth "old"', "south, new", "east/west"], rows)
    zip_code = rng.choice([1010, 2020, 3030, 4040], rows)
    price = area * 2000 + (quarter == "south, new") * 50_000 + (zip_code == 4040) * 30_000
    pl.DataFrame(
        {
            "Parcel #": np.arange(10_000, 10_000 + rows),
            "sold on": pl.date_range(pl.date(2024, 1, 1), pl.date(2025, 12, 31), eager=True).sample(
                rows, with_replacement=True, seed=seed
            ),
            "living area (m²)": np.where(rng.random(rows) < 0.05, np.nan, area),
            "quartier [district]": quarter,
            "zip code": zip_code,
            "notes; free text": ["n/a"] * rows,
            "Sale Price (€)": price + rng.normal(0, 10_000, rows),
        }
    ).write_csv(path)


def test_any_tabular_dataset_works_with_only_a_config(
    make_project: Callable[..., batchml.Project], tmp_path: Path
) -> None:
    source = tmp_path / "houses.csv"
    write_houses(source)
    project = make_project(AWKWARD_TOML)
    version = batchml.snapshot_dataset(project, "houses", f"file://{source}")
    model = batchml.train(project, "house-prices")
    assert model.card["metrics"]["r2"] > 0.5
    kinds = {f.name: f.kind for f in model.features}
    assert kinds == {
        "living area (m²)": "numeric",
        "quartier [district]": "categorical",
        "zip code": "categorical",
    }
    batchml.promote(project, "house-prices", model.version)
    run = batchml.score(project, "house-prices")
    batchml.publish(project, "house-prices", run.run_id)
    con = batchml.connect(project)
    assert run.rows == version.rows == 3000
    lookup = "SELECT prediction, predicted_class FROM predictions WHERE model = ? AND entity_id = ?"
    row = con.execute(lookup, ["house-prices", "10042"]).fetchone()
    assert row is not None and row[0] > 0 and row[1] is None
