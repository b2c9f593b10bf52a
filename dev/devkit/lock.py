"""`make lock`: the two pinned requirement files, made by uv from pyproject.toml.

requirements.txt is the runtime (`[project] dependencies`) with every transitive
dependency pinned: all the image installs. requirements-dev.txt adds the embedded stack
(`[stack]`) and development (`[dev]`), pinned to the same runtime versions (compiled
under requirements.txt as constraints). Each file's first line carries a hash of the
declarations it was made from, so tests/test_packaging.py tells offline that a lock is
stale. uv (`uv pip compile`) rather than pip-tools: one wheel with no dependencies of
its own, it resolves in seconds, and it writes pip's requirements format, which the
image's plain pip installs.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCKS = {
    "requirements.txt": [],
    "requirements-dev.txt": ["--extra", "stack", "--extra", "dev", "--constraint", "requirements.txt"],
}
HEADER = "# inputs sha256:{} (pyproject.toml's requires-python, dependencies, optional-dependencies)"
_HEADER = re.compile(r"^# inputs sha256:([0-9a-f]{64}) ")


def declarations(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, object]:
    """What a lock is made from: pyproject's Python range and its dependency lists."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return {key: project.get(key) for key in ("requires-python", "dependencies", "optional-dependencies")}


def inputs_hash(pyproject: Path = ROOT / "pyproject.toml") -> str:
    return hashlib.sha256(json.dumps(declarations(pyproject), sort_keys=True).encode()).hexdigest()


def recorded_hash(lock: Path) -> str | None:
    """The inputs hash in a lock's first line, if it has one."""
    match = _HEADER.match(lock.read_text())
    return match.group(1) if match else None


def compile_lock(name: str, extra: list[str]) -> None:
    """uv compiles `name` in place (its pins are uv's preferences: nothing moves unless it
    must); then the inputs hash goes on top."""
    options = ["--universal", "--python-version", "3.11", "--custom-compile-command", "make lock", "--quiet"]
    command = [sys.executable, "-m", "uv", "pip", "compile", "pyproject.toml", *extra, *options, "--output-file", name]
    subprocess.run(command, cwd=ROOT, check=True)
    lock = ROOT / name
    lock.write_text(HEADER.format(inputs_hash()) + "\n" + lock.read_text())


def main() -> None:
    for name, extra in LOCKS.items():
        compile_lock(name, extra)


if __name__ == "__main__":
    main()
