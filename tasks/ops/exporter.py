"""`python -m tasks metrics`: the pipeline's metrics when Flower is not running.

A small HTTP server with its own Prometheus registry holding the same collectors as
Flower's /metrics (tasks/ops/metrics.py), and nothing of Flower's own (workers, task
events). It serves ``/metrics`` and an open ``/healthcheck`` that answers ``OK``.

It is held to Flower's rules (tasks/ops/flower.py), and runs on Flower's web server,
tornado:

- Credentials: METRICS_BASIC_AUTH, else FLOWER_BASIC_AUTH (so Prometheus can use one
  credential for both), comma-separated ``user:password`` entries, checked as Flower's
  are (``flower.credential_refusal``): every entry needs a user and a password, beyond
  the loopback a password of MIN_PASSWORD_LENGTH characters or more. Beyond the loopback
  without credentials, or with one such entry, it refuses to start: one line, exit 2.
- Each entry is compared on its own, in constant time, and every entry is compared
  whatever matched: any entry of the list logs in, and the time taken says not which.
- DNS rebinding: without auth it answers only requests whose Host names the loopback
  (``flower.is_loopback_host``); any other Host gets 421, as Flower's does.
- Connections: one thread serves them all (tornado's event loop), and one more collects
  the scrapes, one at a time. A connection idle, or still sending its request's head,
  for METRICS_IDLE_SECONDS is closed (tornado's ``idle_connection_timeout``, which also
  bounds the head's arrival); beyond MAX_CONNECTIONS open ones a new connection is closed
  at once. No number of idle or half-sent connections adds a thread or exhausts the
  process's file descriptors.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import socket
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from tornado import iostream, netutil, web
from tornado.httpserver import HTTPServer

import celeryconfig as config
from tasks.ops import logs, metrics, stopping
from tasks.ops.flower import credential_refusal, is_loopback, is_loopback_host

log = logging.getLogger(__name__)
MAX_CONNECTIONS = 512  # open connections (Prometheus needs one), well within a 1,024 file limit
MAX_HEADER_BYTES = 16 * 1024  # a scrape's request head is a few hundred bytes
REALM = 'Basic realm="login-pipeline metrics"'
STOP_SECONDS = 5.0  # from SIGTERM or SIGINT to exit, a scrape in flight or not (tasks/ops/stopping.py)


class Refused(Exception):
    """Why the server will not start, in one line."""


def refusal(address: str, credentials: Sequence[str]) -> str | None:
    """Why the server must not start on `address` with these basic-auth entries, or None."""
    bad_credential = credential_refusal(credentials, not is_loopback(address), server="metrics")
    if bad_credential:
        return bad_credential
    if not credentials and not is_loopback(address):
        where = address or "every interface"
        return f"metrics would listen on {where} without auth: set METRICS_BASIC_AUTH=user:password or use 127.0.0.1"
    return None


def authorized(header: str | None, credentials: Sequence[str]) -> bool:
    """Whether an Authorization header carries one of `credentials` ("user:password"
    entries) as basic auth; every entry is compared, each in constant time."""
    if not credentials:
        return True
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    matches = [hmac.compare_digest(given, entry.encode()) for entry in credentials]
    return any(matches)


class Page(web.RequestHandler):
    """A request to the metrics server: 421 for a foreign Host when there is no auth."""

    def initialize(self, credentials: Sequence[str]) -> None:
        self.credentials = credentials

    def prepare(self) -> None:
        if not self.credentials and not is_loopback_host(self.request.host or ""):
            raise web.HTTPError(421, reason="Misdirected Request")


class NotFound(Page):
    def prepare(self) -> None:
        super().prepare()
        raise web.HTTPError(404)


class Healthcheck(Page):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.finish(b"OK")


class MetricsPage(Page):
    """/metrics behind the basic auth; the collectors run on the scrape thread."""

    def initialize(  # type: ignore[override]
        self, credentials: Sequence[str], registry: CollectorRegistry, scrapes: ThreadPoolExecutor
    ) -> None:
        super().initialize(credentials)
        self.registry, self.scrapes = registry, scrapes

    async def get(self) -> None:
        if not authorized(self.request.headers.get("Authorization"), self.credentials):
            self.set_status(401)
            self.set_header("WWW-Authenticate", REALM)
            self.finish()
            return
        body = await asyncio.get_running_loop().run_in_executor(self.scrapes, generate_latest, self.registry)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(body)


def _log_request(handler: web.RequestHandler) -> None:
    """Requests at DEBUG, never their path or headers (a foreign client chose them)."""
    log.debug("%s %d", handler.request.method, handler.get_status())


class BoundedServer(HTTPServer):
    """tornado's HTTP server, closing a new connection beyond MAX_CONNECTIONS open ones
    (through tornado's public hooks: TCPServer.handle_stream and the delegate's on_close)."""

    open_connections = 0

    def handle_stream(self, stream: iostream.IOStream, address: tuple[Any, ...]) -> None:
        if self.open_connections >= MAX_CONNECTIONS:
            stream.close()
            return
        self.open_connections += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        self.open_connections -= 1
        super().on_close(server_conn)


def application(
    credentials: Sequence[str], registry: CollectorRegistry, scrapes: ThreadPoolExecutor
) -> web.Application:
    page = {"credentials": list(credentials)}
    return web.Application(
        [
            (r"/healthcheck", Healthcheck, page),
            (r"/metrics", MetricsPage, {**page, "registry": registry, "scrapes": scrapes}),
        ],
        default_handler_class=NotFound,
        default_handler_args=page,
        log_function=_log_request,
    )


def listen(address: str, port: int, credentials: Sequence[str]) -> tuple[BoundedServer, list[socket.socket]]:
    """The server and its bound sockets (port 0: a free one); Refused if these options are
    unsafe, OSError if the port cannot be bound. Call within a running event loop."""
    reason = refusal(address, credentials)
    if reason:
        raise Refused(reason)
    sockets = netutil.bind_sockets(port, address or None)
    registry = CollectorRegistry(auto_describe=True)
    metrics.register_into(registry)
    scrapes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scrape")
    idle = config.METRICS_IDLE_SECONDS
    server = BoundedServer(
        application(credentials, registry, scrapes),
        idle_connection_timeout=idle,  # also the limit for a request's head to arrive
        body_timeout=idle,
        max_header_size=MAX_HEADER_BYTES,
        max_body_size=MAX_HEADER_BYTES,
    )
    server.add_sockets(sockets)
    return server, sockets


async def _serve(address: str, port: int) -> int:
    try:
        _, sockets = listen(address, port, config.metrics_basic_auth())
    except Refused as exc:
        print(f"metrics refused to start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"metrics could not listen on {address}:{port}: {exc.strerror}; choose another --port", file=sys.stderr)
        return 3
    host, bound = sockets[0].getsockname()[:2]
    log.info("serving the pipeline's metrics on http://%s:%s/metrics", host, bound)
    await asyncio.Event().wait()  # until interrupted
    return 0


def serve(address: str, port: int) -> int:
    """Serve until interrupted; a refusal is one line and exit status 2, a port in use 3
    (the command line's codes, tasks/ops/failures.py)."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s")
    logs.use_configured_format()
    stopping.stop_within(STOP_SECONDS, "metrics")  # SIGTERM too ends the event loop, in any state
    try:
        return asyncio.run(_serve(address, port))
    except KeyboardInterrupt:
        return 0
