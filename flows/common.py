"""What every flow shares: opening the project, the retry policy, the flow run's ids, and the artifacts.

Flows pass the project as `config` (a path to a batchml.toml, or None for $BATCHML_CONFIG / ./batchml.toml)
and every task opens it again, so task inputs and results stay small references, never DataFrames. Every
task calls batchml inside `batchml.provenance.flow_run(...)` with its flow run's ids, so the manifests, cards
and events it writes lead back to that run in the Prefect UI (`runs.flow_run_id` etc. in SQL).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.context import FlowRunContext
from prefect.runtime import deployment, flow_run
from prefect.states import State

import batchml
from batchml import provenance
from batchml.redact import install_log_filter

install_log_filter("prefect")  # flow and task run logs may quote errors that carry a storage URL

P = ParamSpec("P")
R = TypeVar("R")

#: OSErrors that retrying cannot fix: the path is wrong, not the network.
TERMINAL_OS_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def open_project(config: str | None = None) -> batchml.Project:
    """The project of `config` (a batchml.toml path; None: $BATCHML_CONFIG, else ./batchml.toml)."""
    return batchml.Project.open(config)


def config_ref(config: str | Path | None) -> str | None:
    """`config` as an absolute path string, so every task opens the same project whatever its cwd."""
    return None if config is None else str(Path(config).resolve())


def is_transient(exc: BaseException) -> bool:
    """True when retrying may help: a transient BatchMLError, or an I/O error other than a bad path."""
    if isinstance(exc, batchml.BatchMLError):
        return exc.transient
    if isinstance(exc, TERMINAL_OS_ERRORS):
        return False
    return isinstance(exc, OSError | TimeoutError)


def _exception_of(state: State[Any]) -> BaseException | None:
    if isinstance(state.data, BaseException):
        return state.data
    try:
        state.result()
    except BaseException as exc:
        return exc
    return None


def retry_on_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect `retry_condition_fn`: retry transient failures only; terminal errors fail at once."""
    exc = _exception_of(state)
    return exc is not None and is_transient(exc)


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and how long after a transient failure a task is tried again."""

    retries: int = 3
    delays: tuple[float, ...] = (2.0, 10.0, 30.0)

    def task_options(self) -> dict[str, Any]:
        """Keyword arguments for `@task` / `Task.with_options`."""
        return {
            "retries": self.retries,
            "retry_delay_seconds": list(self.delays),
            "retry_condition_fn": retry_on_transient,
        }


RETRY = RetryPolicy()


def operation_key(*parts: str | int) -> str | None:
    """An operation key naming this request within the current flow run (None outside one).

    A retried task, or a retried flow run, gives the same key, so batchml carries the request out once; a
    new flow run gives a new key and decides afresh on the logs as they are (see
    `batchml.serving.operations`).
    """
    run_id = flow_run.id
    return ":".join(["prefect", str(run_id), *map(str, parts)]) if run_id else None


def flow_run_ids() -> dict[str, str | None]:
    """The Prefect flow run this code runs in, as batchml records it (`batchml.provenance`); None outside.

    From the flow run's context where there is one (the flow, and its tasks in this process); a task on
    another process (a Dask worker) has only its task run, and Prefect's runtime asks the API for the rest.
    """
    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None:
        run = context.flow_run
        found = (run.id, run.deployment_id, context.flow.name if context.flow else flow_run.flow_name)
    elif flow_run.id:
        found = (flow_run.id, deployment.id, flow_run.flow_name)
    else:
        return provenance.current()
    run_id, deployment_id, flow_name = found
    return {
        "flow_run_id": str(run_id),
        "deployment_id": None if deployment_id is None else str(deployment_id),
        "flow_name": flow_name,
    }


def recorded(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn`, run so that every record batchml writes during it names this flow run (see `flow_run_ids`)."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        with provenance.flow_run(**flow_run_ids()):
            return fn(*args, **kwargs)

    return call


def batch_task(fn: Callable[P, R]) -> Task[P, R]:
    """`@task` with the RETRY policy and no Prefect caching or result files (batchml is idempotent itself);
    batchml's records written by the task name its flow run."""
    return task(cache_policy=NO_CACHE, persist_result=False, **RETRY.task_options())(recorded(fn))


# -- artifacts ---------------------------------------------------------------------------------------------
def artifact_key(*parts: str) -> str:
    """An artifact key from names: lowercase letters, digits and dashes only (Prefect's rule)."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A small markdown table (keys of the first row are the header)."""
    if not rows:
        return "_none_"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r.get(h, "")) for h in header) + " |" for r in rows]
    return "\n".join(lines)


def report(key: str, title: str, body: str, table: list[dict[str, Any]] | None = None) -> None:
    """Leave the run's summary: a markdown artifact, plus a table artifact when rows are given."""
    create_markdown_artifact(markdown=f"# {title}\n\n{body}\n", key=key, description=title)
    if table:
        create_table_artifact(table=table, key=f"{key}-table", description=title)


def metrics_text(metrics: dict[str, Any]) -> str:
    """`auc=0.8123, logloss=0.3012` with floats rounded."""
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def serving_examples(project: batchml.Project, model: str | None = None) -> dict[str, Any]:
    """Where the published predictions are and ready-to-run queries for one real entity id."""
    path = batchml.database_path(project)
    info: dict[str, Any] = {"database": str(path), "entity_id": None, "sql": None}
    if not path.exists():
        return info
    con = batchml.connect(project)
    try:
        where, args = ("WHERE model = ?", [model]) if model else ("", [])
        row = con.execute(
            f"SELECT entity_id FROM predictions {where} ORDER BY entity_id LIMIT 1", args
        ).fetchone()
        if model:  # the serving build that first served the published run (`run_stats`; NULL: not kept)
            timed = con.execute(
                "SELECT publish_s FROM run_stats WHERE model = ? "
                "AND run_id IN (SELECT run_id FROM runs WHERE published)",
                [model],
            ).fetchone()
            info["publish_s"] = timed[0] if timed else None
        info["tables"] = [
            f"{name} (view)" if kind == "VIEW" else name
            for name, kind in con.execute(
                "SELECT table_name, table_type FROM information_schema.tables ORDER BY table_name"
            ).fetchall()
        ]
    finally:
        con.close()
    if row is not None:
        info["entity_id"] = str(row[0])
        info["sql"] = (
            "SELECT model, model_version, entity_id, prediction, predicted_class, run_id "
            f"FROM predictions WHERE entity_id = '{row[0]}'"
        )
    return info
