"""LightGBM training: deterministic, metrics per task, name-bound features, clear errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from batchml.config import ModelSpec
from batchml.errors import DataError, SchemaError
from batchml.models.features import encode
from batchml.models.training import fit


def awkward_table(rows: int = 3000, seed: int = 1) -> pa.Table:
    """A small dataset with awkward column names and a string target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    colour = rng.choice(["red", "green", "blue", None], size=rows)
    signal = x + (colour == "red") * 1.5 + rng.normal(scale=0.5, size=rows)
    return pa.table(
        {
            "Customer ID": [f"c{i}" for i in range(rows)],
            'weird "name", [x]': x,
            "Farbe/colour": colour,
            "amount €": rng.gamma(2.0, 10.0, size=rows),
            "outcome": np.where(signal > 0.5, "yes", "no"),
            "value": signal * 10,
            "tier": np.digitize(signal, [-0.5, 0.5, 1.5]).astype(np.int64),
        }
    )


def spec(**overrides: object) -> ModelSpec:
    base: dict[str, object] = {
        "dataset": "awkward",
        "entity_id": "Customer ID",
        "target": "outcome",
        "exclude": ["value", "tier"],
        "params": {"num_iterations": 20},
    }
    return ModelSpec.from_mapping({**base, **overrides})


def test_binary_with_string_target_and_awkward_names() -> None:
    result = fit(awkward_table(), spec())
    assert result.classes == ["no", "yes"]
    assert set(result.metrics) == {"auc", "logloss", "accuracy"}
    assert result.metrics["auc"] is not None and result.metrics["auc"] > 0.8
    assert [f.name for f in result.features] == ['weird "name", [x]', "Farbe/colour", "amount €"]
    colour = result.features[1]
    assert colour.kind == "categorical" and set(colour.categories) == {"red", "green", "blue"}
    assert result.split["method"] == "hash" and result.split["test_rows"] > 0


def test_training_is_deterministic() -> None:
    table = awkward_table()
    first = fit(table, spec()).booster.model_to_string()
    second = fit(table, spec()).booster.model_to_string()
    assert first == second


def test_regression_and_multiclass_metrics() -> None:
    table = awkward_table()
    regression = fit(table, spec(target="value", task="regression", exclude=["outcome", "tier"]))
    assert set(regression.metrics) == {"rmse", "mae", "r2"} and regression.metrics["r2"] > 0.5
    multi = fit(table, spec(target="tier", task="multiclass", exclude=["outcome", "value"]))
    assert set(multi.metrics) == {"logloss", "accuracy"} and multi.classes == ["0", "1", "2", "3"]


def test_time_split_holds_out_the_latest_rows() -> None:
    table = awkward_table().append_column(
        "day", pa.array(np.arange(3000), pa.int64()).cast(pa.timestamp("s"))
    )
    result = fit(table, spec(timestamp="day", split={"test_fraction": 0.25}))
    assert result.split["method"] == "time"
    assert result.split["test_rows"] == 750


def test_encoding_binds_by_name_not_position() -> None:
    table = awkward_table()
    result = fit(table, spec())
    shuffled = table.select(list(reversed(table.column_names)))
    assert np.array_equal(encode(table, result.features), encode(shuffled, result.features), equal_nan=True)


def test_bad_training_inputs_name_the_problem() -> None:
    table = awkward_table()
    with pytest.raises(SchemaError, match="'missing'"):
        fit(table, spec(features=["missing"]))
    with pytest.raises(DataError, match="exactly 2 classes"):
        fit(table, spec(target="tier", exclude=["outcome", "value"]))
    with pytest.raises(DataError, match="no rows"):
        fit(table.slice(0, 0), spec())
    one_class = table.set_column(4, "outcome", pa.array(["yes"] * table.num_rows))
    with pytest.raises(DataError, match="found 1"):
        fit(one_class, spec())
    with pytest.raises(DataError, match="must be numeric"):
        fit(table, spec(target="outcome", task="regression"))
