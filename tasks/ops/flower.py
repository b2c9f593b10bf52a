"""Flower as this pipeline runs it: a read-only monitor of an SQS broker, safe to open.

Owns, for `celery -A tasks flower`: install() runs when the Celery command line loads
the app for Flower (tasks/celery.py), so with or without --conf=flowerconfig.py:

- The final check of Flower's options (``check_options``). Flower applies its options
  from the environment, then the command line, then the config file, then the command
  line again, so a check in the config file alone misses ``--address=0.0.0.0``. The
  check runs when Flower builds its app, after all of them (Celery's ``import_modules``
  signal, which ``Flower.__init__`` sends before the port is bound), and refuses to
  start (one line, exit status 1) when Flower would listen beyond the loopback without
  auth, when FLOWER_UNAUTHENTICATED_API would open its API to every web page
  (``Access-Control-Allow-Origin: *``), or when control is asked for without auth.
- Read-only by default: Flower's own ``read_only`` mode (every control endpoint answers
  403, the templates hide the controls) is forced on unless FLOWER_ALLOW_CONTROL is set,
  and that needs basic auth, under which Flower refuses cross-site requests.
- The Broker page on SQS (``SqsBrokerView``): visible and in-flight messages of every
  queue the pipeline uses, from GetQueueAttributes. Flower's page knows RabbitMQ and
  Redis only; it shows SQS's visible count as "Ready" and in-flight as "Unacked".
- /metrics behind Flower's auth when auth is configured (``AuthenticatedMetrics``).
  /healthcheck stays open: it answers "OK" and nothing else, for probes that carry no
  secret.

Flower internals relied on (flower 2.2.0; tests/test_flower_*.py fail if they change):

- ``flower.urls.handlers``: the module-level route list that ``Flower.__init__`` reads;
  install() replaces its /broker and /metrics entries in place.
- ``flower.app.Flower.__init__``: reads the routes, then calls the Celery app's
  ``loader.import_default_modules()`` (which sends ``import_modules``), after
  ``flower.command`` has applied every option and before it binds the port.
- ``flower.views.BaseHandler.get_broker`` (returns an object with ``async queues(names)``)
  and the keys that templates/broker.html reads of a queue (name, messages,
  messages_ready, messages_unacknowledged, consumers, idle_since).
- ``flower.views.monitor.Metrics`` and ``BaseHandler.get_current_user``, which raises 401
  for missing or wrong basic-auth credentials and accepts everyone without auth.
- ``BaseHandler.check_xsrf_cookie``: under auth, refuses a write whose Sec-Fetch-Site or
  Origin names another site (what makes FLOWER_ALLOW_CONTROL safe to offer).
- The ``read_only`` option and the FLOWER_UNAUTHENTICATED_API environment variable.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from celery import signals
from flower import urls
from flower.utils import strtobool
from flower.views.broker import BrokerView
from flower.views.monitor import Metrics
from tornado import web
from tornado.options import OptionParser, options

import celeryconfig as config
from tasks.broker import aws
from tasks.ops import status

log = logging.getLogger(__name__)
_installed = False


def is_loopback(address: str) -> bool:
    """Whether Flower bound to `address` is reachable from this machine only."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # "" (every interface) or a host name
        return False


def has_auth(opts: OptionParser) -> bool:
    return bool(opts.basic_auth or opts.auth)


def refusal(opts: OptionParser, allow_control: bool, environ: Mapping[str, str]) -> str | None:
    """Why Flower must not start with these final options, or None."""
    if has_auth(opts):
        return None
    where = "a unix socket" if opts.unix_socket else (opts.address or "every interface")
    if not (opts.unix_socket or is_loopback(opts.address)):
        return f"Flower would listen on {where} without auth: set FLOWER_BASIC_AUTH=user:password or use 127.0.0.1"
    if strtobool(environ.get("FLOWER_UNAUTHENTICATED_API") or "false"):
        return "FLOWER_UNAUTHENTICATED_API opens Flower's API to every web page: set FLOWER_BASIC_AUTH instead"
    if allow_control:
        return "FLOWER_ALLOW_CONTROL needs FLOWER_BASIC_AUTH (Flower refuses cross-site writes only under auth)"
    return None


def check_options(
    opts: OptionParser = options, allow_control: bool | None = None, environ: Mapping[str, str] = os.environ
) -> None:
    """Refuse to start on unsafe final options; make Flower read-only unless control is allowed."""
    allow = config.FLOWER_ALLOW_CONTROL if allow_control is None else allow_control
    reason = refusal(opts, allow, environ)
    if reason:
        sys.exit(f"flower refused to start: {reason}")
    opts.read_only = opts.read_only or not allow


class SqsBroker:
    """The Broker page's data on SQS: each queue's visible and in-flight messages."""

    async def queues(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """The pipeline's queues, then any other queue a worker consumes (`names`)."""
        celery_names = [config.CELERY_QUEUE_PREFIX + name for name in names]
        wanted = list(dict.fromkeys([*status.queue_names(), *celery_names]))
        return await asyncio.to_thread(lambda: [queue_row(name) for name in wanted])


def queue_row(name: str) -> dict[str, Any]:
    """One row of broker.html: Ready is SQS's visible count, Unacked its in-flight count."""
    try:
        depth = aws.queue_depth(name)
    except Exception as exc:  # a missing queue or SQS down: show the row, without counts
        log.warning("no attributes for queue %s: %s", name, exc)
        return {"name": name}
    return {
        "name": name,
        "messages": depth["visible"] + depth["in_flight"],
        "messages_ready": depth["visible"],
        "messages_unacknowledged": depth["in_flight"],
    }


class SqsBrokerView(BrokerView):
    """Flower's Broker page, given an SQS broker; other brokers as Flower does them."""

    def get_broker(self) -> Any:
        if self.application.transport == "sqs":
            return SqsBroker()
        return super().get_broker()


class AuthenticatedMetrics(Metrics):
    """/metrics under Flower's auth: open without auth, 401 without valid credentials."""

    @web.authenticated
    async def get(self) -> None:
        await super().get()


def _route_pattern(route: Any) -> str:
    return route.regex.pattern.removesuffix("$") if isinstance(route, web.URLSpec) else route[0]


def replace_route(pattern: str, handler: type[web.RequestHandler]) -> None:
    """Serve `pattern` with `handler` in the routes Flower's app is built from."""
    for index, route in enumerate(urls.handlers):
        if _route_pattern(route) == pattern:
            name = route.name if isinstance(route, web.URLSpec) else None
            urls.handlers[index] = web.url(pattern, handler, name=name)
            return
    raise RuntimeError(f"Flower has no route {pattern}; tasks/ops/flower.py needs updating")


def _check_when_flower_starts(sender: Any = None, **_: Any) -> None:
    check_options()


def install() -> None:
    """Wire the above into Flower, before Flower builds its app (idempotent)."""
    global _installed
    if _installed:
        return
    replace_route("/broker", SqsBrokerView)
    replace_route("/metrics", AuthenticatedMetrics)
    signals.import_modules.connect(_check_when_flower_starts, weak=False)
    _installed = True
