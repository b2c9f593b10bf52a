"""The layers import downwards only, and the runtime never imports the development tooling.

In the runtime package (tasks/): the command line (tasks/cli) above ops, ops above the
pipeline and the broker, which import neither. The development distribution (dev/devkit)
sits above all of tasks/ and adds its commands through an entry point, so no module of
tasks/ imports devkit, lazily or not: the wheel and the image carry none of it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "tasks"
DEVKIT = ROOT / "dev" / "devkit"
TOP_LEVEL = ("celeryconfig.py", "flowerconfig.py")


def imported(paths: list[Path]) -> dict[str, set[str]]:
    """Every module each file imports, at any depth (lazy imports included)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def wrong_imports(paths: list[Path], forbidden: tuple[str, ...]) -> set[str]:
    found = imported(paths).items()
    return {f"{file}: {name}" for file, names in found for name in names if name.startswith(forbidden)}


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("ops", ("tasks.cli",)),
        ("pipeline", ("tasks.cli", "tasks.ops")),
        ("broker", ("tasks.cli", "tasks.ops")),
    ],
)
def test_a_runtime_layer_imports_no_layer_above_it(folder: str, forbidden: tuple[str, ...]) -> None:
    assert not wrong_imports(sorted((RUNTIME / folder).glob("*.py")), forbidden)


def test_nothing_the_runtime_ships_imports_the_development_tooling() -> None:
    shipped = sorted(RUNTIME.rglob("*.py")) + [ROOT / name for name in TOP_LEVEL]
    assert not wrong_imports(shipped, ("devkit", "tests"))


def test_the_development_tooling_lives_outside_the_runtime_package() -> None:
    assert not (RUNTIME / "dev").exists()
    assert (DEVKIT / "cli.py").is_file() and (DEVKIT.parent / "pyproject.toml").is_file()
    assert not wrong_imports(sorted(DEVKIT.glob("*.py")), ("tasks.dev",))
