"""A flow's parameters, read from its source without importing it, and `KEY=VALUE` checked against them.

`batchml run` validates `-p KEY=VALUE` against the flow's own signature before anything heavy loads: importing
a flow imports Prefect, LightGBM and the rest (seconds on a busy machine), and a typo should cost none of it.
Reading the `def` from source keeps the flow the one place its parameters are declared.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchml.errors import BatchMLError

#: Parameters `batchml run` sets itself (from its own options), never from `-p`.
RESERVED = {"config": "--config PATH"}

_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_NONE = ("none", "null")


@dataclass(frozen=True)
class FlowParameter:
    """One parameter of a flow function, as its source declares it."""

    name: str
    kinds: tuple[str, ...]  # the annotation's union members by base name: ("dict", "None")
    annotation: str  # as written, for messages: "dict[str, str] | None"
    default: str | None  # the default's source text; None when the parameter is required

    @property
    def required(self) -> bool:
        """True when the flow cannot run without a value for it."""
        return self.default is None


@dataclass(frozen=True)
class FlowSignature:
    """What `module:function` declares: its parameters in order and its docstring's first line."""

    target: str
    summary: str
    parameters: dict[str, FlowParameter]


def _kinds(node: ast.expr | None) -> tuple[str, ...]:
    if node is None:
        return ("Any",)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return (*_kinds(node.left), *_kinds(node.right))
    if isinstance(node, ast.Subscript):
        return _kinds(node.value)
    if isinstance(node, ast.Constant) and node.value is None:
        return ("None",)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
        return _kinds(ast.parse(node.value, mode="eval").body)
    return (ast.unparse(node).rsplit(".", 1)[-1],)


def read_signature(target: str) -> FlowSignature:
    """The signature of `module:function` from the module's source file (the module is not imported)."""
    module, _, function = target.partition(":")
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None or spec.origin is None:
        raise BatchMLError(
            f"flow module {module!r} is not importable: install batchml with its flows package "
            "(pip install batchml), or run from the repository's root"
        )
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"), filename=spec.origin)
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
    if not found:
        raise BatchMLError(f"flow {target!r}: {spec.origin} defines no function {function!r}")
    args = found[0].args
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    pairs = [
        *zip(positional, [*defaults, *args.defaults], strict=True),
        *zip(args.kwonlyargs, args.kw_defaults, strict=True),
    ]
    parameters = {
        arg.arg: FlowParameter(
            arg.arg,
            _kinds(arg.annotation),
            ast.unparse(arg.annotation) if arg.annotation else "Any",
            None if default is None else ast.unparse(default),
        )
        for arg, default in pairs
    }
    summary = " ".join((ast.get_docstring(found[0]) or "").split())
    return FlowSignature(target, summary.split(". ")[0].removesuffix("."), parameters)


def _convert(kind: str, text: str) -> tuple[bool, Any]:
    """(True, value) when `text` reads as `kind`, else (False, None)."""
    if kind == "bool":
        value = _BOOLEANS.get(text.lower())
        return value is not None, value
    if kind in ("int", "float"):
        try:
            return True, (int if kind == "int" else float)(text)
        except ValueError:
            return False, None
    if kind in ("dict", "list"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return False, None
        return isinstance(value, dict if kind == "dict" else list), value
    return True, text  # str, and anything else: the flow's own validation has the last word


_ALLOWED = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "dict": "a JSON object",
    "list": "a JSON list",
    "None": "none",
}


def parse_value(flow: str, parameter: FlowParameter, text: str) -> Any:
    """`text` as a value of `parameter`; BatchMLError naming the flow, parameter, value and what it takes."""
    if "None" in parameter.kinds and text.lower() in _NONE:
        return None
    for kind in parameter.kinds:
        if kind != "None":
            ok, value = _convert(kind, text)
            if ok:
                return value
    allowed = " or ".join(dict.fromkeys(_ALLOWED.get(k, k) for k in parameter.kinds))
    raise BatchMLError(f"parameter {parameter.name!r} of flow {flow!r} takes {allowed}, not {text!r}")


def parse_parameters(flow: str, signature: FlowSignature, items: Iterable[str]) -> dict[str, Any]:
    """`KEY=VALUE` items as keyword arguments of the flow: every key one of its parameters, given once, every
    required parameter present. BatchMLError (one line naming the key and what is allowed) otherwise."""
    settable = {name: p for name, p in signature.parameters.items() if name not in RESERVED}
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BatchMLError(f"parameter {item!r} is not KEY=VALUE: e.g. -p model=default_risk")
        if key in RESERVED:
            raise BatchMLError(f"parameter {key!r} of flow {flow!r} is set with {RESERVED[key]}, not -p")
        if key not in settable:
            raise BatchMLError(
                f"flow {flow!r} has no parameter {key!r}: use {', '.join(settable) or 'none'}"
            )
        if key in values:
            raise BatchMLError(f"parameter {key!r} of flow {flow!r} is given twice")
        values[key] = parse_value(flow, settable[key], text)
    missing = [name for name, p in settable.items() if p.required and name not in values]
    if missing:
        needed = " ".join(f"-p {name}=VALUE" for name in missing)
        raise BatchMLError(f"flow {flow!r} needs {', '.join(missing)}: pass {needed}")
    return values
