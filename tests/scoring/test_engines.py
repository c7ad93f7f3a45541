"""Compiled scoring engines: exactness recorded at training, the engine in the run key, auto's fallback,
the content-addressed cache (damage, concurrent builds) and the budget gate."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow.parquet as pq
import pytest

import batchml
from batchml.config import parse_config
from batchml.errors import ConfigError
from batchml.monitoring import audit
from batchml.scoring import engine_cache, engine_choice, engines
from tests.conftest import PROJECT_TOML

COMPILED = list(engines.COMPILED)


@pytest.fixture(autouse=True, scope="module")
def engine_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache for the module (compiled models are reused across its tests), never ~/.cache."""
    folder = tmp_path_factory.mktemp("engine-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(engine_cache.CACHE_ENV, str(folder))
        yield folder


def needs(engine: str) -> None:
    """Skip, saying why, when `engine` cannot run here (package or compiler missing)."""
    why = engines.unavailable(engine)
    if why is not None:
        pytest.skip(f"engine {engine} unavailable: {why}")


def configure(project: batchml.Project, loans_csv: Path, extra: str) -> batchml.Project:
    path = project.base_dir / "batchml.toml"
    path.write_text(PROJECT_TOML.format(source=loans_csv) + extra)
    return batchml.Project.open(path)


def predictions(project: batchml.Project, run: batchml.PredictionRun) -> dict[str, float]:
    rows: dict[str, float] = {}
    for entry in run.files:
        table = pq.read_table(Path(project.storage.root, entry.path), columns=["entity_id", "prediction"])
        rows.update(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))
    return rows


def test_an_unknown_engine_is_refused_naming_the_allowed_ones() -> None:
    data = {
        "models": {"m": {"dataset": "d", "entity_id": "id", "target": "y", "scoring": {"engine": "onnx"}}}
    }
    with pytest.raises(ConfigError, match=r"models\.m\.scoring\.engine: must be 'lightgbm', .*'auto'.*onnx"):
        parse_config(data)


def test_the_default_engine_keeps_lightgbm_in_the_run_key(
    project: batchml.Project, champion: batchml.ModelVersion
) -> None:
    run = batchml.score(project, "default_risk")
    assert run.manifest["key"]["engine"] == f"lightgbm=={lgb.__version__}"
    assert "engine_fallback" not in run.manifest
    assert set(champion.card["engines"]) == {"lightgbm"}  # nothing compiled unless asked
    assert champion.card["budget"]["engine"] == "lightgbm"


def test_auto_falls_back_to_lightgbm_with_the_reason_when_engines_are_missing(
    project: batchml.Project,
    loans_csv: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    missing = "package lleaves is not installed (simulated)"
    # The one legitimate fake here: the availability check, as on a machine without the extra or gcc.
    monkeypatch.setattr(engine_choice, "unavailable", lambda name: None if name == "lightgbm" else missing)
    project = configure(project, loans_csv, '\n[models.default_risk.scoring]\nengine = "auto"\n')
    batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    assert {n: r.get("declined") for n, r in model.card["engines"].items() if n != "lightgbm"} == {
        n: missing for n in COMPILED
    }
    assert model.card["budget"]["engine"] == "lightgbm"
    with caplog.at_level(logging.WARNING, logger="batchml.scoring.engine_choice"):
        run = batchml.score(project, "default_risk", alias=None, version=model.version)
    assert run.manifest["key"]["engine"] == f"lightgbm=={lgb.__version__}"
    assert missing in run.manifest["engine_fallback"]
    assert any("engine auto scores default_risk@1 with lightgbm" in r.message for r in caplog.records)
    from tests.cli.test_cli import cli_json

    shown = cli_json(project, "score", "default_risk", "--version", "1", "--no-publish")
    assert shown["reused"] and missing in shown["engine_fallback"]


def test_a_named_engine_that_cannot_run_is_an_error_with_the_reason(
    project: batchml.Project, loans_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_choice, "unavailable", lambda name: f"no {name} here (simulated)")
    project = configure(project, loans_csv, '\n[models.default_risk.scoring]\nengine = "tl2cgen"\n')
    batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    with pytest.raises(
        ConfigError, match=r"'tl2cgen' cannot score default_risk@1: no tl2cgen here .*\"auto\""
    ):
        batchml.score(project, "default_risk", alias=None, version=model.version)


@pytest.mark.parametrize("engine", COMPILED)
def test_a_compiled_engine_scores_within_its_recorded_difference_and_explain_uses_it(
    engine: str, project: batchml.Project, loans_csv: Path
) -> None:
    needs(engine)
    batchml.snapshot_dataset(project, "loans")
    reference = batchml.train(project, "default_risk")
    baseline = predictions(project, batchml.score(project, "default_risk", alias=None, version=1))
    project = configure(project, loans_csv, f'\n[models.default_risk.scoring]\nengine = "{engine}"\n')
    model = batchml.train(project, "default_risk")  # another training key: the card records the check
    assert model.version == 2 and model.model_file.sha256 == reference.model_file.sha256
    record = model.card["engines"][engine]
    assert record["version"] == engines.engine_version(engine)
    assert record["rows_checked"] == model.card["split"]["test_rows"]
    assert record["compile_seconds"] > 0 and record["rows_per_s"] > 0
    assert model.card["budget"]["engine"] == engine
    run = batchml.score(project, "default_risk", alias=None, version=model.version)
    assert run.manifest["key"]["engine"] == engines.engine_version(engine)
    scored = predictions(project, run)
    assert scored.keys() == baseline.keys()
    worst = max(abs(scored[k] - baseline[k]) for k in scored)
    assert worst <= 1e-9  # the configured tolerance; tl2cgen is bit-exact on LightGBM's trees
    if engine == "tl2cgen":
        assert record["exact"] and scored == baseline
    from tests.cli.test_cli import cli

    shown = cli(project, "models", "show", "default_risk@2").stdout
    assert "scoring engines" in shown and engine in shown and "budget" in shown
    batchml.publish(project, "default_risk", run.run_id)
    entity = next(iter(scored))
    explained = audit.explain(project.storage, "default_risk", entity)
    assert explained["rederived"]["engine"] == run.manifest["key"]["engine"]
    assert explained["rederived"]["matches"] is True


@pytest.mark.parametrize("engine", COMPILED)
@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_engines_match_lightgbm_on_categoricals_missing_values_and_every_task(engine: str, task: str) -> None:
    needs(engine)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 5))
    x[:, 4] = rng.integers(0, 8, len(x))  # a categorical column (codes, as `encode` writes them)
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values, in the categorical too
    signal = np.nan_to_num(x[:, 0]) + (x[:, 4] == 2)
    y = {"binary": signal > 0, "multiclass": np.digitize(signal, [-0.5, 0.5]), "regression": signal}[task]
    params = {"binary": {}, "multiclass": {"num_class": 3}, "regression": {}}[task]
    booster = lgb.train(
        {"objective": task, "verbose": -1, "num_leaves": 7, **params},
        lgb.Dataset(x, y.astype(float), categorical_feature=[4]),
        num_boost_round=20,
    )
    text = booster.model_to_string().encode()
    report = engine_choice.check_engines(booster, text, hashlib.sha256(text).hexdigest(), x, engine)
    record = report[engine]
    assert "declined" not in record, record
    assert record["max_abs_diff"] <= 1e-12 and record["rows_checked"] == len(x)
    compiled, _ = engines.compiled(engine, text, hashlib.sha256(text).hexdigest())
    assert compiled.predict(x[:1], 1).shape == booster.predict(x[:1]).shape


def _fake_build(folder: Path) -> dict[str, Any]:
    (folder / "model.so").write_bytes(b"compiled")
    return {"compile_seconds": 0.0}


def test_a_damaged_cache_entry_is_rebuilt_before_anything_loads_it(tmp_path: Path) -> None:
    folder, entry, built = engine_cache.cached_build("a" * 64, "tl2cgen", "v1", _fake_build, tmp_path)
    assert built and entry["files"]["model.so"] == hashlib.sha256(b"compiled").hexdigest()
    assert engine_cache.cached_build("a" * 64, "tl2cgen", "v1", _fake_build, tmp_path)[2] is False
    (folder / "model.so").write_bytes(b"tampered")
    assert "model.so has sha256" in str(engine_cache.damage(folder))
    again, _, rebuilt = engine_cache.cached_build("a" * 64, "tl2cgen", "v1", _fake_build, tmp_path)
    assert rebuilt and again == folder and (folder / "model.so").read_bytes() == b"compiled"
    other = engine_cache.cached_build("a" * 64, "tl2cgen", "v2", _fake_build, tmp_path)[0]
    assert other != folder  # another engine version is another entry


def test_a_damaged_compiled_library_is_rebuilt(engine_cache_dir: Path) -> None:
    needs("tl2cgen")
    x = np.random.default_rng(5).normal(size=(300, 3))
    booster = lgb.train({"objective": "regression", "verbose": -1}, lgb.Dataset(x, x[:, 0]), 5)
    text = booster.model_to_string().encode()
    sha = hashlib.sha256(text).hexdigest()
    _, entry = engines.compiled("tl2cgen", text, sha)
    library = Path(entry["folder"]) / "model.so"
    library.write_bytes(library.read_bytes()[:100])  # truncated: loading it would crash the process
    engine, again = engines.compiled("tl2cgen", text, sha)
    assert again["built"] is True
    assert np.array_equal(engine.predict(x, 1), booster.predict(x))


def _slow_build(folder: Path) -> dict[str, Any]:
    import time

    with open(folder.parent / "builds.log", "a") as log:
        log.write("built\n")
    time.sleep(0.5)  # both processes are inside `cached_build` at once
    return _fake_build(folder)


def _build_in_child(root: str) -> str:
    folder, _, _ = engine_cache.cached_build("b" * 64, "lleaves", "v1", _slow_build, Path(root))
    return str(folder)


def test_two_processes_building_one_entry_get_one_result(tmp_path: Path) -> None:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        folders = pool.map(_build_in_child, [str(tmp_path), str(tmp_path)])
    assert folders[0] == folders[1]
    assert (tmp_path / "builds.log").read_text() == "built\n"  # the second found the first one's entry
    assert engine_cache.damage(Path(folders[0])) is None
    assert [p.name for p in tmp_path.iterdir() if "building" in p.name] == []


def test_the_budget_gate_checks_what_training_measured(project: batchml.Project, loans_csv: Path) -> None:
    gate = "\n[models.default_risk.gates.budget]\nmax_model_bytes = 1000\nmin_rows_per_s = 1.0\n"
    project = configure(project, loans_csv, gate)
    batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    budget = model.card["budget"]
    assert budget["model_bytes"] == model.model_file.size > 1000
    assert budget["row_latency_ms_p99"] > 0 and budget["rows_per_s"] > 1.0
    checks = {c["name"]: c for c in model.card["gates"]["checks"] if c["gate"] == "budget"}
    assert checks["model bytes"]["passed"] is False
    assert "bytes > 1,000 bytes with engine lightgbm" in checks["model bytes"]["detail"]
    assert checks["rows per second"]["passed"] is True
    assert model.card["gates"]["passed"] is False
    from tests.cli.test_cli import cli_json

    shown = cli_json(project, "models", "show", "default_risk")
    assert shown["budget"] == json.loads(json.dumps(budget))
    assert set(shown["budget"]) >= {"model_bytes", "row_latency_ms_p99", "rows_per_s"}


def test_the_run_key_changes_with_the_engine(
    champion: batchml.ModelVersion, project: batchml.Project
) -> None:
    from batchml.data import datasets
    from batchml.models.lineage import code_version
    from batchml.scoring.runs import ScoringOptions, run_id_of, run_key

    for name in COMPILED:
        needs(name)
    dataset = datasets.get_version(project.storage, "loans@latest")
    keys = {
        name: run_key(champion, dataset, code_version(), ScoringOptions(engine=name)) for name in COMPILED
    }
    lightgbm = run_key(champion, dataset, code_version(), ScoringOptions())
    assert len({run_id_of(k) for k in [lightgbm, *keys.values()]}) == 3


def test_partitions_score_with_the_engine_their_plan_chose_into_the_sequential_run(
    project: batchml.Project, loans_csv: Path
) -> None:
    needs("tl2cgen")
    from batchml.api import scoring_inputs
    from batchml.models.registry import Registry
    from batchml.scoring.partitions import commit_partitions, new_scored_at, plan_partitions, score_partition

    project = configure(project, loans_csv, '\n[models.default_risk.scoring]\nengine = "auto"\n')
    batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    batchml.promote(project, "default_risk", model.version, reason="test")
    chosen, version, options = scoring_inputs(project, "default_risk", engine="tl2cgen")
    assert options.engine == "tl2cgen"
    booster, engine = engine_choice.load_engine(Registry(project.storage), chosen, options.engine)
    scored_at = new_scored_at()
    results = [
        score_partition(
            project.storage,
            chosen,
            booster,
            version,
            groups,
            index=i,
            scored_at=scored_at,
            options=options,
            engine=engine,
        )
        for i, groups in enumerate(plan_partitions(project.storage, version, 2))
    ]
    run = commit_partitions(project.storage, chosen, version, results, scored_at=scored_at, options=options)
    assert run.manifest["key"]["engine"] == engines.engine_version("tl2cgen")
    with pytest.raises(ValueError, match="engine 'lightgbm' given, but the scoring options name 'tl2cgen'"):
        score_partition(
            project.storage, chosen, booster, version, [], index=0, scored_at=scored_at, options=options
        )
    from batchml.scoring.runs import score

    sequential = score(project.storage, chosen, booster, version, options=options, engine=engine)
    assert sequential.reused and sequential.run_id == run.run_id  # the same work: the same run
