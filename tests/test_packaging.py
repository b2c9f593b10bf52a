"""The two locks are fresh, checked offline: each was made from pyproject.toml's
declarations as they are now (the hash in its first line), every declared requirement is
pinned within its range, and the development lock pins the runtime at the image's
versions. `make lock` (dev/devkit/lock.py) remakes them."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from devkit import lock

ROOT = Path(__file__).resolve().parent.parent
DECLARED = lock.declarations()


def pins(name: str) -> dict[str, Version]:
    """The versions a lock installs here (its markers evaluated for this interpreter)."""
    found = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            assert len(requirement.specifier) == 1 and str(requirement.specifier).startswith("=="), line
            if requirement.marker is None or requirement.marker.evaluate():
                found[canonicalize_name(requirement.name)] = Version(str(requirement.specifier)[2:])
    return found


def declared(*extras: str) -> list[Requirement]:
    optional = DECLARED["optional-dependencies"]
    assert isinstance(optional, dict)
    return [Requirement(r) for r in [*DECLARED["dependencies"], *(r for e in extras for r in optional[e])]]  # type: ignore[misc]


@pytest.mark.parametrize("name", list(lock.LOCKS))
def test_each_lock_was_made_from_the_declarations_as_they_are(name: str) -> None:
    assert lock.recorded_hash(ROOT / name) == lock.inputs_hash(), f"{name} is stale: run `make lock`"


@pytest.mark.parametrize(("name", "extras"), [("requirements.txt", ()), ("requirements-dev.txt", ("stack", "dev"))])
def test_every_declared_requirement_is_pinned_within_its_range(name: str, extras: tuple[str, ...]) -> None:
    locked = pins(name)
    for requirement in declared(*extras):
        version = locked.get(canonicalize_name(requirement.name))
        assert version is not None, f"{name} does not pin {requirement.name}: run `make lock`"
        assert requirement.specifier.contains(version, prereleases=True), f"{name}: {requirement.name}=={version}"


def test_the_development_lock_pins_the_runtime_at_the_images_versions() -> None:
    runtime, development = pins("requirements.txt"), pins("requirements-dev.txt")
    assert {name: development.get(name) for name in runtime} == runtime


def test_the_runtime_lock_carries_no_development_package() -> None:
    development = {"pgserver", "pytest", "hypothesis", "ruff", "mypy", "playwright", "matplotlib", "parliament", "uv"}
    assert development <= {canonicalize_name(r.name) for r in declared("stack", "dev")}
    assert not development & set(pins("requirements.txt"))


def makefile_rule(target: str) -> str:
    """A rule of the Makefile: its target line and recipe, up to the next blank line."""
    text = (ROOT / "Makefile").read_text()
    start = text.index(f"\n{target}:") + 1
    return text[start : text.find("\n\n", start)]


def test_make_demo_installs_the_runtime_and_the_stack_and_nothing_for_tests() -> None:
    for target in ("demo", "run", "stack-up"):
        prerequisites = makefile_rule(target).splitlines()[0].split(":", 1)[1].split("#")[0]
        assert prerequisites.split() == ["$(DEMO_STAMP)"], target
    recipe = makefile_rule("$(DEMO_STAMP)")
    assert "--constraint requirements-dev.txt -e '.[stack]'" in recipe, "the lock's versions, the stack extra only"
    assert "-r requirements-dev.txt" not in recipe and "[dev]" not in recipe and "[stack,dev]" not in recipe
    assert "-r requirements-dev.txt" in makefile_rule("$(TEST_STAMP)")
    assert makefile_rule("test").split(":", 1)[1].split()[0] == "$(TEST_STAMP)"


def imported_packages(*paths: Path) -> set[str]:
    """The top-level names of third-party modules these files import, at any depth."""
    local = {"tasks", "celeryconfig", "flowerconfig", "tests", "devkit"}
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names - local - set(sys.stdlib_module_names)


def distributions(modules: set[str]) -> set[str]:
    """The installed distributions that provide these import names."""
    provided = importlib.metadata.packages_distributions()
    missing = {m for m in modules if m not in provided}
    assert not missing, f"imported but not installed: {missing}"
    return {canonicalize_name(d) for m in modules for d in provided[m]}


def test_every_package_the_code_imports_is_declared() -> None:
    """What the runtime imports is a runtime dependency, with a range (not there by way of
    Celery or Flower, where an upgrade of theirs could drop it); what the development
    distribution (dev/devkit) imports is declared in some list."""
    runtime_files = [ROOT / "celeryconfig.py", ROOT / "flowerconfig.py", *(ROOT / "tasks").rglob("*.py")]
    runtime = {canonicalize_name(r.name) for r in declared()}
    everything = {canonicalize_name(r.name) for r in declared("stack", "dev")}
    assert not distributions(imported_packages(*runtime_files)) - runtime, "declare it in [project] dependencies"
    development = distributions(imported_packages(*(ROOT / "dev" / "devkit").glob("*.py")))
    assert not development - everything, "declare it in pyproject.toml"
