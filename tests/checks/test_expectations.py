"""Expectations: a training set that breaks them fails with a report; at scoring, bad rows go to quarantine.

One model is trained per module and each test scores a fresh copy of its project, so the file stays fast.
"""

from __future__ import annotations

import json
import shutil
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import batchml
from batchml.checks import validation
from batchml.cli import app
from batchml.config import parse_config
from batchml.errors import ConfigError, DataError, SchemaError
from batchml.models.registry import RegistryReader
from batchml.scoring import runs
from tests.conftest import PROJECT_TOML

REGIONS = '["north", "south", "east", "west", "central", "islands"]'
AGE = "\n[models.default_risk.expectations.age]\nmin = 18\nmax = 100\n"
REGION = f"\n[models.default_risk.expectations.region]\nin = {REGIONS}\n"
AMOUNT = "\n[models.default_risk.expectations.amount]\nmin = 0\n"
REGION_RULE = "in [north, south, east, west, central, islands]"
EXPECTATIONS = AGE + REGION + AMOUNT
ROW = pl.int_range(pl.len())  # row number, to break exactly the rows a test names

Change = Callable[[pl.DataFrame], pl.DataFrame]


def scoring_limit(share: float) -> str:
    return f"\n[models.default_risk.scoring]\nmax_quarantine_share = {share}\n"


def write_variant(folder: Path, loans_csv: Path, change: Change, suffix: str = "parquet") -> Path:
    path = folder / f"variant-{uuid.uuid4().hex[:8]}.{suffix}"
    frame = change(pl.read_csv(loans_csv, try_parse_dates=True))
    frame.write_parquet(path) if suffix == "parquet" else frame.write_csv(path)
    return path


def snapshot_variant(project: batchml.Project, loans_csv: Path, change: Change) -> str:
    path = write_variant(project.base_dir, loans_csv, change)
    return batchml.snapshot_dataset(project, "loans", str(path)).ref


def run_files(project: batchml.Project) -> list[Path]:
    return sorted(p for p in Path(project.storage.root, "runs").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, loans_csv: Path) -> Path:
    """A project folder whose champion was trained with EXPECTATIONS on the clean sample."""
    root = tmp_path_factory.mktemp("expectations") / "project"
    root.mkdir()
    (root / "batchml.toml").write_text(PROJECT_TOML.format(source=loans_csv) + EXPECTATIONS)
    project = batchml.Project.open(root / "batchml.toml")
    batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    batchml.promote(project, "default_risk", model.version, reason="fixture")
    return root


@pytest.fixture
def scorer(trained: Path, tmp_path: Path, loans_csv: Path) -> Callable[[str], batchml.Project]:
    """A copy of the trained project whose config (for scoring) has the given expectations text."""

    def make(extra: str) -> batchml.Project:
        root = tmp_path / "project"
        shutil.copytree(trained, root, symlinks=True)
        (root / "batchml.toml").write_text(PROJECT_TOML.format(source=loans_csv) + extra)
        return batchml.Project.open(root / "batchml.toml")

    return make


# -- config and training ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("min = 100\nmax = 18", r"expectations\.age: .*min 100 is greater than max 18: use min <= max"),
        ("in = []", r"expectations\.age: .*`in` is an empty list"),
        ("max_null_rate = 1.5", r"age\.max_null_rate: must be a number, at most 1\.0 \(got 1\.5"),
        ('severity = "fatal"', r"expectations\.age\.severity: must be 'hard' or 'warn' \(got 'fatal'\)"),
    ],
)
def test_bad_expectation_config_names_the_value(loans_csv: Path, text: str, expected: str) -> None:
    toml = PROJECT_TOML.format(source=loans_csv) + f"\n[models.default_risk.expectations.age]\n{text}\n"
    with pytest.raises(ConfigError, match=expected):
        parse_config(tomllib.loads(toml))


def test_expectation_on_a_missing_column_fails_training(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    toml = PROJECT_TOML.format(source=loans_csv) + "\n[models.default_risk.expectations.salary]\nmin = 0\n"
    project = make_project(toml)
    ref = batchml.snapshot_dataset(project, "loans").ref
    with pytest.raises(SchemaError, match=rf"expectation column 'salary' is not in dataset {ref}"):
        batchml.train(project, "default_risk")
    assert RegistryReader(project.storage).list_models() == []


def test_training_set_that_breaks_hard_expectations_fails_with_a_report(
    make_project: Callable[..., batchml.Project], loans_csv: Path, tmp_path: Path
) -> None:
    source = write_variant(
        tmp_path,
        loans_csv,
        lambda df: df.with_columns(
            age=pl.when(ROW < 3).then(12).otherwise("age"),
            region=pl.when(ROW == 5).then(pl.lit("atlantis")).otherwise("region"),
        ),
        suffix="csv",
    )
    nulls = "\n[models.default_risk.expectations.annual_income]\nmax_null_rate = 0.01\n"
    warn = '\n[models.default_risk.expectations.open_accounts]\nmax = 3\nseverity = "warn"\n'
    project = make_project(PROJECT_TOML.format(source=source) + EXPECTATIONS + nulls + warn)
    ref = batchml.snapshot_dataset(project, "loans").ref
    with pytest.raises(DataError) as caught:
        batchml.train(project, "default_risk")
    message = str(caught.value)
    assert f"training data {ref} breaks 3 hard expectation(s)" in message
    assert (
        "age: min 18: 3 of 4,000 rows, e.g. 12 (id L000000001), 12 (id L000000002), 12 (id L000000003)"
        in message
    )
    assert f"region: {REGION_RULE}: 1 of 4,000 rows, e.g. 'atlantis' (id L000000006)" in message
    assert "annual_income: max_null_rate 0.01: null rate 0.033 (132 of 4,000 rows)" in message
    assert "open_accounts" not in message and "amount" not in message  # warn rules and kept rules
    assert RegistryReader(project.storage).list_models() == []


def test_warn_rules_only_report_at_training(
    make_project: Callable[..., batchml.Project], loans_csv: Path
) -> None:
    warn = '\n[models.default_risk.expectations.open_accounts]\nmax = 3\nseverity = "warn"\n'
    project = make_project(PROJECT_TOML.format(source=loans_csv) + AGE + warn)
    batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    results = {(r["column"], r["rule"]): r for r in model.card["data_checks"]["results"]}
    assert results[("age", "min 18")]["rows"] == 0
    assert results[("open_accounts", "max 3")]["severity"] == "warn"
    assert results[("open_accounts", "max 3")]["rows"] > 0


# -- scoring ----------------------------------------------------------------------------------------------
def test_rows_breaking_hard_rules_are_quarantined_not_scored(
    scorer: Callable[[str], batchml.Project], loans_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "BATCH_ROWS", 512)  # several batches through the prefetch pipeline
    project = scorer(EXPECTATIONS + scoring_limit(0.01))
    ref = snapshot_variant(
        project,
        loans_csv,
        lambda df: df.with_columns(
            age=pl.when(ROW < 10).then(12).otherwise("age"),
            region=pl.when((ROW >= 5) & (ROW < 15)).then(pl.lit("atlantis")).otherwise("region"),
        ),
    )
    run = batchml.score(project, "default_risk", dataset=ref)
    summary = run.summary
    assert (summary["rows_in"], summary["quarantined"], summary["scored"]) == (4000, 15, 3985)
    assert run.rows + summary["quarantined"] == 4000
    rules = {(q["column"], q["rule"]): q["rows"] for q in summary["quarantine"]}
    assert rules == {("age", "min 18"): 10, ("region", REGION_RULE): 10}
    assert run.manifest["key"]["params"]["expectations"]["age"]["min"] == 18
    assert run.quarantine_files and all(
        f.path.startswith(f"runs/default_risk/{run.run_id}/") for f in run.quarantine_files
    )

    batchml.publish(project, "default_risk", run.run_id)
    con = batchml.connect(project)
    rows = con.execute(
        "SELECT entity_id, column_name, rule, value FROM quarantine ORDER BY entity_id, column_name"
    ).fetchall()
    assert len(rows) == 20  # 15 rows, 5 of them broke both rules
    assert rows[0] == ("L000000001", "age", "min 18", "12")
    assert ("L000000006", "region", REGION_RULE, "atlantis") in rows
    quarantined = {r[0] for r in rows}
    assert len(quarantined) == 15
    scored = {r[0] for r in con.execute("SELECT entity_id FROM predictions").fetchall()}
    assert len(scored) == 3985 and not scored & quarantined
    assert con.execute("SELECT quarantined, rows FROM runs").fetchall() == [(15, 3985)]
    assert json.loads(con.execute("SELECT summary_json FROM runs").fetchone()[0])["quarantined"] == 15

    out = CliRunner().invoke(app, ["--config", str(project.base_dir / "batchml.toml"), "score",
                                   "default_risk", "--dataset", ref, "--no-publish"])  # fmt: skip
    assert out.exit_code == 0, out.stdout
    assert "quarantined 15 of 4,000 rows (0.38%): age min 18 (10)" in out.stdout


def test_quarantine_over_the_limit_fails_and_publishes_nothing(
    scorer: Callable[[str], batchml.Project], loans_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = scorer(EXPECTATIONS + scoring_limit(0.015))
    clean = batchml.score(project, "default_risk")
    batchml.publish(project, "default_risk", clean.run_id)
    serving = batchml.database_path(project).resolve()
    before = run_files(project)
    monkeypatch.setattr(runs, "BATCH_ROWS", 512)
    monkeypatch.setattr(validation, "FLUSH_ROWS", 1)  # quarantine parts are written before the failure
    written: list[str] = []
    flush = validation.QuarantineWriter.flush

    def spy(self: validation.QuarantineWriter) -> None:
        flush(self)
        written.extend(f.path for f in self.files if f.path not in written)

    monkeypatch.setattr(validation.QuarantineWriter, "flush", spy)
    ref = snapshot_variant(
        project, loans_csv, lambda df: df.with_columns(age=pl.when(ROW % 50 == 0).then(7).otherwise("age"))
    )
    with pytest.raises(
        DataError, match=r"are quarantined, over max_quarantine_share 0.015; top rules: age min 18"
    ):
        batchml.score(project, "default_risk", dataset=ref)
    assert len(written) >= 3 and all("quarantine" in w for w in written)
    assert run_files(project) == before  # no manifest, no prediction or quarantine parts left
    assert batchml.database_path(project).resolve() == serving
    con = batchml.connect(project)
    assert con.execute("SELECT DISTINCT run_id FROM predictions").fetchall() == [(clean.run_id,)]
    assert con.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)


def test_warn_rules_are_counted_only(scorer: Callable[[str], batchml.Project], loans_csv: Path) -> None:
    warn_age = '\n[models.default_risk.expectations.age]\nmin = 18\nseverity = "warn"\n'
    project = scorer(warn_age + scoring_limit(0.0))
    ref = snapshot_variant(
        project, loans_csv, lambda df: df.with_columns(age=pl.when(ROW < 10).then(12).otherwise("age"))
    )
    run = batchml.score(project, "default_risk", dataset=ref)
    assert run.rows == 4000 and run.summary["quarantined"] == 0 and run.quarantine_files == []
    assert run.summary["warnings"] == [{"column": "age", "rule": "min 18", "rows": 10}]


def test_unseen_categories_and_out_of_range_values_are_flagged(
    scorer: Callable[[str], batchml.Project], loans_csv: Path
) -> None:
    project = scorer(AGE)  # no rule on region or amount: such rows are scored, with flags
    ref = snapshot_variant(
        project,
        loans_csv,
        lambda df: df.with_columns(
            region=pl.when(ROW < 7).then(pl.lit("atlantis")).otherwise("region"),
            amount=pl.when((ROW >= 10) & (ROW < 14)).then(1e9).otherwise("amount"),
        ),
    )
    model = RegistryReader(project.storage).resolve("default_risk", alias="champion")
    low, high = (model.card["profile"]["features"]["amount"][k] for k in ("min", "max"))
    source = pl.read_parquet(next(Path(project.base_dir).glob("variant-*.parquet")))
    beyond = int(((source["amount"] < low) | (source["amount"] > high)).sum())
    assert beyond >= 4

    run = batchml.score(project, "default_risk", dataset=ref)
    summary = run.summary
    assert run.rows == 4000 and summary["quarantined"] == 0
    assert summary["unseen"] == {"region": 7} and summary["unseen_examples"] == {"region": ["atlantis"]}
    assert summary["out_of_range"]["amount"] == beyond
    table = pq.ParquetDataset([str(Path(project.storage.root, f.path)) for f in run.files]).read()
    flags = table.column("flags").to_pylist()
    assert all("unseen:region" in f for f in flags[:7]) and sum("unseen:region" in f for f in flags) == 7
    assert all("out_of_range:amount" in f for f in flags[10:14])
    assert sum("out_of_range:amount" in f for f in flags) == beyond
    assert summary["flagged"] == sum(bool(f) for f in flags)

    batchml.publish(project, "default_risk", run.run_id)
    con = batchml.connect(project)
    assert con.execute(
        "SELECT count(*) FROM predictions WHERE list_contains(flags, 'unseen:region')"
    ).fetchone() == (7,)
    assert con.execute("SELECT flagged FROM runs").fetchone() == (summary["flagged"],)


def test_null_rate_limits_at_scoring(scorer: Callable[[str], batchml.Project], loans_csv: Path) -> None:
    limit = "\n[models.default_risk.expectations.annual_income]\nmax_null_rate = 0.1\n"
    project = scorer(limit)
    ref = snapshot_variant(
        project,
        loans_csv,
        lambda df: df.with_columns(annual_income=pl.when(ROW % 2 == 0).then(None).otherwise("annual_income")),
    )
    with pytest.raises(DataError, match=r"'annual_income' has a null rate of .*over max_null_rate 0.1"):
        batchml.score(project, "default_risk", dataset=ref)
    assert run_files(project) == []

    project.base_dir.joinpath("batchml.toml").write_text(
        PROJECT_TOML.format(source=loans_csv) + limit + 'severity = "warn"\n'
    )
    run = batchml.score(batchml.Project.open(project.base_dir / "batchml.toml"), "default_risk", dataset=ref)
    assert run.rows == 4000
    [warning] = run.summary["warnings"]
    assert warning["column"] == "annual_income" and warning["rule"] == "max_null_rate 0.1"
    assert run.summary["null_rates"]["annual_income"]["rate"] > 0.5


def test_expectation_column_missing_at_scoring_fails_before_output(
    scorer: Callable[[str], batchml.Project], loans_csv: Path
) -> None:
    project = scorer(AGE + "\n[models.default_risk.expectations.application_date]\nnot_null = true\n")
    ref = snapshot_variant(project, loans_csv, lambda df: df.drop("application_date"))
    with pytest.raises(SchemaError, match=rf"expectation column 'application_date' is not in dataset {ref}"):
        batchml.score(project, "default_risk", dataset=ref)
    assert run_files(project) == []
