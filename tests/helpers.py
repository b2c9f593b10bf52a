"""Helpers of the tests: a real worker process, and waiting for a condition."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import celeryconfig as config
from tasks.dev import runner

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


class Worker:
    """A real `celery -A tasks worker` process (and beat, if asked)."""

    def __init__(
        self, name: str, beat: bool = False, env: dict[str, str] | None = None, heartbeat: bool = False
    ) -> None:
        self.name = name
        self.log = config.STACK_DIR / f"{name}.log"
        command = [*runner.worker_command(name), "--without-mingle"]
        if not heartbeat:
            command.append("--without-heartbeat")
        if beat:
            command.append("--beat")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        try:
            self.wait_for("ready.")
        except BaseException:
            self.kill()
            raise

    @property
    def node(self) -> str:
        """The worker's node name, as Celery and Flower show it."""
        return f"{self.name}@{socket.gethostname()}"

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{self.name}: no {text!r} in {timeout} s"
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a crash would."""
        with contextlib.suppress(ProcessLookupError):  # it may have exited already
            os.killpg(self.process.pid, 9)
        self.process.wait(timeout=30)

    def stop(self, sig: int = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=60)


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], T], timeout: float = 60, poll: float = 0.5, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
    return value


class Outage:
    """A TCP proxy in front of a port, whose traffic a test can cut and restore.

    While cut, the listening socket is closed and every open connection dropped, so
    clients see connection refused and resets: the endpoint is unreachable.
    """

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port, self.target_port = listen_port, target_port
        self.server: socket.socket | None = None
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        server = socket.create_server(("127.0.0.1", self.listen_port), reuse_port=True)
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        server, self.server = self.server, None
        if server:
            server.close()
        with self.lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
            self.connections.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            with self.lock:
                self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def flower_request(
    port: int,
    path: str,
    method: str = "GET",
    auth: tuple[str, str] | None = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """Flower's status and body for one request (an HTTP error is an answer too)."""
    headers = dict(headers or {})
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def flower_api(port: int, path: str, auth: tuple[str, str] | None = None) -> object:
    """Flower's answer at `path` (JSON decoded, except the health check and metrics)."""
    try:
        status, body = flower_request(port, path, auth=auth)
    except OSError:
        return None
    if status != 200:
        return None
    return body if path in ("/healthcheck", "/metrics") else json.loads(body)


def start_flower(port: int, env: dict[str, str] | None = None, name: str = "flower") -> subprocess.Popen:
    """`celery -A tasks flower --conf=flowerconfig.py` on `port`, once it answers; its log in STACK_DIR."""
    with open(config.STACK_DIR / f"{name}-{port}.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "flower", "--conf=flowerconfig.py"],
            cwd=ROOT,
            env={**os.environ, "FLOWER_PORT": str(port), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: flower_api(port, "/healthcheck") == "OK", timeout=30, what="Flower")
    except AssertionError:
        stop_process(process)
        raise
    return process


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM a process started in its own session, then SIGKILL its whole group."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 9)
    process.wait(timeout=timeout)
