"""`python -m tasks metrics` held to Flower's rules, through the real process (issue 27, finding 5).

A rebound host name reaches nothing without auth; an empty or short credential stops
the server from listening beyond the loopback; each entry of a credential list logs in
on its own and nothing else does; hundreds of idle and half-sent connections cost no
thread and are closed after METRICS_IDLE_SECONDS.
"""

from __future__ import annotations

import base64
import http.client
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psutil
import pytest

import celeryconfig as config
from tasks.ops import exporter
from tasks.ops.flower import MIN_PASSWORD_LENGTH
from tests.helpers import free_port, python_m_tasks, spawn, stop_process, wait_until

pytestmark = pytest.mark.usefixtures("test_stack")
FIRST, SECOND = "prometheus:first-test-password", "grafana:second-test-password"
NO_AUTH = {"METRICS_BASIC_AUTH": "", "FLOWER_BASIC_AUTH": ""}
IDLE_SECONDS = 2


def request(port: int, path: str, host: str | None = None, credential: str | None = None) -> int:
    """The status of one GET to 127.0.0.1:`port`, naming `host` in its Host header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        headers = {"Host": host or f"127.0.0.1:{port}"}
        if credential is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(credential.encode()).decode()
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


@contextmanager
def started(address: str, env: dict[str, str]) -> Iterator[tuple[int, psutil.Process]]:
    port = free_port()
    process = spawn(
        [sys.executable, "-m", "tasks", "metrics", "--address", address, "--port", str(port)],
        config.STACK_DIR / f"metrics-{port}.log",
        {"METRICS_IDLE_SECONDS": str(IDLE_SECONDS), **env},
    )
    try:
        wait_until(lambda: _answers(port), timeout=30, what="the metrics server")
        yield port, psutil.Process(process.pid)
    finally:
        stop_process(process)


def _answers(port: int) -> bool:
    try:
        return request(port, "/healthcheck") == 200
    except OSError:
        return False


@pytest.fixture
def open_metrics() -> Iterator[tuple[int, psutil.Process]]:
    """On the loopback without auth, as `python -m tasks metrics` runs by default."""
    with started("127.0.0.1", NO_AUTH) as server:
        yield server


@pytest.fixture
def guarded_metrics() -> Iterator[int]:
    """Beyond the loopback, with a two-entry credential list."""
    with started("0.0.0.0", {"METRICS_BASIC_AUTH": f"{FIRST},{SECOND}"}) as (port, _):
        yield port


def test_a_rebound_host_name_reaches_nothing(open_metrics: tuple[int, psutil.Process]) -> None:
    port, _ = open_metrics
    for path in ("/metrics", "/healthcheck", "/other"):
        for host in (f"rebind.attacker.example:{port}", "rebind.attacker.example", "127.0.0.1.nip.io", "0.0.0.0"):
            assert request(port, path, host) == 421, (path, host)
    for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert request(port, "/metrics", host) == 200, host


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"METRICS_BASIC_AUTH": " : "}, "entry 1 lacks a user or a password"),
        ({"METRICS_BASIC_AUTH": "", "FLOWER_BASIC_AUTH": " : "}, "entry 1 lacks a user or a password"),
        ({"METRICS_BASIC_AUTH": f"{FIRST}, :{'x' * 20}"}, "entry 2 lacks a user or a password"),
        ({"METRICS_BASIC_AUTH": "prometheus:short-pw"}, f"shorter than {MIN_PASSWORD_LENGTH} characters"),
    ],
    ids=["blank", "blank-flower-credential", "blank-second-entry", "short"],
)
def test_a_blank_or_short_credential_is_refused_beyond_the_loopback(env: dict[str, str], why: str) -> None:
    result = python_m_tasks("metrics", "--address", "0.0.0.0", "--port", str(free_port()), env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("metrics refused to start: ") and why in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "x" * 20 not in result.stderr and "short-pw" not in result.stderr  # no credential quoted


def test_each_entry_of_a_credential_list_logs_in_and_nothing_else(guarded_metrics: int) -> None:
    port = guarded_metrics
    assert request(port, "/metrics", credential=FIRST) == 200
    assert request(port, "/metrics", credential=SECOND) == 200
    user, _, password = FIRST.partition(":")
    for wrong in (None, f"{user}:{password[:-1]}", f"{FIRST},{SECOND}", f"{user}:{SECOND.partition(':')[2]}", ":"):
        assert request(port, "/metrics", credential=wrong) == 401, wrong
    # Under auth the credential is the control, and the server is reached by its real name.
    assert request(port, "/metrics", host="metrics.example.internal", credential=SECOND) == 200


def test_idle_and_half_sent_connections_hold_no_thread_and_are_closed(
    open_metrics: tuple[int, psutil.Process],
) -> None:
    port, server = open_metrics
    assert request(port, "/metrics") == 200  # the scrape thread exists from here on
    threads_before = server.num_threads()
    connections = []
    for number in range(400):
        connection = socket.create_connection(("127.0.0.1", port), timeout=IDLE_SECONDS + 20)
        connection.settimeout(None)  # blocking, so that `shut` can peek without waiting
        if number % 2:  # half-open: a request's head that never ends
            connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        connections.append(connection)
    opened = time.monotonic()
    # Sampled until the server has closed every one: the first accepted may be closed
    # (idle) before the last is accepted on a loaded machine, so the peak is what counts.
    peak_held = peak_threads = 0
    while shut(connections) < len(connections):
        assert time.monotonic() - opened < IDLE_SECONDS + 10, "the server kept idle connections open"
        peak_held = max(peak_held, len(server.net_connections()) - 1)  # less its listening socket
        peak_threads = max(peak_threads, server.num_threads())
        if peak_held >= 100:
            assert request(port, "/healthcheck") == 200  # still answers meanwhile
        time.sleep(0.05)
    closed_after = time.monotonic() - opened
    for connection in connections:  # each closed by the server: an end of stream, nothing sent
        assert connection.recv(1024) == b""
        connection.close()
    print(
        f"threads: {threads_before} before, at most {peak_threads} holding up to {peak_held}"
        f" of 400 connections; all closed after {closed_after:.1f} s"
    )
    assert peak_held >= 100  # the test held the server's connections, not only its backlog
    assert peak_threads <= threads_before
    wait_until(lambda: len(server.net_connections()) <= 2, timeout=10, poll=0.1, what="the connections to go")


def test_connections_beyond_the_cap_are_closed_at_once() -> None:
    """Idle connections held open (a long idle limit): beyond MAX_CONNECTIONS the server
    closes each new one at once, so it never holds more sockets than the cap."""
    extra, cap = 100, exporter.MAX_CONNECTIONS
    with started("127.0.0.1", {**NO_AUTH, "METRICS_IDLE_SECONDS": "60"}) as (port, server):
        connections = [socket.create_connection(("127.0.0.1", port)) for _ in range(cap + extra)]  # blocking
        try:
            wait_until(lambda: shut(connections) >= extra, timeout=30, poll=0.2, what=f"{extra} connections shut")
            held = len(server.net_connections())
            print(f"{len(connections)} connections: the server holds {held} sockets (cap {cap})")
            assert held <= cap + 1  # and its listening socket
        finally:
            for connection in connections:
                connection.close()
        # The closes free the slots once the server has read them: until then a new
        # connection is one beyond the cap, and is closed at once, as it should be.
        wait_until(lambda: len(server.net_connections()) <= 2, timeout=30, poll=0.1, what="the connections to go")
        assert request(port, "/healthcheck") == 200


def shut(connections: list[socket.socket]) -> int:
    """How many of these (blocking) connections the server has closed, without waiting."""
    closed = 0
    for connection in connections:
        with suppress(BlockingIOError):
            closed += connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    return closed
