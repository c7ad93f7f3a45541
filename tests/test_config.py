"""Project config: strict, with errors that name the field, and storage resolved from one URL."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import batchml
from batchml.config import load_config, parse_config
from batchml.errors import ConfigError

MODEL = {"dataset": "d", "entity_id": "id", "target": "y"}


def test_defaults_without_a_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BATCHML_CONFIG", raising=False)
    monkeypatch.delenv("BATCHML_STORAGE", raising=False)
    project = batchml.Project.open()
    assert project.storage.root == str(tmp_path / "data")
    assert project.serving_dir == tmp_path / "data" / "serving"
    assert project.config.models == {}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"storage": {"rooot": "x"}}, "storage.rooot: unknown key; allowed keys: root, serving_dir, options"),
        ({"models": {"Bad Name": MODEL}}, "'Bad Name' is invalid"),
        ({"models": {"m": {**MODEL, "task": "ranking"}}}, "models.m.task"),
        ({"models": {"m": {**MODEL, "target": "id"}}}, "must be different columns"),
        ({"models": {"m": {**MODEL, "split": {"test_fraction": 1.5}}}}, "test_fraction"),
        ({"models": {"m": {**MODEL, "dataset": "../x"}}}, "'../x' is invalid"),
        ({"models": {"m": {**MODEL, "exclude": ["a", 3]}}}, "models.m.exclude[1]: must be text (got 3)"),
        ({"datasets": {"d": {"format": "xls"}}}, "datasets.d.format: must be 'csv' or 'parquet' (got 'xls')"),
        ({"models": {"m": {"dataset": "d", "target": "y"}}}, "models.m.entity_id: required key is missing"),
        (
            {"serving": {"reader_memory_limit": "lots"}},
            "serving: reader_memory_limit 'lots' is invalid: use a size like '2GB' or '512MB'",
        ),
        ({"serving": {"reader_memory_limit": "-1GB"}}, "reader_memory_limit '-1GB' is invalid"),
        ({"serving": {"reader_memory_limit": "8"}}, "reader_memory_limit '8' is invalid"),  # DuckDB: no unit
        ({"serving": {"reader_threads": 0}}, "reader_threads: must be an integer, at least 1 (got 0)"),
        ({"serving": {"reader_threads": 1.5}}, "serving.reader_threads: must be an integer (got 1.5)"),
        ({"serving": {"memory": "2GB"}}, "serving.memory: unknown key; allowed keys: reader_memory_limit"),
    ],
)
def test_invalid_config_names_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        parse_config(data)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("limit", "bytes_"),
    [("2GB", 2 * 10**9), ("512MB", 512 * 10**6), ("2GiB", 2**31), ("1.5 gb", 15 * 10**8), ("64kib", 2**16)],
)
def test_serving_reader_memory_is_read_as_duckdb_reads_sizes(limit: str, bytes_: int) -> None:
    """`[serving]` sizes the readers (and so the serving file's indexes): 1 GB = 10^9 bytes, 1 GiB = 2^30."""
    serving = parse_config({"serving": {"reader_memory_limit": limit, "reader_threads": 4}}).serving
    assert (serving.reader_memory_bytes, serving.reader_threads) == (bytes_, 4)
    assert parse_config({}).serving.reader_memory_limit == "2GB"  # today's default reader


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage\nroot=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_unknown_model_lists_configured_ones(project: batchml.Project) -> None:
    with pytest.raises(ConfigError, match="configured models: default_risk"):
        batchml.train(project, "nope")


def test_storage_override_and_remote_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "batchml.toml"
    config.write_text('[storage]\nroot = "memory://bucket/prefix"\n')
    remote = batchml.Project.open(config)
    assert not remote.storage.is_local
    assert remote.serving_dir == tmp_path / ".batchml" / "serving"  # DuckDB files stay on local disk
    monkeypatch.setenv("BATCHML_STORAGE", str(tmp_path / "elsewhere"))
    assert batchml.Project.open(config).storage.root == str(tmp_path / "elsewhere")
