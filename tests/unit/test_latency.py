"""The latency proxy (dev/devkit/latency.py): every byte arrives, in order, a fixed delay
later each way; a new connection also pays the handshake's round trip. Against an echo
server on the loopback, TCP and a Unix socket, in this process and as the bench runs it."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest

from devkit import latency
from devkit.latency import Target

DELAY_MS = 40
SLACK = 0.3  # seconds a loaded machine (2 shared cores) may add to a round trip


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65_536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _round_trips(target: Target, payload: bytes) -> tuple[float, float, bytes]:
    """Through a proxy to `target`: the first round trip of a byte (with the handshake),
    the second, and `payload` echoed whole."""
    proxy = await latency.serve(target, DELAY_MS)
    port = proxy.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    for _ in range(2):
        started = time.perf_counter()
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        times.append(time.perf_counter() - started)
    writer.write(payload)
    writer.write_eof()
    echoed = await reader.read(-1)
    writer.close()
    proxy.close()
    return times[0], times[1], echoed


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_the_proxy_adds_its_delay_each_way_and_passes_every_byte(kind: str, tmp_path: Path) -> None:
    payload = os.urandom(3_000_000)

    async def run() -> tuple[float, float, bytes]:
        if kind == "unix":
            server = await asyncio.start_unix_server(_echo, str(tmp_path / "echo.sock"))
            target = Target(path=str(tmp_path / "echo.sock"))
        else:
            server = await asyncio.start_server(_echo, "127.0.0.1", 0)
            target = Target(host="127.0.0.1", port=server.sockets[0].getsockname()[1])
        async with server:
            return await _round_trips(target, payload)

    first, second, echoed = asyncio.run(run())
    delay = DELAY_MS / 1000
    assert echoed == payload  # 3 MB, many chunks, in order
    assert 4 * delay <= first < 4 * delay + SLACK  # the handshake's round trip, then the byte's
    assert 2 * delay <= second < 2 * delay + SLACK


def test_the_bench_runs_it_as_a_child_that_prints_its_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        target = Target.parse(f"tcp:127.0.0.1:{listening.getsockname()[1]}")
        with latency.proxied(target, DELAY_MS) as proxy:
            client = socket.create_connection(("127.0.0.1", proxy.port))
            accepted, _ = listening.accept()
            started = time.perf_counter()
            client.sendall(b"ping")
            assert accepted.recv(4) == b"ping"
            accepted.sendall(b"pong")
            assert client.recv(4) == b"pong"
            assert time.perf_counter() - started >= 2 * DELAY_MS / 1000
            client.close()
            accepted.close()
        assert proxy.carried == {"connections": 1, "up": 4, "down": 4}


def test_a_target_is_tcp_or_unix() -> None:
    assert Target.parse("tcp:127.0.0.1:4566") == Target(host="127.0.0.1", port=4566)
    assert Target.parse("unix:/tmp/x/.s.PGSQL.5432") == Target(path="/tmp/x/.s.PGSQL.5432")
    with pytest.raises(ValueError, match="not a target"):
        Target.parse("localhost:4566")
