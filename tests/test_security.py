"""Security: locked-down reader connections, `batchml query` limits, quoting, path traversal, redaction."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import pytest
from typer.testing import CliRunner

import batchml
from batchml import api
from batchml.cli import app
from batchml.data import datasets, labels
from batchml.errors import (
    BatchMLError,
    ConfigError,
    IntegrityError,
    InvalidNameError,
    NotFoundError,
    QueryTimeoutError,
    ReadOnlyError,
)
from batchml.models.registry import Registry
from batchml.monitoring import audit
from batchml.redact import redact, redact_options, redact_url
from batchml.scoring.runs import get_run
from batchml.store.storage import Storage, check_relpath
from tests.conftest import PROJECT_TOML

runner = CliRunner()


def cli(config: Path, *args: str, code: int = 0) -> Any:
    result = runner.invoke(app, ["--config", str(config), *args], env={"BATCHML_STORAGE": None})
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, loans_csv: Path) -> Iterator[tuple[Any, Any]]:
    """A project whose folder name holds a quote (SQL literals must be escaped), with a published run."""
    root = tmp_path_factory.mktemp("sec") / "it's a project"
    root.mkdir()
    (root / "batchml.toml").write_text(PROJECT_TOML.format(source=loans_csv))
    project = batchml.Project.open(root / "batchml.toml")
    batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    batchml.promote(project, "default_risk", model.version, reason="fixture")
    run = batchml.score(project, "default_risk")
    batchml.publish(project, "default_risk", run.run_id)
    yield project, run


def test_a_storage_root_with_a_quote_publishes_and_stages(published: tuple[Any, Any]) -> None:
    project, run = published
    api.stage(project, "default_risk", run.run_id)
    from batchml.serving.staging import compare

    assert compare(project.storage, "default_risk")["common_entities"] == run.rows
    with batchml.connect(project) as con:
        assert con.execute("SELECT count(*) FROM predictions_staging").fetchone() == (run.rows,)
    with batchml.connect(project, history=True) as con:  # the run files' paths hold the quote too
        assert con.execute("SELECT count(*) FROM prediction_history").fetchone() == (run.rows,)


def test_reader_connections_are_read_only_without_file_access(
    published: tuple[Any, Any], tmp_path: Path
) -> None:
    project, run = published
    with batchml.connect(project) as con:
        assert con.execute("SELECT current_setting('enable_external_access')").fetchone() == (False,)
        # the served predictions are inside the file: they need no access to the run files
        assert con.execute("SELECT count(*) FROM predictions").fetchone() == (run.rows,)
        refused = [
            "CREATE TABLE x AS SELECT 1",
            "SELECT * FROM read_csv('/etc/passwd')",
            f"COPY predictions TO '{tmp_path}/out.csv'",
            f"COPY predictions TO '{project.storage.root}/runs/x.parquet' (FORMAT parquet, USE_TMP_FILE 0)",
            "SET enable_external_access = true",
            "SET allowed_directories = ['/']",
            "RESET lock_configuration",
            f"ATTACH '{tmp_path}/other.duckdb'",
            "INSTALL httpfs",
            "LOAD httpfs",
        ]
        for sql in refused:
            with pytest.raises(duckdb.Error):
                con.execute(sql)
    assert not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "other.duckdb").exists()
    assert not Path(project.storage.root, "runs", "x.parquet").exists()


QUERIES_REFUSED = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_parquet('/tmp/x.parquet')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM '/etc/passwd'",
    "ATTACH '/tmp/evil.duckdb' AS evil",
    "COPY predictions TO '/tmp/leak.csv'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "PRAGMA enable_profiling",
    "CREATE TABLE t AS SELECT 1",
    "DELETE FROM predictions",
    "SELECT 1; DROP TABLE predictions",
]


def test_query_rejects_writes_and_file_access(published: tuple[Any, Any]) -> None:
    project, run = published
    with batchml.connect(project) as con:
        for sql in QUERIES_REFUSED:
            with pytest.raises(BatchMLError):  # ReadOnlyError, or "no such table" for a bare file name
                batchml.query(con, sql)
        for sql in QUERIES_REFUSED[:4]:
            with pytest.raises(ReadOnlyError, match="may read only the serving database"):
                batchml.query(con, sql)
        assert batchml.query(con, "SELECT count(*) AS n FROM predictions") == (["n"], [(run.rows,)])
    config = project.base_dir / "batchml.toml"
    result = cli(config, "query", "SELECT * FROM read_csv('/etc/passwd')", code=1)
    assert "error: query may read only the serving database" in result.stderr
    assert "root:" not in result.stdout + result.stderr


RUNAWAY = "SELECT count(*) FROM range(1000000000000)"  # runs for hours without a limit


def test_readers_are_capped_in_memory_and_threads_and_cannot_lift_the_caps(
    published: tuple[Any, Any],
) -> None:
    project, _ = published
    with batchml.connect(project) as con:
        caps = "SELECT current_setting('memory_limit'), current_setting('threads')"
        limit, threads = con.execute(caps).fetchone() or (None, None)
        assert limit == "1.8 GiB" and threads == 2  # "2GB" as DuckDB shows it
        for sql in ["SET memory_limit = '100GB'", "SET threads = 64", "RESET memory_limit"]:
            with pytest.raises(duckdb.Error):
                con.execute(sql)
    with batchml.connect(project, memory_limit="256MB", threads=1) as con:
        assert con.execute("SELECT current_setting('threads')").fetchone() == (1,)
    for bad in [{"memory_limit": "lots"}, {"threads": 0}, {"threads": True}]:
        with pytest.raises(ConfigError, match="is invalid: use"):
            batchml.connect(project, **bad)


def test_a_runaway_query_is_interrupted_at_its_timeout(published: tuple[Any, Any]) -> None:
    project, run = published
    with batchml.connect(project) as con:
        with pytest.raises(QueryTimeoutError, match=r"interrupted after 0.5 s"):
            batchml.query(con, RUNAWAY, timeout=0.5)
        # the connection is still usable, and a quick query is not touched by a timer that has ended
        count = batchml.query(con, "SELECT count(*) AS n FROM predictions", timeout=30)
        assert count == (["n"], [(run.rows,)])
        with pytest.raises(ConfigError, match="timeout 0 is invalid"):
            batchml.query(con, "SELECT 1", timeout=0)
    config = project.base_dir / "batchml.toml"
    result = cli(config, "query", RUNAWAY, "--timeout", "1", code=1)
    assert result.stderr.startswith("error: query interrupted after 1 s, its time limit")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    cli(config, "query", "SELECT 1", "--timeout", "0", code=2)  # usage error: not a positive duration


# A trailing newline or any control character is refused too: names are matched whole (`$` alone would let
# "loans\n" through and create a folder of that name).
BAD_NAMES = ["../x", "..", "/etc/passwd", "a/../../b", "x/y", "X", "", "a\x00b", "a b"]
BAD_NAMES += ["loans\n", "champion\n", "a\tb", "a\r", "\nloans"]
BAD_RUN_IDS = ["../../../etc/passwd", "..", "/etc/passwd", "a/../../b", "", "a\\..\\b", "x/../y", "abc\n"]


def test_names_cannot_escape_the_storage_root(published: tuple[Any, Any], tmp_path: Path) -> None:
    project, run = published
    storage = project.storage
    csv = str(tmp_path / "nothing.csv")
    before = sorted(p for p in Path(storage.root).parent.rglob("*") if "serving" not in p.parts)
    for name in BAD_NAMES:
        calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
            (batchml.snapshot_dataset, (project, name, csv), {}),  # dataset
            (datasets.get_version, (storage, f"{name}@latest"), {}),
            (batchml.train, (project, name), {}),  # model
            (batchml.score, (project, name), {}),
            (batchml.publish, (project, name, run.run_id), {}),
            (api.stage, (project, name, run.run_id), {}),
            (batchml.promote, (project, "default_risk", 1), {"alias": name}),  # alias
            (Registry(storage).resolve, ("default_risk",), {"alias": name}),
            (labels.ingest, (project, name, csv), {}),  # labels dataset
            (audit.explain, (storage, name, "L000000001"), {}),
        ]
        for function, args, kwargs in calls:
            with pytest.raises(InvalidNameError):
                function(*args, **kwargs)
    for version in ["../x", "..", "/etc/passwd", "a/../../b", "x/y", "a b", "abc\n"]:  # dataset version
        with pytest.raises(InvalidNameError):
            datasets.get_version(storage, f"loans@{version}")
    for run_id in BAD_RUN_IDS:  # run id
        for function, args, kwargs in [
            (get_run, (storage, "default_risk", run_id), {}),
            (batchml.publish, (project, "default_risk", run_id), {}),
            (audit.explain, (storage, "default_risk", "nobody"), {"run_id": run_id}),
        ]:
            with pytest.raises((InvalidNameError, NotFoundError)):
                function(*args, **kwargs)
        with pytest.raises(InvalidNameError):
            check_relpath(f"runs/default_risk/manifests/{run_id}.json" if run_id else "")
    # an entity id is data, never a path or SQL: hostile ones are simply not found
    for entity in ["../../etc/passwd", "' OR 1=1 --", "L000000001'; DROP TABLE predictions; --"]:
        with pytest.raises(NotFoundError):
            audit.explain(storage, "default_risk", entity)
    entity = _some_entity(project)
    assert audit.explain(storage, "default_risk", entity)["entity_id"] == entity
    after = sorted(p for p in Path(storage.root).parent.rglob("*") if "serving" not in p.parts)
    assert after == before  # nothing was written anywhere


def _some_entity(project: batchml.Project) -> str:
    with batchml.connect(project) as con:
        row = con.execute("SELECT entity_id FROM predictions LIMIT 1").fetchone()
    assert row is not None
    return str(row[0])


# -- redaction ----------------------------------------------------------------------------------------------
URL_SECRET = "urlpass-3f9a"
OPTION_SECRET = "opt-token-77c1"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"


def test_redact_masks_credentials_and_keeps_the_rest() -> None:
    assert redact_url(f"s3://{KEY_ID}:{URL_SECRET}@bucket/x") == "s3://***@bucket/x"
    assert redact_url(f"https://user:{URL_SECRET}@host/p?token={OPTION_SECRET}&region=eu") == (
        "https://***@host/p?token=***&region=eu"
    )
    options = {"key": KEY_ID, "secret": URL_SECRET, "endpoint_url": "http://127.0.0.1:5000"}
    assert redact(str(options)) == "{'key': '***', 'secret': '***', 'endpoint_url': 'http://127.0.0.1:5000'}"
    assert redact_options({**options, "client_kwargs": {"aws_session_token": "t"}}) == {
        "key": "***",
        "secret": "***",
        "endpoint_url": "http://127.0.0.1:5000",
        "client_kwargs": {"aws_session_token": "***"},
    }
    assert redact(f"password: {URL_SECRET} and aws_secret_access_key={URL_SECRET}") == (
        "password: *** and aws_secret_access_key=***"
    )
    assert redact(f"id {KEY_ID}") == "id ***"
    harmless_texts = [
        "memory://bucket/x",
        "run key: 3fa9",
        "sorted keys: a, b",
        "/data/store/runs/x.parquet",
        "use KEY=VALUE, e.g. --param num_leaves=63",
        "monkey=3",
    ]
    for harmless in harmless_texts:
        assert redact(harmless) == harmless
    assert URL_SECRET not in str(BatchMLError(f"cannot reach s3://u:{URL_SECRET}@b/x"))
    with pytest.raises(ConfigError, match="has credentials in it") as refused:
        Storage(f"memory://u:{URL_SECRET}@b-{uuid.uuid4().hex}/x")
    assert URL_SECRET not in str(refused.value)


def test_log_lines_are_redacted_on_every_batchml_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in [
        "batchml",
        "batchml.serving.database",
        "batchml.serving.gc",
        "batchml.cli._serving",
        "batchml.models.training",
    ]:
        logging.getLogger(name).warning("store %s options %s", f"s3://k:{URL_SECRET}@b/x", {"token": "tk-1"})
    assert len(caplog.records) == 5
    assert URL_SECRET not in caplog.text and "tk-1" not in caplog.text
    assert "s3://***@b/x" in caplog.text


def test_storage_library_logs_and_tracebacks_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    Storage(f"memory://b-{uuid.uuid4().hex}/x")  # puts the filter on fsspec's loggers
    for name in ["fsspec", "fsspec.local", "fsspec.caching"]:
        logging.getLogger(name).debug("open %s", f"s3://k:{URL_SECRET}@b/x?token={OPTION_SECRET}")
    try:
        raise OSError(f"cannot reach https://u:{URL_SECRET}@host/x")
    except OSError:
        logging.getLogger("fsspec").exception("request failed")
    handler = logging.StreamHandler(io.StringIO())
    for record in caplog.records:
        handler.handle(record)
    printed = handler.stream.getvalue()
    assert len(caplog.records) == 4 and "cannot reach https://***@host/x" in printed
    _secret_free(caplog.text + printed, "fsspec's log lines")


def _secret_free(text: str, where: str) -> None:
    for secret in (URL_SECRET, OPTION_SECRET):
        assert secret not in text, f"{secret} leaked into {where}"


def test_credentials_never_reach_logs_errors_artifacts_or_the_serving_db(
    tmp_path: Path, loans_csv: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bucket = f"bkt-{uuid.uuid4().hex[:12]}"
    with_url_secret = PROJECT_TOML.format(source=loans_csv).replace(
        'root = "store"', f'root = "memory://user:{URL_SECRET}@{bucket}/store"'
    )
    (tmp_path / "batchml.toml").write_text(with_url_secret)
    config = tmp_path / "batchml.toml"
    refusal = r"storage URL 'memory://\*\*\*@.*' has credentials in it"
    with pytest.raises(ConfigError, match=refusal) as refused:
        batchml.Project.open(config)
    _secret_free(str(refused.value), "the refusal")
    toml = PROJECT_TOML.format(source=loans_csv).replace(
        'root = "store"',
        f'root = "memory://{bucket}/store"\nserving_dir = "serving"\n'
        f'options = {{ token = "{OPTION_SECRET}" }}',
    )
    (tmp_path / "batchml.toml").write_text(toml)
    project = batchml.Project.open(config)
    batchml.snapshot_dataset(project, "loans")
    model = batchml.train(project, "default_risk")
    batchml.promote(project, "default_risk", model.version, reason="secrets test")
    run = batchml.score(project, "default_risk")
    batchml.publish(project, "default_risk", run.run_id)

    # a memory:// store: history readers reach the run files through the store's own fsspec filesystem
    with batchml.connect(project, history=True) as con:
        assert con.execute("SELECT count(*) FROM prediction_history").fetchone() == (run.rows,)
    with batchml.connect(project) as con:
        assert con.execute("SELECT storage FROM serving_info").fetchone() == (f"memory://{bucket}/store",)
        dump = [
            str(con.execute(f'SELECT * FROM "{table}"').fetchall())
            for (table,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        ]
    _secret_free("\n".join(dump), "the serving database")
    _secret_free(batchml.database_path(project).resolve().read_bytes().decode("latin-1"), "the serving file")

    fs = fsspec.filesystem("memory")
    for path in fs.find(project.storage.root):  # manifests, cards, event logs, data files
        _secret_free(fs.cat_file(path).decode("latin-1"), path)

    _secret_free(repr(project.storage), "Storage repr")
    info = json.loads(cli(config, "info", "--json").stdout)
    assert info["storage"] == f"memory://{bucket}/store"
    _secret_free(json.dumps(info), "batchml info")

    entry = run.files[0]
    fs.pipe_file(project.storage.full_path(entry.path), b"corrupted")
    with pytest.raises(IntegrityError) as caught:
        project.storage.verify(entry)
    assert f"memory://{bucket}/store/runs/" in str(caught.value)
    _secret_free(str(caught.value), "an integrity error")
    failed = cli(config, "catalog", "rebuild", code=1)
    assert "integrity check failed" in failed.stderr
    _secret_free(failed.stdout + failed.stderr, "CLI error output")

    # every batchml log line (third-party debug logs, e.g. fsspec's of memory:// paths, are not ours)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith(("batchml", "flows"))]
    assert ours  # the publish logged something, redacted
    _secret_free("\n".join(ours), "the logs")
