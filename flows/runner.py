"""How `batchml run` calls a flow: Prefect's console log without tracebacks, its parameter errors as one line.

`batchml.cli._run` imports this module when a flow runs: the one import of `flows` in batchml, stated as the
exception in pyproject's import-linter contract (the rest of the library never imports Prefect).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from prefect.exceptions import ParameterTypeError
from prefect.logging.handlers import PrefectConsoleHandler

import batchml


class _NoTraceback(logging.Formatter):
    """Formats a record as `inner` does, without its traceback (a failure ends as one `error:` line)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        """The record's message without exc_info or stack, which stay on the record for other handlers."""
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def quiet_tracebacks() -> None:
    """Prefect's console handlers print log lines but no tracebacks (its API log handler keeps them)."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, _NoTraceback):
                handler.setFormatter(_NoTraceback(handler.formatter))


def run_flow(target: str, name: str, parameters: dict[str, Any], *, tracebacks: bool = False) -> Any:
    """Call the flow `module:function` with `parameters` and return its result.

    A parameter Prefect rejects raises BatchMLError naming flow `name`; the flow's own failure propagates as
    the exception it raised. Without `tracebacks` the console log shows none (they still reach the API).
    """
    module, _, function = target.partition(":")
    flow = getattr(importlib.import_module(module), function)
    if not tracebacks:
        quiet_tracebacks()
    try:
        return flow(**parameters)
    except ParameterTypeError as exc:
        raise batchml.BatchMLError(f"flow {name!r}: {' '.join(str(exc).split())}") from exc
    finally:
        # The ephemeral API stops at exit and says so; the command's last line is its summary or its error.
        logging.getLogger("prefect").setLevel(logging.WARNING)
