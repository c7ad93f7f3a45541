"""Reason codes: signed contributions, for the rows the config selects, equal however the run is cut."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import batchml
from batchml.cli import app
from batchml.config import parse_config
from batchml.data import datasets
from batchml.errors import ConfigError
from batchml.models.features import encode
from batchml.models.registry import Registry
from batchml.monitoring import audit
from batchml.scoring import run_checksum
from batchml.scoring.reason_rows import top_threshold
from tests.checks.test_expectations import ROW, snapshot_variant
from tests.conftest import PROJECT_TOML


def configure(project: batchml.Project, loans_csv: Path, **scoring: Any) -> batchml.Project:
    """`project` reopened with `[models.default_risk.scoring]` set to `scoring`."""
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in scoring.items())
    path = project.base_dir / "batchml.toml"
    path.write_text(PROJECT_TOML.format(source=loans_csv) + "\n[models.default_risk.scoring]\n" + lines)
    return batchml.Project.open(path)


def rows_of(project: batchml.Project, run: batchml.PredictionRun) -> pa.Table:
    return pa.concat_tables(pq.read_table(Path(project.storage.root, f.path)) for f in run.files)


def selected(table: pa.Table) -> np.ndarray:
    return np.asarray(pc.is_valid(table.column("reasons")).to_numpy(zero_copy_only=False))


def test_reasons_are_signed_contributions_that_add_up_to_the_raw_score(
    project: batchml.Project, champion: batchml.ModelVersion, loans_csv: Path
) -> None:
    project = configure(project, loans_csv, reason_codes=20, reason_rows="all")
    run = batchml.score(project, "default_risk")
    table = rows_of(project, run)
    source = datasets.read_frame(project.storage, datasets.get_version(project.storage, "loans@latest"))
    matrix = encode(source.to_arrow(), champion.features)
    booster = Registry(project.storage).load_booster(champion)
    bias = booster.predict(matrix, pred_contrib=True)[:, -1]
    reasons = table.column("reasons").to_pylist()
    assert all(len(r) == len(champion.features) for r in reasons)  # 20 asked, every feature there is
    totals = np.array([sum(c["contribution"] for c in r) for r in reasons]) + bias
    assert np.allclose(totals, booster.predict(matrix, raw_score=True), rtol=0, atol=1e-9)
    assert all(
        [abs(c["contribution"]) for c in r] == sorted((abs(c["contribution"]) for c in r), reverse=True)
        for r in reasons
    )
    # A higher credit score lowers the risk of default: its contribution is negative for good scores.
    credit = {
        rid: next(c["contribution"] for c in r if c["feature"] == "credit_score")
        for rid, r in zip(table.column("entity_id").to_pylist(), reasons, strict=True)
    }
    scores = dict(zip(source["loan_id"].to_list(), source["credit_score"].to_list(), strict=True))
    good = [credit[i] for i, s in scores.items() if s >= 760]
    poor = [credit[i] for i, s in scores.items() if s <= 600]
    assert good and poor and np.mean(good) < 0 < np.mean(poor)
    assert sum(c < 0 for c in good) > 0.9 * len(good)


def test_top_rows_are_those_scoring_at_or_above_the_models_threshold(
    project: batchml.Project, champion: batchml.ModelVersion, loans_csv: Path
) -> None:
    project = configure(project, loans_csv, reason_codes=3, reason_rows="top", reason_share=0.2)
    run = batchml.score(project, "default_risk")
    params = run.manifest["key"]["params"]
    expected = top_threshold(champion.card["profile"]["reference"]["predictions"], 0.2, champion.ref)
    assert (params["reason_rows"], params["reason_share"], params["reason_threshold"]) == (
        "top",
        0.2,
        expected,
    )
    table = rows_of(project, run)
    got = selected(table)
    assert np.array_equal(got, table.column("prediction").to_numpy() >= expected)
    assert 0.1 < got.mean() < 0.3  # the run scores the reference data: about the share asked for
    assert all(len(r) == 3 for r in table.column("reasons").filter(pa.array(got)).to_pylist())


def test_flagged_rows_get_reasons_and_no_other_rows(
    project: batchml.Project, champion: batchml.ModelVersion, loans_csv: Path
) -> None:
    project = configure(project, loans_csv, reason_codes=2, reason_rows="flagged")
    ref = snapshot_variant(
        project,
        loans_csv,
        lambda df: df.with_columns(amount=pl.when(ROW % 40 == 3).then(9e9).otherwise("amount")),
    )
    table = rows_of(project, batchml.score(project, "default_risk", dataset=ref))
    flagged = np.asarray(pc.list_value_length(table.column("flags")).to_numpy(zero_copy_only=False) > 0)
    assert flagged.sum() >= 100 and not flagged.all()
    assert np.array_equal(selected(table), flagged)


def test_reason_settings_are_part_of_the_run_key(
    project: batchml.Project, champion: batchml.ModelVersion, loans_csv: Path
) -> None:
    plain = batchml.score(configure(project, loans_csv), "default_risk")
    assert "reason_rows" not in plain.manifest["key"]["params"]  # reasons off: the mode changes nothing
    ids = {
        batchml.score(configure(project, loans_csv, reason_codes=3, **extra), "default_risk").run_id
        for extra in ({}, {"reason_share": 0.2}, {"reason_rows": "flagged"}, {"reason_rows": "all"})
    }
    assert len(ids) == 4 and plain.run_id not in ids


def test_the_default_is_the_top_half_percent() -> None:
    spec = {
        "dataset": "d",
        "entity_id": "id",
        "target": "y",
        "task": "binary",
        "scoring": {"reason_codes": 3},
    }
    scoring = parse_config({"models": {"m": spec}}).models["m"].scoring
    assert (scoring.reason_rows, scoring.reason_share) == ("top", 0.005)  # by benchmarks/reason_codes.py


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"reason_rows": "worst"}, "reason_rows: must be 'top', 'flagged' or 'all' (got 'worst')"),
        ({"reason_share": 0}, "reason_share: must be a number, above 0.0 (got 0)"),
        ({"reason_share": 1.5}, "reason_share: must be a number, at most 1.0 (got 1.5)"),
    ],
)
def test_bad_reason_settings_are_refused_in_one_line(setting: dict[str, Any], message: str) -> None:
    spec = {"dataset": "d", "entity_id": "id", "target": "y", "task": "binary", "scoring": setting}
    with pytest.raises(ConfigError) as caught:
        parse_config({"models": {"m": spec}})
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_explain_agrees_with_the_stored_reasons(
    project: batchml.Project, champion: batchml.ModelVersion, loans_csv: Path
) -> None:
    project = configure(project, loans_csv, reason_codes=3, reason_rows="top", reason_share=0.3)
    run = batchml.score(project, "default_risk")
    batchml.publish(project, "default_risk", run.run_id)
    table = rows_of(project, run)
    chosen = table.column("entity_id").filter(pa.array(selected(table)))[0].as_py()
    other = table.column("entity_id").filter(pa.array(~selected(table)))[0].as_py()
    result = audit.explain(project.storage, "default_risk", chosen)
    assert result["rederived"]["matches"] is True
    assert result["receipt"]["reasons"] == result["rederived"]["reasons"]
    assert [r["feature"] for r in result["receipt"]["reasons"]] == [
        c["feature"] for c in result["contributions"][:3]
    ]
    config = str(project.base_dir / "batchml.toml")
    shown = CliRunner().invoke(app, ["--config", config, "predictions", "explain", "default_risk", chosen])
    first = result["receipt"]["reasons"][0]
    assert shown.exit_code == 0 and f"{first['feature']} {first['contribution']:+.6f}" in shown.stdout
    unselected = audit.explain(project.storage, "default_risk", other)
    assert unselected["rederived"]["matches"] is True and unselected["receipt"]["reasons"] is None
    with batchml.connect(project) as con:  # served as a list of structs, signs included
        served = con.execute(
            "SELECT reasons[1].feature, reasons[1].contribution FROM predictions WHERE entity_id = ?",
            [chosen],
        ).fetchone()
    assert served == (
        result["receipt"]["reasons"][0]["feature"],
        result["receipt"]["reasons"][0]["contribution"],
    )


#: The checksum function manifests recorded before reasons carried contributions (must never drift).
RECORDED_BEFORE = (
    "count(*), bit_xor(hash(CAST(entity_id AS VARCHAR), CAST(prediction AS DOUBLE), CAST(predicted_class AS "
    "VARCHAR), CAST(input_hash AS UBIGINT), CAST(reasons AS VARCHAR[]), CAST(flags AS VARCHAR[])))"
)


def _make_legacy(project: batchml.Project, run: batchml.PredictionRun) -> None:
    """Rewrite `run` as batchml wrote it before contributions: reasons as names, its manifest to match."""
    for entry in run.files:
        path = Path(project.storage.root, entry.path)
        table = pq.read_table(path)
        names = [
            None if r is None else [c["feature"] for c in r] for r in table.column("reasons").to_pylist()
        ]
        index = table.schema.get_field_index("reasons")
        table = table.set_column(index, "reasons", pa.array(names, pa.list_(pa.string())))
        path.unlink()
        pq.write_table(table, path)
    manifest = dict(run.manifest)
    manifest["files"] = [_entry(project, f.path) for f in run.files]
    with duckdb.connect() as con:  # the checksum as the code of that time computed it
        uris = [project.storage.uri(f.path) for f in run.files]
        rows, value = con.execute(
            f"SELECT {run_checksum.LEGACY_FUNCTION} FROM read_parquet(?)", [uris]
        ).fetchone() or (0, 0)
    manifest["content_checksum"] = {
        "function": run_checksum.LEGACY_FUNCTION,
        "engine": f"duckdb {duckdb.__version__}",
        "probe": run_checksum._probe(run_checksum.LEGACY_FUNCTION),
        "rows": rows,
        "value": f"{int(value):016x}",
    }
    relpath = f"runs/{run.model}/manifests/{run.run_id}.json"
    project.storage.delete(relpath)
    project.storage.create_json(relpath, manifest)


def _entry(project: batchml.Project, relpath: str) -> dict[str, Any]:
    data = Path(project.storage.root, relpath).read_bytes()
    return {"path": relpath, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_runs_published_before_contributions_still_serve(
    project: batchml.Project,
    champion: batchml.ModelVersion,
    loans_csv: Path,
    run_file_reads: list[str],
) -> None:
    assert run_checksum.LEGACY_FUNCTION == RECORDED_BEFORE
    old = batchml.score(configure(project, loans_csv, reason_codes=2, reason_rows="all"), "default_risk")
    _make_legacy(project, old)
    batchml.publish(project, "default_risk", old.run_id)
    query = "SELECT reasons FROM predictions WHERE entity_id = 'L000000042'"
    with batchml.connect(project) as con:
        (reasons,) = con.execute(query).fetchone() or (None,)
    assert [r["contribution"] for r in reasons] == [None, None] and all(r["feature"] for r in reasons)

    run_file_reads.clear()
    new = batchml.score(configure(project, loans_csv, reason_codes=3, reason_rows="all"), "default_risk")
    batchml.publish(project, "default_risk", new.run_id)
    assert run_file_reads == [new.run_id]  # the legacy run: copied, its old checksum met
    with batchml.connect(project, history=True) as con:  # the legacy run read from its own files
        history = con.execute(
            "SELECT run_id, reasons[1].contribution IS NULL FROM prediction_history "
            "WHERE entity_id = 'L000000042'"
        ).fetchall()
    assert sorted(history) == sorted([(old.run_id, True), (new.run_id, False)])
