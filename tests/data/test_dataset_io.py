"""Datasets back out: export to Parquet/CSV, read_dataset, and a row-level diff by entity id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

import batchml
from batchml.cli import app
from batchml.data import datasets
from batchml.data.row_diff import row_diff
from batchml.errors import ConfigError, DataError, IntegrityError, SchemaError

runner = CliRunner()


def cli(project: batchml.Project, *args: str, code: int = 0) -> Any:
    result = runner.invoke(app, ["--config", str(project.base_dir / "batchml.toml"), *args])
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def _versions(project: batchml.Project, tmp_path: Path) -> tuple[Any, Any]:
    """Two versions of `loans` with known differences by loan_id."""
    old = pl.DataFrame(
        {"loan_id": [f"L{i:03d}" for i in range(100)], "x": [float(i) for i in range(100)], "y": ["a"] * 100}
    )
    new = (
        old.filter(~pl.col("loan_id").is_in(["L000", "L001", "L002"]))  # 3 removed
        .with_columns(
            pl.when(pl.col("loan_id").is_in(["L010", "L020", "L030"])).then(-1.0).otherwise("x").alias("x"),
            pl.when(pl.col("loan_id") == "L020").then(None).otherwise(pl.col("y")).alias("y"),
        )
        .vstack(pl.DataFrame({"loan_id": ["L100", "L101", "L102", "L103"], "x": [1.0] * 4, "y": ["b"] * 4}))
        .vstack(pl.DataFrame({"loan_id": [None, None], "x": [0.0, 0.0], "y": ["c", "c"]}, schema=old.schema))
    )
    old.write_parquet(tmp_path / "old.parquet")
    new.write_parquet(tmp_path / "new.parquet")
    a = batchml.snapshot_dataset(project, "loans", str(tmp_path / "old.parquet"))
    b = batchml.snapshot_dataset(project, "loans", str(tmp_path / "new.parquet"))
    return a, b


def test_row_diff_finds_every_added_removed_and_changed_row(project: batchml.Project, tmp_path: Path) -> None:
    a, b = _versions(project, tmp_path)
    diff = row_diff(project.storage, a, b, "loan_id")
    assert diff["rows"] == {
        "added": 4, "removed": 3, "changed": 3, "unchanged": 94, "without_id": {"old": 0, "new": 2}
    }  # fmt: skip
    assert diff["examples"] == {
        "added": ["L100", "L101", "L102", "L103"],
        "removed": ["L000", "L001", "L002"],
        "changed": ["L010", "L020", "L030"],
    }
    assert diff["changed_columns"] == {
        "x": {"changed": 3, "examples": ["L010", "L020", "L030"]},
        "y": {"changed": 1, "examples": ["L020"]},  # a value that became NULL is a change
    }
    # The CLI finds the id from the model configured on the dataset, and says it in JSON and text.
    shown = json.loads(cli(project, "datasets", "diff", a.ref, b.ref, "--json").stdout)
    assert shown["row_diff"] == diff and shown["rows"]["change"] == 3
    text = cli(project, "datasets", "diff", a.ref, b.ref).stdout
    assert "rows by loan_id" in text and "L100, L101, L102, L103" in text


def test_row_diff_needs_a_unique_id_column(project: batchml.Project, tmp_path: Path) -> None:
    a, b = _versions(project, tmp_path)
    with pytest.raises(DataError, match=r'column "y" is not an id in loans@.*: 1 of its values repeat'):
        row_diff(project.storage, a, b, "y")
    with pytest.raises(SchemaError, match="has no column 'nope' to match rows by"):
        row_diff(project.storage, a, b, "nope")
    error = cli(project, "datasets", "diff", a.ref, b.ref, "--by", "nope", code=1).stderr
    assert error.startswith("error: dataset loans@") and "Traceback" not in error


def test_export_round_trips_and_never_leaves_a_partial_file(project: batchml.Project, tmp_path: Path) -> None:
    version = batchml.snapshot_dataset(project, "loans")
    expected = batchml.read_dataset("loans@latest", project)
    assert expected.height == version.rows == 4000
    out = tmp_path / "out"
    for name in ["loans.parquet", "loans.csv"]:
        args = ["datasets", "export", "loans@latest", str(out / name), "--json"]
        done = json.loads(cli(project, *args).stdout)
        assert done == {"ref": version.ref, "file": str(out / name), "rows": 4000}
    assert pl.read_parquet(out / "loans.parquet").equals(expected)
    assert pl.read_csv(out / "loans.csv", schema=expected.schema).equals(expected)

    refused = cli(project, "datasets", "export", "loans@latest", str(out / "loans.csv"), code=1).stderr
    assert "exists: choose another path, or replace it with --force" in refused
    cli(project, "datasets", "export", "loans@latest", str(out / "loans.csv"), "--force")
    with pytest.raises(ConfigError, match=r"cannot tell the format of .*\('\.xlsx'\): end it in \.csv"):
        from batchml.data.dataset_export import export_format

        export_format(out / "loans.xlsx")

    damaged = Path(project.storage.full_path(version.files[0].path))
    damaged.chmod(0o644)
    damaged.write_bytes(damaged.read_bytes()[:-10])
    failed = cli(project, "datasets", "export", "loans@latest", str(out / "again.parquet"), code=1).stderr
    assert "integrity check failed" in failed
    assert sorted(p.name for p in out.iterdir()) == ["loans.csv", "loans.parquet"]  # nothing partial
    with pytest.raises(IntegrityError):
        batchml.read_dataset(version.ref, project)


def test_read_dataset_reads_columns_and_names_missing_ones(project: batchml.Project) -> None:
    version = batchml.snapshot_dataset(project, "loans")
    frame = batchml.read_dataset(f"loans@{version.version[:6]}", project, columns=["loan_id", "amount"])
    assert frame.columns == ["loan_id", "amount"] and frame.height == 4000
    with pytest.raises(SchemaError, match=r"has no column\(s\) 'amout'"):
        batchml.read_dataset("loans@latest", project, columns=["amout"])
    assert datasets.get_version(project.storage, "loans@latest").version == version.version
