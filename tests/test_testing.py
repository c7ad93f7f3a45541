"""Tests for the seeded loan generator in batchml.testing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from batchml import testing
from batchml.testing import generate_loans, write_loans


@pytest.fixture(scope="module")
def loans() -> pl.DataFrame:
    """A 60k-row sample, large enough for stable rates."""
    return generate_loans(60_000, seed=11)


def test_generate_is_deterministic_and_seed_sensitive() -> None:
    assert_frame_equal(generate_loans(2_000, seed=3), generate_loans(2_000, seed=3))
    assert not generate_loans(2_000, seed=3).equals(generate_loans(2_000, seed=4))


def test_schema_ids_and_dates(loans: pl.DataFrame) -> None:
    assert loans.schema["application_date"] == pl.Date
    assert loans.schema["defaulted"] == pl.Int8
    assert loans["loan_id"][0] == "L000000001"
    assert loans["loan_id"].is_unique().all()
    assert loans["application_date"].min() == dt.date(2025, 1, 1)
    assert loans["application_date"].max() == dt.date(2025, 12, 31)
    assert loans["credit_score"].is_between(300, 850).all()
    assert loans["region"].n_unique() == 6 and loans["purpose"].n_unique() == 7
    shifted = generate_loans(3, seed=11, start=dt.date(2024, 3, 15), months=1, offset=41)
    assert shifted["loan_id"].to_list() == ["L000000042", "L000000043", "L000000044"]
    assert shifted["application_date"].is_between(dt.date(2024, 3, 15), dt.date(2024, 4, 14)).all()


def test_null_and_base_rates(loans: pl.DataFrame) -> None:
    nulls = loans.null_count() / loans.height
    assert nulls["annual_income"][0] == pytest.approx(0.03, abs=0.006)
    assert nulls["months_employed"][0] == pytest.approx(0.05, abs=0.008)
    assert nulls["employment_type"][0] == pytest.approx(0.01, abs=0.003)
    others = nulls.select(pl.exclude("annual_income", "months_employed", "employment_type"))
    assert others.sum_horizontal()[0] == 0
    assert 0.10 <= loans.select(pl.col("defaulted").mean()).item() <= 0.15


def test_drift_between_first_and_last_month(loans: pl.DataFrame) -> None:
    month = pl.col("application_date").dt.month()
    stats = (
        loans.group_by(month.alias("m"))
        .agg(
            pl.col("amount").median(),
            pl.col("credit_score").mean(),
            (pl.col("purpose") == "vacation").mean().alias("vacation"),
            pl.col("defaulted").mean(),
        )
        .sort("m")
    )
    first, last = stats.row(0, named=True), stats.row(-1, named=True)
    assert last["amount"] > 1.3 * first["amount"]
    assert last["credit_score"] < first["credit_score"] - 30
    assert last["vacation"] > 2 * first["vacation"]
    assert last["defaulted"] > first["defaulted"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_round_trip_matches_chunks(tmp_path: Path, suffix: str) -> None:
    path = write_loans(tmp_path / "nested" / f"loans{suffix}", 2_500, seed=5, chunk_rows=1_000)
    chunks = [(0, 1_000), (1_000, 1_000), (2_000, 500)]
    expected = pl.concat([generate_loans(n, 5, offset=off) for off, n in chunks])
    got = pl.read_csv(path, schema=expected.schema) if suffix == ".csv" else pl.read_parquet(path)
    assert_frame_equal(got, expected)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left behind


def test_single_chunk_file_equals_generate(tmp_path: Path) -> None:
    path = write_loans(tmp_path / "loans.parquet", 1_500, seed=9)
    assert_frame_equal(pl.read_parquet(path), generate_loans(1_500, 9))


def test_parquet_row_groups_and_explicit_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(testing, "_PARQUET_ROW_GROUP", 400)
    path = write_loans(tmp_path / "loans.data", 1_000, chunk_rows=1_000, file_format="parquet")
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    with pytest.raises(ValueError, match="cannot infer the format"):
        write_loans(tmp_path / "loans.txt", 10)


def test_crash_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = testing.generate_loans

    def failing(rows: int, seed: int = 7, **kw: int) -> pl.DataFrame:
        if kw.get("offset", 0) > 0:
            raise RuntimeError("disk on fire")
        return real(rows, seed, offset=kw.get("offset", 0))

    monkeypatch.setattr(testing, "generate_loans", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_loans(tmp_path / "loans.csv", 300, chunk_rows=100)
    assert list(tmp_path.iterdir()) == []
