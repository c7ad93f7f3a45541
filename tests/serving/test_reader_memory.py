"""`[serving]` sizes the readers: their caps, which runs the serving file indexes, and a warning for a reader
too small for the file's indexes (DuckDB never frees the index memory a query loads)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

import batchml
from batchml.cli import app
from batchml.serving.operations import catch_up
from batchml.testing import write_loans
from tests.conftest import PROJECT_TOML
from tests.serving.test_serving import readers_of

INDEXES = "SELECT count(*) FROM duckdb_indexes()"
SIZED_FOR = "SELECT reader_memory_limit, reader_memory_bytes, indexed_rows FROM serving_info"


def test_readers_take_their_caps_from_the_serving_setting(
    make_project: Callable[..., batchml.Project], loans_csv: object
) -> None:
    """`batchml.connect` and `batchml query` cap readers by `[serving]` unless the caller passes caps."""
    serving = '\n[serving]\nreader_memory_limit = "256MB"\nreader_threads = 1\n'
    toml = PROJECT_TOML.format(source=loans_csv) + serving
    project = make_project(toml)
    batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    batchml.promote(project, "default_risk", model.version, reason="test")
    batchml.publish(project, "default_risk", batchml.score(project, "default_risk").run_id)
    caps = "SELECT current_setting('memory_limit') AS memory, current_setting('threads') AS threads"
    with batchml.connect(project) as con:
        assert con.execute(caps).fetchone() == ("244.1 MiB", 1)  # 256 x 10^6 bytes, as DuckDB shows it
        assert con.execute(SIZED_FOR).fetchone() == ("256MB", 256 * 10**6, 4000)
    with batchml.connect(project, memory_limit="512MB", threads=2) as con:  # the caller's caps win
        assert con.execute(caps).fetchone() == ("488.2 MiB", 2)
    result = CliRunner().invoke(
        app, ["--config", str(project.base_dir / "batchml.toml"), "query", caps, "--json"],
        env={"BATCHML_CONFIG": None, "BATCHML_STORAGE": None},
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert '"memory": "244.1 MiB"' in result.stdout and '"threads": 1' in result.stdout


def test_the_index_follows_the_reader_memory_setting_at_the_next_build(
    project: batchml.Project, published: batchml.PredictionRun, run_file_reads: list[str]
) -> None:
    """Whether a run is indexed is decided at every build from the setting, also for a run copied from the
    previous file; a changed setting rebuilds the file at the next command (the file follows from the logs
    and the setting), and the file records the readers it was sized for."""
    with batchml.connect(project) as con:
        assert con.execute(INDEXES).fetchone() == (1,)
        assert con.execute(SIZED_FOR).fetchone() == ("2GB", 2 * 10**9, published.rows)
    small = readers_of(project, "100KB")  # 4,000 rows need 360 KB of reader memory
    why = "its indexes are sized for readers with 2GB, [serving] reader_memory_limit is 100KB"
    assert catch_up(small) == [why]
    assert catch_up(small) == []  # once
    with batchml.connect(project) as con:
        assert con.execute(INDEXES).fetchone() == (0,)
        assert con.execute(SIZED_FOR).fetchone() == ("100KB", 10**5, 0)
        assert con.execute("SELECT count(*) FROM predictions").fetchone() == (published.rows,)
    assert catch_up(project) and run_file_reads == []  # back to 2GB: indexed again, copied, not re-read
    with batchml.connect(project) as con:
        assert con.execute(INDEXES).fetchone() == (1,)
        assert con.execute(SIZED_FOR).fetchone() == ("2GB", 2 * 10**9, published.rows)
    assert catch_up(readers_of(project, "2000MB")) == []  # the same bytes: nothing to rebuild


def test_a_reader_too_small_for_the_files_indexes_is_warned_once_at_connect(
    project: batchml.Project, champion: batchml.ModelVersion, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No DuckDB setting keeps plain SQL off an index it cannot hold (`index_scan_max_count = 0` is
    compared after the ART lookup), so the reader is told when it opens: the indexed rows, what they need,
    its limit, and how to fix it. `batchml.lookup` on it stays off the index."""
    version = batchml.snapshot_dataset(project, "loans", str(write_loans(tmp_path / "l.csv", rows=100_000)))
    run = batchml.score(project, "default_risk", dataset=version.ref)
    batchml.publish(project, "default_risk", run.run_id)
    with caplog.at_level(logging.WARNING, logger="batchml.serving.readers"):
        batchml.connect(project).close()  # 2GB: holds the 100,000-row index
        assert caplog.records == []
        con = batchml.connect(project, memory_limit="8MB")
        history = batchml.connect(readers_of(project, "8MB"), history=True)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "\n" not in lines[0]
    assert lines[0].startswith(
        "this reader's memory_limit 8MB cannot hold the serving file's indexes (100000 indexed rows need 9MB)"
    )
    assert "memory_limit='9MB' or more, or set [serving] reader_memory_limit" in lines[0]
    key = "L000000042"
    assert batchml.lookup(con, "default_risk", [key]).column("entity_id").to_pylist() == [key]
    art = "SELECT memory_usage_bytes FROM duckdb_memory() WHERE tag = 'ART_INDEX'"
    assert con.execute(art).fetchone() == (0,)
    con.close()
    history.close()
