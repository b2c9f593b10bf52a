"""A TCP proxy that delays every byte by a fixed time each way: a network between the
pipeline and SQS, or PostgreSQL, on one machine (`bench --latency-ms`).

Each chunk read from one side is written to the other `delay` seconds after it was
read, in order; the bandwidth is the loopback's, so a large response takes one delay,
not one a chunk. A new connection's first bytes to the server also wait for the TCP
handshake a real network would cost (two delays), so a reconnect costs what it costs
there. A full chunk queue stops reading that side (TCP's own back-pressure), so memory
is bounded whatever the peers send. The target is a TCP address or a Unix socket (the
embedded PostgreSQL listens on one).

`python -m devkit.latency DELAY_MS TARGET` (TARGET `tcp:HOST:PORT` or
`unix:PATH`) listens on a free port of 127.0.0.1, prints that port on one line, and
serves until SIGTERM; then prints what it carried (connections, bytes each way) as a
JSON line. `proxied` runs that as a child process for the length of a `with` block.
No timing is done here: what the bench measures through it is what the
pipeline does over a network of that latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from devkit import children

CHUNK = 65_536
QUEUED_CHUNKS = 64  # per direction and connection: at most 4 MiB in the proxy's hands
CARRIED: Counter[str] = Counter()  # connections, and bytes "up" (to the target) and "down"


@dataclass(frozen=True)
class Target:
    """Where the proxy connects: a TCP host and port, or a Unix socket's path."""

    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> Target:
        kind, _, rest = text.partition(":")
        if kind == "unix" and rest:
            return cls(path=rest)
        host, _, port = rest.rpartition(":")
        if kind == "tcp" and host and port.isdigit():
            return cls(host=host, port=int(port))
        raise ValueError(f"not a target (tcp:HOST:PORT or unix:PATH): {text}")

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path else f"tcp:{self.host}:{self.port}"

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.path:
            return await asyncio.open_unix_connection(self.path, limit=CHUNK)
        return await asyncio.open_connection(self.host, self.port, limit=CHUNK)


async def _carry(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, way: str, not_before: float = 0.0
) -> None:
    """Bytes from `reader` to `writer`, each chunk `delay` seconds after it was read
    (and not before `not_before`, loop time, plus `delay`); at EOF, EOF after them."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUED_CHUNKS)

    async def read() -> None:
        while chunk := await reader.read(CHUNK):
            await queue.put((max(loop.time(), not_before) + delay, chunk))
        await queue.put((max(loop.time(), not_before) + delay, b""))

    async def write() -> None:
        while True:
            due, chunk = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not chunk:
                break
            writer.write(chunk)
            CARRIED[way] += len(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    reading = asyncio.ensure_future(read())
    try:
        await write()
        await reading
    finally:
        reading.cancel()


async def _relay(
    client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, target: Target, delay: float
) -> None:
    accepted = asyncio.get_running_loop().time()
    try:
        server_reader, server_writer = await target.open()
    except OSError:
        client_writer.close()
        return
    CARRIED["connections"] += 1
    try:
        await asyncio.gather(
            _carry(client_reader, server_writer, delay, "up", not_before=accepted + 2 * delay),  # the handshake
            _carry(server_reader, client_writer, delay, "down"),
        )
    except (OSError, asyncio.IncompleteReadError):
        pass  # a peer went away: the other is closed below, as a network would drop it
    finally:
        for writer in (client_writer, server_writer):
            writer.close()


async def serve(target: Target, delay_ms: float, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """A listening proxy to `target` (port 0: a free one; `server.sockets[0]` has it)."""
    delay = delay_ms / 1000
    return await asyncio.start_server(
        lambda r, w: _relay(r, w, target, delay), host, port, limit=CHUNK, reuse_address=True
    )


async def _main(delay_ms: float, target: Target) -> None:
    server = await serve(target, delay_ms)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()
    print(json.dumps(dict(CARRIED)), flush=True)


@dataclass
class Proxy:
    port: int
    carried: dict[str, int] = field(default_factory=dict)  # once it has stopped


@contextlib.contextmanager
def proxied(target: Target, delay_ms: float) -> Iterator[Proxy]:
    """A proxy to `target` adding `delay_ms` each way, as a child process that dies with
    this one; its port on 127.0.0.1, and what it carried once the block has ended."""
    command = [sys.executable, "-m", "devkit.latency", f"{delay_ms:g}", str(target)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, preexec_fn=children.dies_with_parent()
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"the latency proxy to {target} did not start (it printed {line[:80]!r})")
        proxy = Proxy(int(line))
        yield proxy
    finally:
        process.terminate()
        try:
            said, _ = process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            said, _ = process.communicate()
    with contextlib.suppress(ValueError):
        proxy.carried = json.loads(said)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m devkit.latency DELAY_MS tcp:HOST:PORT|unix:PATH")
    asyncio.run(_main(float(sys.argv[1]), Target.parse(sys.argv[2])))
