"""The runtime's wheel, as a user outside the checkout installs it (issue 30).

The wheel is built from a copy of the runtime's files (so the build leaves nothing in the
checkout) and installed, with its dependencies at requirements.txt's pins, into an empty
venv. From another folder, that venv's `login-pipeline init` applies the schema it carries
as package data, `celery -A tasks worker --help` loads the app, and nothing of the
development distribution is there: `dev` says so in one line, and advice for an endpoint
that does not answer never names a `dev` command (the same failures in the checkout do).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import celeryconfig as config
from tests.helpers import ROOT, command, free_port, python_m_tasks

pytestmark = pytest.mark.usefixtures("test_stack")
RUNTIME_FILES = ("pyproject.toml", "celeryconfig.py", "flowerconfig.py", "init.sql", "tasks")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    bin: Path
    elsewhere: Path  # a folder that is not the checkout, to run from


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    scratch = tmp_path_factory.mktemp("wheel")
    source = scratch / "source"
    source.mkdir()
    for name in RUNTIME_FILES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    built = command([*pip, "wheel", "--no-deps", "--wheel-dir", str(scratch / "dist"), str(source)], timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (scratch / "dist").glob("login_pipeline-*.whl")
    venv = scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    into = [str(venv / "bin" / "python"), *pip[1:], "install", "--constraint", str(ROOT / "requirements.txt")]
    result = command([*into, str(wheel)], timeout=600)
    assert result.returncode == 0, result.stderr
    elsewhere = scratch / "elsewhere"
    elsewhere.mkdir()
    yield Installed(wheel, venv / "bin", elsewhere)
    shutil.rmtree(scratch, ignore_errors=True)


def run(installed: Installed, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A command of the venv's, from a folder outside the checkout, with only its own
    settings: the stack's folder is an empty one, so nothing is read from the checkout's."""
    settings = {"STACK_DIR": str(installed.elsewhere), "PYTHONPATH": "", **(env or {})}
    return command([str(installed.bin / argv[0]), *argv[1:]], timeout=120, env=settings, cwd=installed.elsewhere)


def test_the_wheel_carries_the_runtime_and_its_schema_and_no_development_code(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert "tasks/pipeline/init.sql" in names and "celeryconfig.py" in names
    assert not [n for n in names if n.startswith(("devkit", "tests/", "tasks/dev/"))]
    schema = zipfile.ZipFile(installed.wheel).read("tasks/pipeline/init.sql")
    assert schema == (ROOT / "init.sql").read_bytes()
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "devkit" not in zipfile.ZipFile(installed.wheel).read(entry_points).decode()


def test_init_and_the_worker_run_from_the_installed_wheel_outside_the_checkout(installed: Installed) -> None:
    database = {"DATABASE_URL": config.database_url()}
    result = run(installed, "login-pipeline", "init", env=database)
    assert result.returncode == 0, result.stderr
    where = "import tasks, celeryconfig; print(tasks.__file__, celeryconfig.__file__)"
    imported = run(installed, "python", "-c", where)
    assert imported.returncode == 0 and str(ROOT) not in imported.stdout, imported.stdout + imported.stderr
    assert "/site-packages/" in imported.stdout
    worker = run(installed, "celery", "-A", "tasks", "worker", "--help")
    assert worker.returncode == 0, worker.stderr
    assert "--concurrency" in worker.stdout
    assert run(installed, "celery", "-A", "tasks", "pipeline", "--help").returncode == 0


def test_the_development_commands_are_absent_and_say_so_in_one_line(installed: Installed) -> None:
    result = run(installed, "login-pipeline", "dev", "stack", "up")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "the development commands are not installed here: a checkout's `make demo` installs them"
    ]
    assert run(installed, "python", "-c", "import devkit").returncode == 1


def test_advice_never_names_a_command_the_install_lacks(installed: Installed) -> None:
    """Where the development commands are absent, SQS or PostgreSQL not answering is never
    met with `python -m tasks dev stack up`; the same failures in the checkout do name it."""
    nothing_there = {"SQS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    wheel = run(installed, "login-pipeline", "status", env=nothing_there)
    checkout = python_m_tasks("status", env={**nothing_there, "STACK_DIR": str(installed.elsewhere)})
    for result in (wheel, checkout):
        assert result.returncode == 3, result.stderr
    said = wheel.stdout + wheel.stderr
    assert "SQS unreachable at 127.0.0.1:" in said and "DATABASE_URL is not set" in said
    assert "tasks dev" not in said, said
    assert (checkout.stdout + checkout.stderr).count("python -m tasks dev stack up") == 2, checkout.stderr
