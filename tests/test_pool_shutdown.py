"""The worker's prefork pool ends a warm shutdown that meets a half-written payload
(tasks/broker/pool.py), deterministically, through a real worker on the test stack.

A batch task's payload (~200 KB here) is larger than the 64 KiB pipe to a pool child, so
the worker's event loop writes it in pieces as the child reads. The test stops the only
child (SIGSTOP) before the batch arrives: the loop writes the first 64 KiB and waits.
Then SIGTERM to the worker, and the child resumes (at once, or after the pool has closed).
The worker must exit within the bound, and the batch be written once.

Stock Celery's pool hangs here, in both cases (2026-12-07, Celery 5.7.0, billiard 4.3.2:
4 of 4 runs still waiting after 40 s). The same test shows it, one command, since the
worker inherits Celery's own pool variable:

    CELERY_WORKER_POOL=processes .venv/bin/python -m pytest tests/test_pool_shutdown.py
"""

from __future__ import annotations

import array
import fcntl
import os
import signal
import termios
import time

import psutil
import pytest

from devkit import seed
from tasks.batch import mask_and_insert
from tasks.pipeline.records import SourceMessage
from tasks.pipeline.store import Connection
from tests.helpers import Worker, wait_until

pytestmark = pytest.mark.usefixtures("test_stack", "clean")
PIPE_BUFFER = 65536  # Linux's default pipe capacity
EXIT_BOUND = 20  # seconds; the worker's own bound is task_time_limit + 10 s


def queued_in_pipes(pid: int) -> int:
    """The most unread bytes in any pipe that process `pid` holds open (FIONREAD through
    /proc: opening the pipe again reads nothing from it)."""
    most = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        try:
            if not os.readlink(path).startswith("pipe:"):
                continue
            reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:  # closed meanwhile
            continue
        try:
            count = array.array("i", [0])
            fcntl.ioctl(reader, termios.FIONREAD, count)
            most = max(most, count[0])
        finally:
            os.close(reader)
    return most


@pytest.mark.parametrize("resume_after", [0.2, 3.0], ids=["child-resumes-at-once", "child-resumes-after-close"])
def test_a_sigterm_while_a_payload_is_half_written_ends_the_worker_and_writes_the_batch(
    resume_after: float, db: Connection
) -> None:
    worker = Worker(f"half-written-{time.monotonic_ns()}", env={"WORKER_CONCURRENCY": "1"}, args=["-Q", "batches"])
    try:
        (child,) = psutil.Process(worker.process.pid).children()
        os.kill(child.pid, signal.SIGSTOP)
        sent = int(time.time() * 1000)
        events = [body for body, _ in seed.generate(600)]
        batch = [SourceMessage(f"half-written-{i}", sent, body).as_args() for i, body in enumerate(events)]
        mask_and_insert.apply_async((batch,))
        wait_until(lambda: queued_in_pipes(child.pid) >= PIPE_BUFFER - 4096, timeout=60, poll=0.05, what="a full pipe")
        stopping = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        time.sleep(resume_after)  # the moment the child resumes is the variable under test
        os.kill(child.pid, signal.SIGCONT)
        assert worker.stop(within=EXIT_BOUND) == 0
        print(f"exited {time.monotonic() - stopping:.1f} s after SIGTERM")
        with db.cursor() as cur:
            cur.execute("SELECT count(*), sum(received) FROM ingest_batches")
            assert cur.fetchone() == (1, len(batch))
    finally:
        worker.kill()
