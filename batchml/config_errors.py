"""Config validation errors in the config file's words: `field: what is allowed (got value)`.

msgspec reports the first problem as e.g. "Expected `float` < 1.0 - at `$.models[...].split.test_fraction`":
the path elides mapping keys (`[...]`), names types as in JSON and leaves out the value. `describe` walks the
path through the data and the struct types to name the key, the allowed values and what was given.
"""

from __future__ import annotations

import re
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec

_AT = re.compile(r"(?P<message>.*?)(?: - at `\$(?P<path>.*)`)?", re.S)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_UNKNOWN = re.compile(r"Object contains unknown field `(.+)`")
_MISSING = re.compile(r"Object missing required field `(.+)`")
#: msgspec's "Expected `float` <= 1.0" and "Expected `int | null`, got `str`", in the config file's words.
_EXPECTED = re.compile(r"Expected `(?P<kinds>[^`]+)`(?: (?P<op>[<>]=?) (?P<bound>\S+))?(?:, got `[^`]+`)?")
_KIND_WORDS = {"str": "text", "int": "an integer", "float": "a number", "bool": "true or false",
               "array": "a list", "object": "a table"}  # fmt: skip
_BOUND_WORDS = {"<": "below", "<=": "at most", ">": "above", ">=": "at least"}


def describe(message: str, data: Any, cls: type) -> str:
    """msgspec's error as `field: what is allowed (got value)`, naming the mapping keys msgspec elides."""
    found = _AT.fullmatch(message)
    assert found is not None  # the pattern matches any text
    steps = [name or index for name, index in _STEP.findall(found["path"] or "")]
    where, value, kind = _locate(data, cls, steps)
    text = found["message"]
    if unknown := _UNKNOWN.fullmatch(text):
        allowed = ", ".join(f.encode_name for f in msgspec.structs.fields(kind)) if _is_struct(kind) else ""
        return f"{'.'.join([*where, unknown[1]])}: unknown key; allowed keys: {allowed or 'none'}"
    if missing := _MISSING.fullmatch(text):
        return f"{'.'.join([*where, missing[1]])}: required key is missing"
    if get_origin(kind) is Literal:
        *most, last = (repr(v) for v in get_args(kind))
        text = f"must be {', '.join(most)} or {last}" if most else f"must be {last}"
    elif expected := _EXPECTED.fullmatch(text):
        kinds = " or ".join(_KIND_WORDS.get(k, k) for k in expected["kinds"].split(" | ") if k != "null")
        bound = f", {_BOUND_WORDS[expected['op']]} {expected['bound']}" if expected["op"] else ""
        text = f"must be {kinds}{bound}"
    if not isinstance(value, dict | list) and value is not _ABSENT:
        text += f" (got {value!r})"
    return f"{'.'.join(where) or '(top level)'}: {text}"


_ABSENT = object()


def _locate(data: Any, kind: Any, steps: list[str]) -> tuple[list[str], Any, Any]:
    """Follow msgspec's error path through the data and the types: the keys, the value there, its type.

    msgspec writes `[...]` for a mapping key; the key is the first entry that fails on its own.
    """
    where: list[str] = []
    for step in steps:
        kind = _unwrap(kind, data)
        if step == "...":
            value_kind = get_args(kind)[1] if len(get_args(kind)) == 2 else Any
            key = next((k for k, v in data.items() if not _valid(v, value_kind)), "...")
            where.append(str(key))
            data, kind = data.get(key, _ABSENT), value_kind
        elif step.isdigit():
            where[-1:] = [f"{where[-1] if where else ''}[{step}]"]
            data = data[int(step)] if isinstance(data, list) and int(step) < len(data) else _ABSENT
            kind = (get_args(kind) or (Any,))[0]
        else:
            where.append(step)
            fields = {f.encode_name: f.type for f in msgspec.structs.fields(kind)} if _is_struct(kind) else {}
            data = data.get(step, _ABSENT) if isinstance(data, dict) else _ABSENT
            kind = fields.get(step, Any)
    return where, data, _unwrap(kind, data)


def _unwrap(kind: Any, value: Any) -> Any:
    """The type that applies to `value`: without Annotated's constraints and without None of an Optional."""
    if get_origin(kind) is Annotated:
        kind = get_args(kind)[0]
    union = get_origin(kind) in (Union, UnionType)
    options = [a for a in get_args(kind) if a is not type(None)] if union else []
    if len(options) == 1 or (options and value is not None):
        return _unwrap(options[0], value)
    return kind


def _valid(value: Any, kind: Any) -> bool:
    try:
        msgspec.convert(kind.prepare(value) if _is_struct(kind) else value, kind)
    except msgspec.ValidationError:
        return False
    return True


def _is_struct(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, msgspec.Struct)
