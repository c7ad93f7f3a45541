"""Data profiles in the model card: numbers, categories and the drift reference, strict JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

import batchml
from batchml.models.features import Feature
from batchml.models.profiles import (
    QUANTILES,
    categorical_profile,
    feature_profile,
    numeric_profile,
    numeric_ranges,
)


def test_numeric_profile_of_a_known_column() -> None:
    values = np.array([*range(1, 101), np.nan, np.nan], dtype=np.float64)  # 1..100 and two nulls
    profile = numeric_profile(values)
    assert (profile["count"], profile["nulls"]) == (102, 2)
    assert profile["null_rate"] == pytest.approx(2 / 102)
    assert (profile["min"], profile["max"]) == (1.0, 100.0)
    assert profile["mean"] == pytest.approx(50.5)
    assert profile["std"] == pytest.approx(np.std(np.arange(1, 101)))
    assert list(profile["quantiles"]) == list(QUANTILES)
    assert profile["quantiles"]["p50"] == pytest.approx(50.5)
    assert profile["quantiles"]["p1"] == pytest.approx(1.99)
    hist = profile["histogram"]
    assert hist["edges"][0] == 1.0 and hist["edges"][-1] == 100.0
    assert len(hist["edges"]) == len(hist["counts"]) + 1 == 11
    assert hist["counts"] == [10] * 10  # deciles of 1..100: ten equal bins, the last closed on the right
    assert sum(hist["shares"]) == pytest.approx(1.0)


def test_constant_discrete_and_empty_columns_stay_valid_json() -> None:
    constant = numeric_profile(np.full(5, 3.0))
    assert constant["histogram"] == {"edges": [3.0, 3.0], "counts": [5], "shares": [1.0]}
    discrete = numeric_profile(np.array([0.0] * 80 + [1.0] * 20))
    edges = discrete["histogram"]["edges"]
    assert edges == sorted(set(edges)) and sum(discrete["histogram"]["counts"]) == 100
    empty = numeric_profile(np.array([np.nan, np.inf]))
    assert empty["min"] is None and empty["nulls"] == 1 and "histogram" not in empty
    json.dumps([constant, discrete, empty], allow_nan=False)


def test_categorical_profile_shares_most_frequent_first() -> None:
    column = pa.chunked_array([["b", "a", None], ["b", "c", "b", None, "a"]])
    profile = categorical_profile(column)
    assert (profile["count"], profile["nulls"], profile["distinct"]) == (8, 2, 3)
    assert profile["null_rate"] == 0.25
    assert list(profile["categories"].items()) == [("b", 0.5), ("a", 2 / 6), ("c", 1 / 6)]
    assert profile["other_share"] == 0.0


def test_feature_profile_uses_the_models_encoding() -> None:
    table = pa.table(
        {
            "amount": pa.array([10, 20, None, 40], pa.int64()),
            "flag": pa.array([True, False, True, None]),
            "region": pa.array(["n", "s", "n", "e"]),
        }
    )
    features = [
        Feature("amount", "numeric", "int64"),
        Feature("flag", "numeric", "bool"),
        Feature("region", "categorical", "string", ("n", "s")),
    ]
    profile = feature_profile(table, features)
    assert profile["amount"]["dtype"] == "int64" and profile["amount"]["kind"] == "numeric"
    assert (profile["amount"]["min"], profile["amount"]["max"], profile["amount"]["nulls"]) == (10.0, 40.0, 1)
    assert profile["flag"]["mean"] == pytest.approx(2 / 3)
    assert profile["region"]["categories"] == {"n": 0.5, "e": 0.25, "s": 0.25}
    assert numeric_ranges({"features": profile}) == {"amount": (10.0, 40.0), "flag": (0.0, 1.0)}


def test_model_card_holds_the_training_profile(champion: batchml.ModelVersion) -> None:
    card = champion.card
    profile = card["profile"]
    assert profile["rows"] == card["split"]["train_rows"] and profile["split"] == "train"
    assert set(profile["features"]) == {f.name for f in champion.features}
    amount = profile["features"]["amount"]
    assert amount["kind"] == "numeric" and amount["count"] == profile["rows"]
    assert amount["min"] <= amount["quantiles"]["p50"] <= amount["max"]
    assert 5 <= len(amount["histogram"]["shares"]) <= 20
    income = profile["features"]["annual_income"]
    assert 0.0 < income["null_rate"] < 0.1  # the sample data has ~3% missing incomes
    region = profile["features"]["region"]
    assert region["kind"] == "categorical" and math.isclose(sum(region["categories"].values()), 1.0)
    assert set(region["categories"]) == {"north", "south", "east", "west", "central", "islands"}
    assert "predictions" not in profile  # predictions of the held-out rows alone are no drift reference

    reference = profile["reference"]  # the drift reference: every row of the dataset version, scored
    rows = card["split"]["train_rows"] + card["split"]["test_rows"]
    assert (reference["split"], reference["dataset_version"], reference["rows"]) == (
        "all", card["dataset_version"], rows
    )  # fmt: skip
    assert set(reference["features"]) == set(profile["features"])
    assert sum(reference["features"]["amount"]["histogram"]["counts"]) == rows
    predictions = reference["predictions"]
    assert predictions["count"] == sum(predictions["histogram"]["counts"]) == rows
    assert 0.0 <= predictions["min"] <= predictions["mean"] <= predictions["max"] <= 1.0
    json.dumps(profile, allow_nan=False)
