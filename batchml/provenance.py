"""Which orchestrator run did the work: a flow run id, deployment id and flow name stamped on every record.

batchml never imports an orchestrator (DESIGN.md invariant 5), so the flow says who it is: the flow layer
(`flows/common.py`, with Prefect's `prefect.runtime`) wraps each task's call into the library in
`flow_run(...)`. Run manifests, model cards and every event appended to a log (alias, publication, staging,
alerts, retrains) written inside it record the three ids as `flow_run_id`, `deployment_id` and `flow_name`;
written outside any flow (CLI, notebook) they record nulls. The serving catalog shows them as columns of
`runs`, `models`, `alias_events` and `publications`, NULL for records older than these fields.

A context variable rather than a parameter: the ids describe the caller, not the request, and every writer
below the flow (train, score, partitioned commit, promote, publish, stage) would otherwise pass them down
through every signature. It is set per task, not per flow, because a task may run in another thread or
process (Dask) where the flow's context is not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from batchml.errors import InvalidNameError

#: The record fields, in the order SQL shows them.
FIELDS = ("flow_run_id", "deployment_id", "flow_name")

_NONE: dict[str, str | None] = dict.fromkeys(FIELDS)
_current: ContextVar[dict[str, str | None]] = ContextVar("batchml_flow_run", default=_NONE)


@contextmanager
def flow_run(
    flow_run_id: str | None, deployment_id: str | None = None, flow_name: str | None = None
) -> Iterator[dict[str, str | None]]:
    """Records written inside carry these ids (None: not known; e.g. a flow run outside any deployment)."""
    values = {"flow_run_id": flow_run_id, "deployment_id": deployment_id, "flow_name": flow_name}
    for field, value in values.items():
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise InvalidNameError(field, str(value), "a non-empty string or None")
    token = _current.set(values)
    try:
        yield dict(values)
    finally:
        _current.reset(token)


def current() -> dict[str, str | None]:
    """The ids of the flow run doing the work now: every field None outside `flow_run`."""
    return dict(_current.get())
