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
    ],
)
def test_invalid_config_names_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(data)


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
