"""Serving files open in DuckDB 1.4 (the LTS release), in its Python client and its CLI, not only in ours.

DuckDB 1.4 and its CLI run from their own virtualenv, which `make test` builds beside `.venv`. Without it the
test skips, saying why; with CI set it fails instead, since CI must check this.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

import batchml
from batchml.serving.readers import READER_CONFIG
from tests.serving.test_serving import second_run

#: README's example queries, as a reader runs them.
QUERIES = {
    "point": "SELECT prediction, predicted_class, model_version, run_id FROM predictions "
    "WHERE model = 'default_risk' AND entity_id = 'L000000042'",
    "aliases": "SELECT model, alias, version FROM model_aliases ORDER BY ALL",
    "alias_at": "SELECT alias_at('default_risk', 'champion', now()) AS version",
    "history": "SELECT model, model_version, run_id, rows, len(files) FROM published_runs ORDER BY scored_at",
    "index": "SELECT count(*) FROM duckdb_indexes() WHERE starts_with(table_name, 'run__')",
    "count": "SELECT count(*) AS n, count(DISTINCT entity_id) AS ids FROM predictions",
    "run_stats": "SELECT run_id, publish_seq, publish_s > 0, rows_per_s > 0 FROM run_stats ORDER BY run_id",
}
_READ = """
import json, sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True, config=json.loads(sys.argv[2]))
queries = json.loads(sys.argv[3])
answers = {name: [list(r) for r in con.execute(sql).fetchall()] for name, sql in queries.items()}
found = {"version": duckdb.__version__, "answers": answers}
print(json.dumps(found, default=str))
"""


#: Built by `make test` (the Makefile pins DuckDB 1.4 and its CLI there), so this test needs no network.
LTS_VENV = Path(__file__).resolve().parents[2] / ".venv-duckdb-lts"


@pytest.fixture(scope="session")
def lts_venv() -> Path:
    """The virtualenv with DuckDB 1.4 and its CLI that `make test` builds."""
    if not (LTS_VENV / ".installed-stamp").exists():
        why = f"no DuckDB 1.4 virtualenv at {LTS_VENV}: `make test` builds it"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return LTS_VENV


def _ours(con: object, queries: dict[str, str]) -> dict[str, list[list[str]]]:
    """Our client's answers, as text (the way they cross the process boundary)."""
    return {
        name: [[str(v) for v in row] for row in con.execute(sql).fetchall()]  # type: ignore[attr-defined]
        for name, sql in queries.items()
    }


def lts_answers(lts_venv: Path, path: Path, queries: dict[str, str]) -> dict[str, Any]:
    """DuckDB 1.4's version and answers to `queries` on the serving file `path`, from its Python client."""
    done = subprocess.run(
        [str(lts_venv / "bin" / "python"), "-c", _READ, str(path), json.dumps(READER_CONFIG),
         json.dumps(queries)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _as_text(answers: dict[str, list[list[object]]]) -> dict[str, list[list[str]]]:
    return {name: [[str(v) for v in row] for row in rows] for name, rows in answers.items()}


@pytest.mark.slow
def test_serving_files_open_in_duckdb_lts_python_and_cli(
    project: batchml.Project, published: batchml.PredictionRun, lts_venv: Path
) -> None:
    batchml.publish(project, "default_risk", second_run(project).run_id)  # an incremental build: a copied run
    path = batchml.database_path(project).resolve()
    with batchml.connect(project) as con:
        expected = _ours(con, QUERIES)
    assert expected["aliases"] and expected["alias_at"][0][0] != "None" and len(expected["history"]) == 2

    lts = lts_answers(lts_venv, path, QUERIES)
    assert lts["version"].startswith("1.4.")
    assert _as_text(lts["answers"]) == expected

    cli = lts_venv / "bin" / "duckdb"
    version = subprocess.run([str(cli), "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("v1.4.")
    for name, sql in QUERIES.items():
        shown = subprocess.run(
            [str(cli), "-readonly", "-json", str(path), "-c", sql],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert shown.returncode == 0, f"{name}: {shown.stderr}"
        rows = json.loads(shown.stdout or "[]")
        assert len(rows) == len(expected[name]), name


#: The storage version numbers DuckDB 1.4 reads (its error for a newer file: "can only read versions between
#: 64 and 67"; 2.0's own default is newer).
LTS_STORAGE_VERSIONS = range(64, 68)


def test_serving_files_carry_a_storage_version_duckdb_lts_reads(
    project: batchml.Project, published: batchml.PredictionRun
) -> None:
    """The quick check of the header (the slow test above opens the file with DuckDB 1.4 itself)."""
    header = batchml.database_path(project).resolve().read_bytes()[:20]
    assert header[8:12] == b"DUCK"
    assert int.from_bytes(header[12:20], "little") in LTS_STORAGE_VERSIONS
