"""`python -m tasks metrics`: the pipeline's metrics when Flower is not running.

A small HTTP server (the standard library's, threaded) with its own Prometheus
registry holding the same collectors as Flower's /metrics (tasks/ops/metrics.py), and
nothing of Flower's own (workers, task events). It serves ``/metrics`` and an open
``/healthcheck`` that answers ``OK``. Flower's rules for being reachable apply: beyond
the loopback it requires basic auth (METRICS_BASIC_AUTH, else FLOWER_BASIC_AUTH, so
Prometheus can use one credential for both) and refuses to start without it; on the
loopback without auth it serves openly.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

import celeryconfig as config
from tasks.ops import logs, metrics
from tasks.ops.flower import is_loopback

log = logging.getLogger(__name__)


class Refused(Exception):
    """Why the server will not start, in one line."""


def refusal(address: str, auth: str) -> str | None:
    if auth and ":" not in auth:
        return "METRICS_BASIC_AUTH (or FLOWER_BASIC_AUTH) must be user:password"
    if not auth and not is_loopback(address):
        where = address or "every interface"
        return f"metrics would listen on {where} without auth: set METRICS_BASIC_AUTH=user:password or use 127.0.0.1"
    return None


def authorized(header: str | None, auth: str) -> bool:
    """Whether an Authorization header carries `auth` ("user:password") as basic auth."""
    if not auth:
        return True
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, auth.encode())


def handler(registry: CollectorRegistry, auth: str) -> type[BaseHTTPRequestHandler]:
    class MetricsHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            if path == "/healthcheck":
                self.reply(200, b"OK", "text/plain")
            elif path != "/metrics":
                self.reply(404, b"not found\n", "text/plain")
            elif not authorized(self.headers.get("Authorization"), auth):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="login-pipeline metrics"')
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)

        def reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return MetricsHandler


def server(address: str, port: int, auth: str) -> ThreadingHTTPServer:
    """The bound server (port 0: a free one); Refused if these options are unsafe."""
    reason = refusal(address, auth)
    if reason:
        raise Refused(reason)
    registry = CollectorRegistry(auto_describe=True)
    metrics.register_into(registry)
    return ThreadingHTTPServer((address, port), handler(registry, auth))


def serve(address: str, port: int) -> int:
    """Serve until interrupted; a refusal is one line and exit status 2, a port in use 3
    (the command line's codes, tasks/ops/failures.py)."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s")
    logs.use_configured_format()
    try:
        httpd = server(address, port, config.metrics_basic_auth())
    except Refused as exc:
        print(f"metrics refused to start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"metrics could not listen on {address}:{port}: {exc.strerror}; choose another --port", file=sys.stderr)
        return 3
    host, bound = httpd.server_address[:2]
    log.info("serving the pipeline's metrics on http://%s:%s/metrics", host, bound)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0
