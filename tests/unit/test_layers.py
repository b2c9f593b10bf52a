"""The layers import downwards only: the command line (tasks/cli) above ops and dev, dev
above ops, and ops never importing dev or the command line (the image has no tasks/dev)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tasks"


def imported(folder: str) -> dict[str, set[str]]:
    """Every module each file of a folder imports, at any depth (lazy imports included)."""
    found: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / folder).glob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[path.name] = names
    return found


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("ops", ("tasks.dev", "tasks.cli")),
        ("pipeline", ("tasks.dev", "tasks.cli", "tasks.ops")),
        ("broker", ("tasks.dev", "tasks.cli", "tasks.ops")),
        ("dev", ("tasks.cli",)),
    ],
)
def test_a_layer_imports_no_layer_above_it(folder: str, forbidden: tuple[str, ...]) -> None:
    wrong = {
        f"{folder}/{file}: {name}"
        for file, names in imported(folder).items()
        for name in names
        if name.startswith(forbidden)
    }
    assert not wrong


def test_the_command_line_imports_dev_only_when_a_command_runs() -> None:
    """At module level tasks/cli imports no tasks.dev: the image, without it, lists its commands."""
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        top = ast.parse(path.read_text()).body
        modules = {n.module for n in top if isinstance(n, ast.ImportFrom)} | {
            a.name for n in top if isinstance(n, ast.Import) for a in n.names
        }
        assert not {m for m in modules if m and m.startswith("tasks.dev")}, path.name
