"""A real test stack for the whole session: LocalStack, PostgreSQL and Celery workers.

The test stack is the embedded stack in a private STACK_DIR, on its own LocalStack
port and PostgreSQL server, so a developer's running stack is never touched. It
reuses the LocalStack install in .stack/localstack-venv (made once, on first use).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STACK_DIR = Path(os.environ.get("TEST_STACK_DIR") or tempfile.mkdtemp(prefix="login-pipeline-test-"))
TEST_KEY = base64.b64encode(bytes(range(32))).decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A port of its own for each suite run, so that two runs on one machine never collide.
LOCALSTACK_PORT = os.environ.get("TEST_LOCALSTACK_PORT") or str(_free_port())

# Before anything imports celeryconfig, which reads the environment once.
os.environ.pop("DATABASE_URL", None)
os.environ.update(
    STACK_DIR=str(STACK_DIR),
    LOCALSTACK_PORT=LOCALSTACK_PORT,
    LOCALSTACK_VENV=str(ROOT / ".stack" / "localstack-venv"),
    SQS_ENDPOINT_URL=f"http://localhost:{LOCALSTACK_PORT}",
    MASKING_KEYS=f"1:{TEST_KEY}",
    FETCH_INTERVAL="1",
    FETCH_MAX_SECONDS="5",
    # Short enough that a crashed worker's messages come back within a test.
    TASK_VISIBILITY_TIMEOUT="30",
    SOURCE_VISIBILITY_TIMEOUT="15",
    BATCH_MAX_RETRIES="12",
    # At most 0.2 of TASK_VISIBILITY_TIMEOUT: a held retry and its run fit in it (celeryconfig).
    # A safety net: should any process of the suite ask boto3's chain as far as the instance
    # metadata service, it asks a closed port here, never 169.254.169.254 (the rule itself
    # skips it for a loopback endpoint: tests/unit/test_credentials_chain.py).
    AWS_EC2_METADATA_SERVICE_ENDPOINT="http://127.0.0.1:9/",
    RETRY_BACKOFF_MAX="6",
)

import celeryconfig as config  # noqa: E402
from tasks.pipeline import store  # noqa: E402
from tests.helpers import Worker, kill_all, processes_of, python_m_tasks, reset_pipeline  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """After the suite, passed or failed, no process it started is left: every group it
    started is killed, and anything else that still names its stack folder fails it."""
    yield
    kill_all()
    left = processes_of(STACK_DIR)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running by the suite (now killed): {left}"
    if STACK_DIR.exists() and not any(STACK_DIR.iterdir()):
        STACK_DIR.rmdir()  # made at import, never used (a unit-only run)


@pytest.fixture(scope="session")
def test_stack(request: pytest.FixtureRequest) -> Iterator[None]:
    try:
        result = python_m_tasks("dev", "stack", "up")
        assert result.returncode == 0, result.stderr
        yield
    finally:
        kill_all()  # workers and Flowers first, so that nothing talks to a stopping stack
        python_m_tasks("dev", "stack", "down")
    if request.session.testsfailed:
        print(f"\ntest stack kept for its logs: {STACK_DIR}")
    else:
        shutil.rmtree(STACK_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(test_stack: None) -> str:
    return config.database_url()


@pytest.fixture
def db(database_url: str) -> Iterator[store.Connection]:
    conn = store.connect_writer(database_url)
    yield conn
    conn.close()


@pytest.fixture
def clean(test_stack: None) -> None:
    reset_pipeline()


@pytest.fixture(scope="module")
def worker(test_stack: None) -> Iterator[Worker]:
    """One worker with embedded beat for a test module."""
    w = Worker(f"test-{os.getpid()}-{time.monotonic_ns()}", beat=True)
    yield w
    w.stop()
