"""Whatever serves stops on SIGTERM or SIGINT within a few seconds, in every state, and
`dev run` and `dev stack down` leave nothing of their own behind, however they end
(issue 33).

Flower and `python -m tasks metrics` are real processes on the session's stack, signalled
while capturing events, while retrying an SQS endpoint that went away (a proxy in front of
LocalStack, cut), and while a /metrics scrape waits on a PostgreSQL that accepts
connections and never answers (the main thread then blocks in libpq, which retries its
wait on EINTR). `dev run` runs against the session's stack with a STACK_DIR of its own, so
that `processes_of` finds exactly its processes; a child that does not stop on SIGTERM is
one frozen with SIGSTOP. `dev stack down` stops a stand-in for LocalStack that ignores
SIGTERM (a real LocalStack of the session's is stopped, and checked, at the session's end).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import celeryconfig as config
from devkit import children
from tasks.broker import aws
from tasks.ops import exporter, flower
from tests.helpers import (
    Outage,
    flower_request,
    free_port,
    kill_group,
    own_stack_dir,
    processes_of,
    python_m_tasks,
    spawn,
    start_flower,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("test_stack")
SIGNALS = [signal.SIGTERM, signal.SIGINT]


class BlackHole:
    """A TCP port that takes connections and never answers: a server that hangs."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.held.append(self.server.accept()[0])

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def scrape_in_background(port: int) -> None:
    """GET /metrics from a thread, its answer (or none) ignored: a scrape in flight."""

    def scrape() -> None:
        with contextlib.suppress(OSError):
            flower_request(port, "/metrics")

    threading.Thread(target=scrape, daemon=True).start()


def stops_within(process: subprocess.Popen, signum: int, bound: float, log: Path) -> None:
    """Signal it; it must exit within `bound` seconds, having said so."""
    sent = time.monotonic()
    process.send_signal(signum)
    try:
        process.wait(timeout=bound)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {bound} s after {signum!r}:\n{log.read_text()[-3000:]}") from None
    finally:
        kill_group(process)
    took = time.monotonic() - sent
    assert f"{signal.Signals(signum).name} received" in log.read_text(), log.read_text()[-3000:]
    print(f"{log.name}: exited {took:.1f} s after {signal.Signals(signum).name}")


def event_queues() -> set[str]:
    urls = aws.client("sqs").list_queues(QueueNamePrefix=config.CELERY_QUEUE_PREFIX).get("QueueUrls", [])
    return {url.rsplit("/", 1)[1] for url in urls if "celeryev" in url}


# --- Flower ------------------------------------------------------------------------------
FLOWER_BOUND = flower.STOP_SECONDS + 4  # its own bound, and the time to exit after it


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_flower_capturing_events_stops(signum: int) -> None:
    port, before = free_port(), event_queues()
    process = start_flower(port, name="flower-capturing")
    wait_until(lambda: event_queues() - before, timeout=30, what="Flower's event queue")
    stops_within(process, signum, FLOWER_BOUND, config.STACK_DIR / f"flower-capturing-{port}.log")


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_flower_retrying_a_missing_endpoint_stops(signum: int) -> None:
    port, proxy, before = free_port(), free_port(), event_queues()
    outage = Outage(proxy, int(config.LOCALSTACK_PORT))
    try:
        process = start_flower(port, {"SQS_ENDPOINT_URL": f"http://localhost:{proxy}"}, name="flower-retrying")
        log = config.STACK_DIR / f"flower-retrying-{port}.log"
        wait_until(lambda: event_queues() - before, timeout=30, what="Flower's event queue")
        outage.cut()
        wait_until(lambda: "Failed to capture events" in log.read_text(), timeout=30, what="a failed capture")
        stops_within(process, signum, FLOWER_BOUND, log)
    finally:
        outage.cut()


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_flower_serving_a_slow_metrics_stops(signum: int, black_hole: BlackHole) -> None:
    port = free_port()
    hanging = f"postgresql://x:y@127.0.0.1:{black_hole.port}/logins"
    process = start_flower(port, {"METRICS_DATABASE_URL": hanging}, name="flower-slow-metrics")
    scrape_in_background(port)
    wait_until(lambda: black_hole.held, timeout=30, poll=0.1, what="the scrape to wait on PostgreSQL")
    stops_within(process, signum, FLOWER_BOUND, config.STACK_DIR / f"flower-slow-metrics-{port}.log")


# --- python -m tasks metrics -----------------------------------------------------------------
METRICS_BOUND = exporter.STOP_SECONDS + 4


@pytest.mark.parametrize("slow", [False, True], ids=["idle", "slow-metrics"])
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_the_metrics_server_stops(signum: int, slow: bool, black_hole: BlackHole) -> None:
    port = free_port()
    log = config.STACK_DIR / f"metrics-stop-{port}.log"
    env = {"METRICS_DATABASE_URL": f"postgresql://x:y@127.0.0.1:{black_hole.port}/logins"} if slow else {}
    process = spawn([sys.executable, "-m", "tasks", "metrics", "--port", str(port)], log, env)
    wait_until(lambda: "serving the pipeline's metrics" in log.read_text(), timeout=30, what="the metrics server")
    if slow:
        scrape_in_background(port)
        wait_until(lambda: black_hole.held, timeout=30, poll=0.1, what="the scrape to wait on PostgreSQL")
    stops_within(process, signum, METRICS_BOUND, log)


# --- dev run -------------------------------------------------------------------------------
def started_run(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path, int]:
    """`dev run` on the session's stack, once its Flower serves: (run, its output, its
    STACK_DIR, Flower's pid)."""
    env = own_stack_dir(tmp_path / "stack")
    stack_dir, port, out = Path(env["STACK_DIR"]), free_port(), tmp_path / "run.log"
    run = spawn([sys.executable, "-m", "tasks", "dev", "run"], out, {**env, "FLOWER_PORT": str(port)})

    def flower_pid() -> int | None:
        with contextlib.suppress(OSError):
            if flower_request(port, "/healthcheck")[0] == 200:
                return next(p for p in processes_of(stack_dir) if b"flower" in Path(f"/proc/{p}/cmdline").read_bytes())
        assert run.poll() is None, out.read_text()[-3000:]
        return None

    return run, out, stack_dir, wait_until(flower_pid, timeout=90, what="the run's Flower")


def ended(run: subprocess.Popen, out: Path, stack_dir: Path, within: float) -> str:
    """The run exited within `within` seconds, leaving no process of its own; its output."""
    try:
        run.wait(timeout=within)
    finally:
        kill_group(run)
        left = processes_of(stack_dir)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    said = out.read_text()
    assert not left, f"left running: {left}\n{said[-3000:]}"
    assert "Traceback" not in said
    return said


def test_run_stopped_by_sigterm_kills_a_child_that_does_not_stop(tmp_path: Path) -> None:
    """Flower frozen: SIGTERM to the run stops worker and beat warmly, and Flower after its
    bound, said in one line."""
    run, out, stack_dir, flower_pid = started_run(tmp_path)
    os.kill(flower_pid, signal.SIGSTOP)
    run.send_signal(signal.SIGTERM)
    said = ended(run, out, stack_dir, within=60)
    assert run.returncode == 0, said[-3000:]
    assert "[stack] flower did not stop within 10 s of SIGTERM: killed it and its process group (SIGKILL)" in said
    assert "worker did not stop" not in said and "beat did not stop" not in said


def test_run_interrupted_twice_kills_what_is_left_at_once(tmp_path: Path) -> None:
    """The issue's case: a second Ctrl-C while the children stop once ended the run and left
    Flower running. Now it kills what is left, Flower frozen or not."""
    run, out, stack_dir, flower_pid = started_run(tmp_path)
    os.kill(flower_pid, signal.SIGSTOP)
    run.send_signal(signal.SIGINT)
    wait_until(lambda: "[stack] stopping" in out.read_text(), timeout=30, poll=0.1, what="the run to stop")
    run.send_signal(signal.SIGINT)
    said = ended(run, out, stack_dir, within=30)
    assert "[stack] SIGINT: not waiting any longer, killing what is left (SIGKILL)" in said, said[-3000:]
    assert "[stack] flower had not stopped yet: killed it and its process group (SIGKILL)" in said


def test_run_killed_outright_still_stops_its_children(tmp_path: Path) -> None:
    """SIGKILL leaves the run no time to stop anything; its children get SIGTERM from the
    kernel as it dies, and stop by themselves (the issue's Flower lived on with parent 1)."""
    run, _, stack_dir, _ = started_run(tmp_path)
    os.kill(run.pid, signal.SIGKILL)
    run.wait(timeout=10)
    try:
        wait_until(lambda: not processes_of(stack_dir), timeout=60, what="the run's children to stop")
    finally:
        kill_group(run)
        for pid in processes_of(stack_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- dev stack down ------------------------------------------------------------------------
STAND_IN = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM ignored", flush=True))
print("up", flush=True)
time.sleep(600)
"""


def test_stack_down_kills_a_localstack_that_ignores_sigterm_when_itself_signalled(tmp_path: Path) -> None:
    """`dev stack down` gets SIGTERM while it waits for a LocalStack that ignores SIGTERM:
    it kills it at once, says so, and finishes (the stand-in is named like LocalStack's
    command, as `down` checks before it signals a pid from its file)."""
    env = own_stack_dir(tmp_path / "stack")
    stack_dir = Path(env["STACK_DIR"])
    stack_dir.mkdir()
    log = tmp_path / "localstack.log"
    stand_in = spawn([sys.executable, "-c", STAND_IN, "localstack.runtime.main"], log, env)
    wait_until(lambda: "up" in log.read_text(), timeout=30, poll=0.1, what="the stand-in")
    (stack_dir / "localstack.pid").write_text(str(stand_in.pid))
    out = tmp_path / "down.log"
    down = spawn([sys.executable, "-m", "tasks", "dev", "stack", "down"], out, env)
    wait_until(lambda: "SIGTERM ignored" in log.read_text(), timeout=30, poll=0.1, what="down's SIGTERM")
    down.send_signal(signal.SIGTERM)
    said = ended(down, out, stack_dir, within=20)
    assert down.returncode == 0, said
    assert "[stack] SIGTERM: not waiting any longer, killing what is left (SIGKILL)" in said, said
    assert "[stack] LocalStack had not stopped yet: killed it" in said, said
    assert stand_in.wait(timeout=5) == -signal.SIGKILL
    assert not (stack_dir / "localstack.pid").exists()


def test_stack_down_never_signals_a_process_that_is_not_localstack(tmp_path: Path) -> None:
    """A stale pid file (its pid since taken by another program, or planted) names a
    process that is no LocalStack: `down` removes the file and leaves that process be."""
    env = own_stack_dir(tmp_path / "stack")
    stack_dir = Path(env["STACK_DIR"])
    stack_dir.mkdir()
    bystander = spawn([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (stack_dir / "localstack.pid").write_text(str(bystander.pid))
        result = python_m_tasks("dev", "stack", "down", env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert bystander.poll() is None, "down signalled a process that was not its LocalStack"
        assert f"named process {bystander.pid}, which is no LocalStack: left it running" in result.stderr
        assert not (stack_dir / "localstack.pid").exists()
    finally:
        kill_group(bystander)


def test_a_process_that_left_its_group_is_still_found_by_the_runs_mark(tmp_path: Path) -> None:
    """A child's descendant that made a session of its own escapes SIGKILL of its group,
    and outlives its parent; the run's mark in its environment still finds it, and it is
    killed and named."""
    mark = f"test-{os.getpid()}-{time.monotonic_ns()}"
    log = tmp_path / "escaped.log"
    escaping = "import os, time\nif os.fork() == 0:\n os.setsid(); print(os.getpid(), flush=True); time.sleep(600)"
    parent = spawn([sys.executable, "-c", escaping], log, {children.MARK: mark})
    parent.wait(timeout=30)
    escaped = int(wait_until(lambda: log.read_text().strip(), timeout=30, poll=0.1, what="the escaped pid"))
    try:
        assert [p.pid for p in children.marked(mark)] == [escaped]
        assert children.kill_left(children.marked(mark), "this test") == []
        assert children.marked(mark) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(escaped, signal.SIGKILL)
