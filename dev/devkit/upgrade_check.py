"""`make upgrade-check`: the overrides' upstream packages at their newest releases, tested.

For celery, kombu, flower, billiard, boto3, botocore and tornado (the packages whose
internals tasks/broker and tasks/ops/flower.py build on, docs/upstream.md), it asks the
index (`pip index versions`) for the newest release within the range pyproject.toml
declares and, where the index has one, the newest of the next minor series above that
range. Each run ("within", then "next") builds a throwaway venv under
.stack/upgrade-check/ (git-ignored) with the development lock, those packages moved,
and the project installed without dependencies; then runs the unit layer and the
transport, pool and Flower integration tests (INTEGRATION) in it, each integration file
under the stack lock as the test rules ask. It prints which versions moved against the
lock and which tests broke, as a table; the exit status is 1 if any test broke.

    python dev/devkit/upgrade_check.py [--unit-only] [--keep]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements-dev.txt"
WORK = ROOT / ".stack" / "upgrade-check"
STACK_LOCK = Path("/tmp/login-pipeline-stack.lock")
PACKAGES = ("celery", "kombu", "flower", "billiard", "boto3", "botocore", "tornado")
UNIT = ("tests/unit",)
# What exercises the overrides against real processes: the transport, control and
# consumer (test_monitoring), the pool's warm shutdown (test_pool_shutdown, deterministic,
# and two of test_faults), Flower's hooks (test_flower_safety).
INTEGRATION = (
    "tests/test_monitoring.py",
    "tests/test_flower_safety.py",
    "tests/test_pool_shutdown.py",
    "tests/test_faults.py::test_worker_killed_mid_batch",
    "tests/test_faults.py::test_sigterm_at_random_moments_of_a_batch_stream_always_ends_the_worker",
)
PYTEST = ("-q", "-p", "no:cacheprovider", "-rfE", "-o", "addopts=")


# --- choosing versions (pure) ---------------------------------------------------------


def parse_versions(pip_output: str) -> list[Version]:
    """The releases `pip index versions NAME` lists ("Available versions: 1.2, 1.1")."""
    for line in pip_output.splitlines():
        if line.startswith("Available versions:"):
            found = (_version(text) for text in line.partition(":")[2].split(","))
            return [version for version in found if version is not None]
    return []


def _version(text: str) -> Version | None:
    try:
        return Version(text.strip())
    except InvalidVersion:
        return None


def newest_within(versions: Iterable[Version], spec: SpecifierSet) -> Version | None:
    """The newest final release the range allows."""
    return max((v for v in versions if not v.is_prerelease and v in spec), default=None)


def next_outside(versions: Iterable[Version], spec: SpecifierSet) -> Version | None:
    """The newest release of the first minor series above the range's upper bound
    (celery<5.8: the newest 5.8.x), or None when the index has no final release there."""
    ceilings = [Version(bound.version) for bound in spec if bound.operator in ("<", "<=")]
    if not ceilings:
        return None
    above = [v for v in versions if not v.is_prerelease and v not in spec and all(v >= c for c in ceilings)]
    if not above:
        return None
    series = min((v.major, v.minor) for v in above)
    return max(v for v in above if (v.major, v.minor) == series)


def declared_ranges(pyproject: str, names: Iterable[str] = PACKAGES) -> dict[str, SpecifierSet]:
    """Each package's range as pyproject.toml declares it among the runtime dependencies."""
    wanted = set(names)
    ranges: dict[str, SpecifierSet] = {}
    for line in tomllib.loads(pyproject)["project"]["dependencies"]:
        requirement = Requirement(line)
        if requirement.name.lower() in wanted:
            ranges[requirement.name.lower()] = requirement.specifier
    return ranges


def locked_versions(lock: str) -> dict[str, Version]:
    """name==version pins of a uv lock file."""
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", lock, re.MULTILINE)
    return {name.lower(): Version(text) for name, text in pins}


def with_pins(lock: str, pins: Mapping[str, Version]) -> str:
    """The lock with these packages pinned at other versions."""

    def repin(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"{name}=={pins[name.lower()]}" if name.lower() in pins else match.group(0)

    return re.sub(r"^([A-Za-z0-9_.-]+)==[^\s;\\]+", repin, lock, flags=re.MULTILINE)


# --- the report (pure) ----------------------------------------------------------------


@dataclass
class Run:
    name: str  # "within" or "next"
    pins: dict[str, Version]  # the versions that differ from the lock
    broken: list[str] = field(default_factory=list)  # node ids that failed, or a step that did
    ran: list[str] = field(default_factory=list)  # what was run


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A Markdown table, its columns padded to their widest cell."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (width + 2) for width in widths) + "|", *map(line, rows)])


def versions_table(
    locked: Mapping[str, Version],
    ranges: Mapping[str, SpecifierSet],
    within: Mapping[str, Version | None],
    outside: Mapping[str, Version | None],
) -> str:
    rows = []
    for name in PACKAGES:
        now, newest, beyond = locked.get(name), within.get(name), outside.get(name)
        moved = "moved" if newest is not None and newest != now else "unchanged"
        rows.append(
            [
                name,
                str(ranges.get(name, "")),
                str(now or "-"),
                f"{newest or '-'} ({moved})",
                str(beyond or "none on the index"),
            ]
        )
    return table(rows, ["package", "declared", "lock", "newest within", "next minor outside"])


def results_table(runs: Sequence[Run]) -> str:
    rows = []
    for run in runs:
        moved = ", ".join(f"{name} {version}" for name, version in run.pins.items()) or "nothing moved"
        broke = "; ".join(run.broken) if run.broken else "none"
        rows.append([run.name, moved, str(len(run.ran)), broke])
    return table(rows, ["run", "versions moved", "test targets", "broke"])


# --- running (I/O) --------------------------------------------------------------------


def index_versions(name: str) -> list[Version]:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", name], capture_output=True, text=True, check=False
    ).stdout
    return parse_versions(out)


def build_venv(run: Run, lock: str) -> Path:
    where = WORK / run.name
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    (where / "requirements.txt").write_text(with_pins(lock, run.pins))
    subprocess.run([sys.executable, "-m", "venv", str(where / "venv")], check=True)
    python = where / "venv" / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(where / "requirements.txt")], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT), "-e", str(ROOT / "dev")], check=True)  # the runtime and dev/
    return python


def failed_tests(output: str) -> list[str]:
    """pytest's short summary: "FAILED path::test - why" and "ERROR path::test"."""
    return re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)


def run_tests(python: Path, target: str, locked: bool) -> tuple[int, str]:
    command = [str(python), "-m", "pytest", target, *PYTEST]
    if locked:
        command = ["flock", str(STACK_LOCK), *command]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout + done.stderr


def execute(run: Run, lock: str, unit_only: bool) -> None:
    try:
        python = build_venv(run, lock)
    except subprocess.CalledProcessError as exc:
        run.broken.append(f"venv build failed: {' '.join(exc.cmd[-3:])}")
        return
    for target, locked in [*((t, False) for t in UNIT), *(() if unit_only else ((t, True) for t in INTEGRATION))]:
        print(f"upgrade-check [{run.name}]: {target}", flush=True)
        code, output = run_tests(python, target, locked)
        run.ran.append(target)
        if code not in (0, 5):  # 5: nothing collected
            run.broken.extend(failed_tests(output) or [f"{target} (exit {code})"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unit-only", action="store_true", help="Skip the integration tests.")
    parser.add_argument("--keep", action="store_true", help="Keep the venvs under .stack/upgrade-check/.")
    args = parser.parse_args(argv)
    lock = LOCK.read_text()
    locked = locked_versions(lock)
    ranges = declared_ranges((ROOT / "pyproject.toml").read_text())
    available = {name: index_versions(name) for name in PACKAGES}
    within = {name: newest_within(available[name], ranges[name]) for name in PACKAGES}
    outside = {name: next_outside(available[name], ranges[name]) for name in PACKAGES}
    print(versions_table(locked, ranges, within, outside), flush=True)
    newest = {n: v for n, v in within.items() if v is not None and v != locked.get(n)}
    runs = [Run("within", newest)]
    beyond = {n: v for n, v in outside.items() if v is not None}
    if beyond:
        runs.append(Run("next", {**newest, **beyond}))
    else:
        print("no release beyond a declared range on the index: no 'next' run", flush=True)
    for run in runs:
        execute(run, lock, args.unit_only)
    if not args.keep:
        shutil.rmtree(WORK, ignore_errors=True)
    print(results_table(runs))
    return 1 if any(run.broken for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
