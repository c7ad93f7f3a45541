"""Seeded sample data for demos, tests and benchmarks: a loan-default classification problem.

``generate_loans`` returns one in-memory frame; ``write_loans`` streams chunks of it to a single CSV or
Parquet file so that large tables (10M rows) never sit in memory at once. Everything is vectorised with
numpy and fully determined by the arguments. The data drifts over time: later applications ask for larger
amounts, have lower credit scores and a different purpose mix, and default more often. ``shift_loans`` moves
most features far beyond that, for a batch that drift monitoring must flag.

Nothing else in ``batchml`` may assume these column names; they exist only for examples.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import os
import uuid
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow.parquet as pq

__all__ = ["generate_loans", "shift_loans", "write_loans"]

REGIONS = ("north", "south", "east", "west", "central", "islands")
_REGION_P = (0.22, 0.20, 0.19, 0.19, 0.15, 0.05)
PURPOSES = ("debt_consolidation", "home_improvement", "car", "business", "education", "medical", "vacation")
_PURPOSE_P_EARLY = (0.34, 0.18, 0.18, 0.08, 0.10, 0.07, 0.05)
_PURPOSE_P_LATE = (0.24, 0.12, 0.14, 0.16, 0.08, 0.10, 0.16)
EMPLOYMENT_TYPES = ("salaried", "self_employed", "contract", "unemployed")
_EMPLOYMENT_P = (0.62, 0.18, 0.14, 0.06)
# Log-odds contributions of the categorical features.
_PURPOSE_RISK = np.array([0.0, -0.25, -0.15, 0.45, 0.1, 0.3, 0.55])
_EMPLOYMENT_RISK = np.array([0.0, 0.3, 0.35, 1.0])
_REGION_RISK = np.array([0.0, 0.1, -0.1, 0.0, 0.15, 0.3])
_INTERCEPT = -5.0
_LATENT_SD = 1.8
_EPOCH = dt.date(1970, 1, 1)
_PARQUET_ROW_GROUP = 128 * 1024


def _add_months(start: dt.date, months: int) -> dt.date:
    """Return ``start`` moved ``months`` calendar months ahead (day clipped to the month's length)."""
    y, m = divmod(start.month - 1 + months, 12)
    year, month = start.year + y, m + 1
    return dt.date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def _choice(rng: np.random.Generator, probs: tuple[float, ...], n: int) -> np.ndarray:
    """Draw ``n`` category codes with the given probabilities (vectorised inverse-CDF sampling)."""
    cdf = np.cumsum(probs)
    return np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n), side="right"), len(probs) - 1)


def _strings(values: tuple[str, ...], codes: np.ndarray, null: np.ndarray | None = None) -> pl.Series:
    """Map integer codes to a string series, with nulls where ``null`` is true."""
    idx = pl.Series(codes.astype(np.uint32))
    if null is not None:
        idx = idx.scatter(np.flatnonzero(null), None)
    return pl.Series(values).gather(idx)


def generate_loans(
    rows: int,
    seed: int = 7,
    *,
    start: dt.date = dt.date(2025, 1, 1),
    months: int = 12,
    offset: int = 0,
) -> pl.DataFrame:
    """Return ``rows`` synthetic loan applications with a binary ``defaulted`` target.

    Deterministic for ``(rows, seed, start, months, offset)``; ``offset`` numbers the ``loan_id`` values
    (``L`` + 9 digits, ``offset + i + 1``) and also selects the random stream, so chunks generated with
    different offsets are independent. Application dates are uniform over ``months`` months from ``start``.
    The target follows a nonlinear logistic model (base rate ~12%, a GBDT reaches AUC ~0.8).
    """
    if rows < 0 or months < 1 or offset < 0:
        raise ValueError(f"rows={rows}, months={months}, offset={offset}: use rows, offset >= 0, months >= 1")
    rng = np.random.default_rng([seed, offset])
    n = rows
    span = (_add_months(start, months) - start).days
    day = rng.integers(0, span, n)
    t = day / span  # 0 at start, ->1 at the end: drives the drift.

    region = _choice(rng, _REGION_P, n)
    late = rng.random(n) < t
    purpose = np.where(late, _choice(rng, _PURPOSE_P_LATE, n), _choice(rng, _PURPOSE_P_EARLY, n))
    employment = _choice(rng, _EMPLOYMENT_P, n)

    age = np.clip(np.rint(rng.normal(41.0, 12.0, n)), 19, 80).astype(np.int64)
    income = np.exp(
        10.75 + 0.012 * (np.minimum(age, 55) - 40) - 0.6 * (employment == 3) + rng.normal(0.0, 0.45, n)
    )
    tenure_cap = (age - 18) * 12
    months_employed = np.where(
        employment == 3, 0, np.minimum(np.rint(rng.exponential(55.0, n)), tenure_cap)
    ).astype(np.int64)
    credit = 670.0 - 45.0 * t + 40.0 * (np.log(income) - 10.75) + 0.8 * (age - 41) + rng.normal(0.0, 65.0, n)
    credit_score = np.clip(np.rint(credit), 300, 850).astype(np.int64)
    log_amount = 9.1 + 0.45 * t + 0.3 * (purpose == 3) - 0.4 * (purpose == 6) + rng.normal(0.0, 0.6, n)
    amount = np.round(np.exp(log_amount), 2)
    dti = np.round(np.clip(rng.beta(2.2, 5.5, n) * 0.9 + 0.25 * amount / income, 0.0, 1.5), 4)
    open_accounts = rng.poisson(np.clip(3.0 + (credit_score - 600) / 60.0, 0.5, None)).astype(np.int64)

    score_c = (credit_score - 680.0) / 60.0
    logit = (
        _INTERCEPT
        - 0.8 * score_c
        + 0.5 * np.maximum(-score_c - 1.0, 0.0) ** 2  # sharply riskier below ~620
        + 3.5 * np.maximum(dti - 0.45, 0.0)
        + 0.6 * np.log1p(amount / income * 4.0)
        + 0.9 * np.maximum(dti - 0.35, 0.0) * np.maximum(-score_c, 0.0)  # interaction
        + 0.5 * (months_employed < 12)
        + 0.45 * (age < 25)
        - 0.05 * np.minimum(open_accounts, 10)
        + _PURPOSE_RISK[purpose]
        + _EMPLOYMENT_RISK[employment]
        + _REGION_RISK[region]
        + rng.normal(0.0, _LATENT_SD, n)  # risk the features do not explain
    )
    defaulted = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)

    income_null = rng.random(n) < 0.03 * np.where(defaulted == 1, 1.6, 0.93)  # missingness is informative
    employed_null = rng.random(n) < 0.05
    employment_null = rng.random(n) < 0.01
    ids = np.arange(offset + 1, offset + n + 1, dtype=np.int64)
    return pl.DataFrame(
        {
            "loan_id": pl.Series(ids).cast(pl.String).str.zfill(9).str.pad_start(10, "L"),
            "application_date": pl.Series(day + (start - _EPOCH).days, dtype=pl.Int32).cast(pl.Date),
            "amount": amount,
            "annual_income": pl.Series(np.round(np.where(income_null, np.nan, income), 2), nan_to_null=True),
            "age": age,
            "credit_score": credit_score,
            "debt_to_income": dti,
            "open_accounts": open_accounts,
            "months_employed": pl.Series(months_employed).scatter(np.flatnonzero(employed_null), None),
            "region": _strings(REGIONS, region),
            "purpose": _strings(PURPOSES, purpose),
            "employment_type": _strings(EMPLOYMENT_TYPES, employment, employment_null),
            "defaulted": pl.Series(defaulted, dtype=pl.Int8),
        }
    )


def shift_loans(loans: pl.DataFrame) -> pl.DataFrame:
    """Return ``loans`` with most numeric features shifted well beyond the generator's distribution.

    Larger amounts, lower scores and incomes, older applicants, higher debt: a batch from a different
    population, which drift monitoring must flag. Ids, dates, categories and the target are kept, so the
    result can also be trained on.
    """
    return loans.with_columns(
        pl.col("amount") * 4,
        (pl.col("credit_score") - 150).clip(300, 850),
        pl.col("debt_to_income") * 1.6,
        pl.col("age") + 15,
        pl.col("annual_income") * 0.4,
        pl.col("open_accounts") + 4,
        pl.col("months_employed") * 3,
    )


def _file_format(path: Path, file_format: Literal["csv", "parquet"] | None) -> Literal["csv", "parquet"]:
    """Return the explicit format, or infer it from the path's suffix."""
    if file_format is not None:
        if file_format not in ("csv", "parquet"):
            raise ValueError(f"file_format {file_format!r} is invalid: use 'csv' or 'parquet'")
        return file_format
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(f"cannot infer the format of {str(path)!r}: use a .csv/.parquet suffix or file_format=")


def write_loans(
    path: str | Path,
    rows: int,
    seed: int = 7,
    *,
    chunk_rows: int = 1_000_000,
    file_format: Literal["csv", "parquet"] | None = None,
) -> Path:
    """Write ``rows`` loans to one CSV or Parquet file, ``chunk_rows`` at a time, and return its path.

    Chunk ``k`` is ``generate_loans(n_k, seed, offset=k * chunk_rows)``, so a file of at most ``chunk_rows``
    rows equals ``generate_loans(rows, seed)``; the content depends on ``chunk_rows`` otherwise. The file is
    written beside the target under a temporary name and moved into place with ``os.replace``.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows={chunk_rows} is invalid: use a positive integer")
    target = Path(path)
    fmt = _file_format(target, file_format)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    offsets = range(0, max(rows, 1), chunk_rows)  # one (possibly empty) chunk when rows == 0
    try:
        if fmt == "csv":
            with tmp.open("wb") as fh:
                for k, off in enumerate(offsets):
                    generate_loans(min(chunk_rows, rows - off), seed, offset=off).write_csv(
                        fh, include_header=k == 0
                    )
        else:
            writer: pq.ParquetWriter | None = None
            try:
                for off in offsets:
                    table = generate_loans(min(chunk_rows, rows - off), seed, offset=off).to_arrow()
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                    writer.write_table(table.cast(writer.schema), row_group_size=_PARQUET_ROW_GROUP)
            finally:
                if writer is not None:
                    writer.close()
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return target
