"""README's promises point at tests that exist: a renamed test must not leave a guarantee unproved."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_guarantee_names_tests_that_exist() -> None:
    section = _section("What batchml guarantees")
    rows = [line for line in section.splitlines() if line.startswith("| ") and "test_" in line]
    assert len(rows) >= 15
    for row in rows:
        references = re.findall(r"`((?:\w+/)?test_\w+\.py)(?:::(test_\w+))?`", row)
        assert references, row
        for file, name in references:
            path = ROOT / "tests" / file
            assert path.is_file(), f"{file} (README guarantees) does not exist"
            if name:
                assert name in _test_names(path), f"{file}::{name} (README guarantees) does not exist"
