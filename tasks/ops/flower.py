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
- The credentials (``credential_refusal``): every basic-auth entry, however it was given
  (``--basic_auth``, Flower's FLOWER_BASIC_AUTH, ours through flowerconfig.py, a config
  file), must be "user:password" with a user and a password; beyond the loopback the
  password must have MIN_PASSWORD_LENGTH characters or more. Checked on the final
  options, so an empty entry (``--basic_auth=``, ``FLOWER_BASIC_AUTH=:``) never counts
  as auth.
- DNS rebinding (``route_by_host``): without auth, Flower answers only requests
  whose Host is a loopback name (localhost, 127.x.y.z, [::1], with or without a port);
  any other Host gets 421 before routing, so no handler runs. A page on another site
  that rebinds its own name to 127.0.0.1 reaches nothing.
- Read-only by default: Flower's own ``read_only`` mode (every control endpoint answers
  403, the templates hide the controls) is forced on unless FLOWER_ALLOW_CONTROL is set,
  and that needs basic auth, under which Flower refuses cross-site requests.
- The Broker page on SQS (``SqsBrokerView``): visible and in-flight messages of every
  queue the pipeline uses, from GetQueueAttributes. Flower's page knows RabbitMQ and
  Redis only; it shows SQS's visible count as "Ready" and in-flight as "Unacked".
- LOG_FORMAT=json: Flower's log lines (tornado's handler on the root logger) as JSON,
  set when the options are checked (tasks/ops/logs.py).
- Stopping within STOP_SECONDS of SIGTERM or SIGINT in any state (tasks/ops/stopping.py):
  Flower's own handler exits, then the interpreter joins Flower's executor threads, and
  one calling the broker while it is unreachable (``enable_events`` every 5 s) retries
  for minutes; a /metrics scrape waiting on PostgreSQL keeps the handler from running.
- Events that would grow /metrics without bound (unknown types, unregistered task
  names, workers beyond a bounded count) are dropped before Flower counts them
  (tasks/ops/flower_events.py).
- /metrics behind Flower's auth when auth is configured (``AuthenticatedMetrics``), with
  the workers alive by their heartbeats (tasks/ops/workers.py; Flower's own
  ``flower_worker_online`` stays 1 for a worker killed without a goodbye).
  /healthcheck stays open: it answers "OK" and nothing else, for probes that carry no
  secret.
- Failing closed (``refuse_unless_guarded``): whatever loads the app, tasks/celery.py
  asks each Flower, as it builds its app, whether the wrappers above are in place in the
  app it built: its router checks the Host, /broker and /metrics route to the handlers
  here. If not (install() never ran, or Flower stopped reading what it edits), Flower
  refuses to start: one line, exit status 1.

Flower internals relied on (flower 2.2.0; tests/test_flower_*.py fail if they change):

- ``flower.urls.handlers``: the module-level route list that ``Flower.__init__`` reads;
  install() replaces its /broker and /metrics entries in place.
- ``flower.app.Flower.__init__``: reads the routes, then calls the Celery app's
  ``loader.import_default_modules()`` (which sends ``import_modules``), after
  ``flower.command`` has applied every option and before it binds the port.
- ``flower.views.BaseHandler.get_broker`` (returns an object with ``async queues(names)``)
  and the keys that templates/broker.html reads of a queue (name, messages,
  messages_ready, messages_unacknowledged, consumers, idle_since).
- ``flower.app.Flower`` is a tornado ``Application``, which routes every request through
  ``find_handler`` (install() wraps it) and builds handlers with ``get_handler_delegate``.
- ``flower.views.monitor.Metrics``, the app's ``events.state`` (celery's events State),
  and ``BaseHandler.get_current_user``, which raises 401
  for missing or wrong basic-auth credentials and accepts everyone without auth.
- ``BaseHandler.check_xsrf_cookie``: under auth, refuses a write whose Sec-Fetch-Site or
  Origin names another site (what makes FLOWER_ALLOW_CONTROL safe to offer).
- The ``read_only`` option and the FLOWER_UNAUTHENTICATED_API environment variable.
- ``Flower.__init__`` starts no thread before ``import_modules``: its executor's threads
  and the ``Events`` thread start later (stopping.stop_within refuses to run otherwise,
  and Flower would then fail to start, so the tests would say).

Upstream: the Broker page on SQS is flower#687 and flower#497 (closed, "no plans to
support SQS"); the safety checks: none filed, draft in docs/upstream.md. Delete
``SqsBrokerView`` when Flower supports SQS (`python dev/devkit/repro.py broker` exits 3);
the checks are policy and stay, but leave Flower's internals once it offers a route hook.
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
from flower import app as flower_app
from flower import urls
from flower.utils import strtobool
from flower.views.broker import BrokerView
from flower.views.monitor import Metrics
from tornado import web
from tornado.httputil import HTTPServerRequest
from tornado.options import OptionParser, options

import celeryconfig as config
from tasks.broker import aws
from tasks.ops import flower_events, logs, status, stopping, workers

log = logging.getLogger(__name__)
_installed = False
# A Flower reachable beyond the loopback needs a password at least this long.
MIN_PASSWORD_LENGTH = 12
# Seconds from SIGTERM or SIGINT to exit, whatever Flower is doing (tasks/ops/stopping.py):
# at exit it joins its executor's threads, each stuck while the broker is unreachable.
STOP_SECONDS = 6.0


def is_loopback(address: str) -> bool:
    """Whether Flower bound to `address` is reachable from this machine only."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # "" (every interface) or a host name
        return False


def is_loopback_host(host: str) -> bool:
    """Whether an HTTP Host header names this machine's loopback (any port)."""
    name = host.strip().lower()
    if name.startswith("["):  # "[::1]" or "[::1]:5555"
        name, _, rest = name[1:].partition("]")
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return False
    elif name.count(":") == 1:  # "name:port"
        name, _, port = name.partition(":")
        if not port.isdigit():
            return False
    return name == "localhost" or (name != "" and _is_loopback_ip(name))


def _is_loopback_ip(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def has_auth(opts: OptionParser) -> bool:
    return bool(opts.basic_auth or opts.auth)


def exposed(opts: OptionParser) -> bool:
    """Whether Flower would listen beyond this machine (a unix socket is local)."""
    return not (opts.unix_socket or is_loopback(opts.address))


def credential_refusal(entries: Iterable[str], beyond_loopback: bool, server: str = "Flower") -> str | None:
    """Why these basic-auth entries must not be used, or None; quotes no part of them.
    (The metrics server, tasks/ops/exporter.py, applies the same rules.)"""
    for number, entry in enumerate(entries, start=1):
        user, colon, password = entry.partition(":")
        if not (colon and user.strip() and password.strip()):
            return f"basic auth entry {number} lacks a user or a password: give user:password"
        if beyond_loopback and len(password) < MIN_PASSWORD_LENGTH:
            return (
                f"basic auth entry {number} has a password shorter than {MIN_PASSWORD_LENGTH} characters,"
                f" and {server} would listen beyond the loopback: choose a longer one"
            )
    return None


def refusal(opts: OptionParser, allow_control: bool, environ: Mapping[str, str]) -> str | None:
    """Why Flower must not start with these final options, or None."""
    bad_credential = credential_refusal(opts.basic_auth or [], exposed(opts))
    if bad_credential:
        return bad_credential
    if has_auth(opts):
        return None
    where = "a unix socket" if opts.unix_socket else (opts.address or "every interface")
    if exposed(opts):
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
    """/metrics under Flower's auth: open without auth, 401 without valid credentials;
    with ``login_pipeline_workers_alive`` counted from Flower's events state."""

    @web.authenticated
    async def get(self) -> None:
        workers.watch(self.application.events.state)
        await super().get()


class MisdirectedRequest(web.RequestHandler):
    """421 for a request whose Host is not this machine's loopback, whatever its method."""

    def prepare(self) -> None:
        raise web.HTTPError(421, reason="Misdirected Request")

    def check_xsrf_cookie(self) -> None:  # runs before prepare() on a POST: the same answer
        self.prepare()


def route_by_host(find_handler: Any) -> Any:
    """Flower's router, answering 421 before routing when no auth is configured and the
    Host header is not a loopback name (DNS rebinding)."""

    def find_checked_handler(self: web.Application, request: Any, **kwargs: Any) -> Any:
        if not has_auth(options) and not is_loopback_host(request.host or ""):
            return self.get_handler_delegate(request, MisdirectedRequest)
        return find_handler(self, request, **kwargs)

    return find_checked_handler


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


def _routed_to(app: flower_app.Flower, path: str) -> Any:
    """The handler class the app's own router picks for a loopback GET of `path`."""
    prefix = (getattr(app.options, "url_prefix", "") or "").strip("/")
    request = HTTPServerRequest(method="GET", uri=f"/{prefix}{path}" if prefix else path, host="127.0.0.1")
    return getattr(app.find_handler(request), "handler_class", None)


def missing_safeguards(app: flower_app.Flower) -> list[str]:
    """What of install()'s wiring this Flower app, as built, lacks (none: all in place)."""
    missing = []
    router = getattr(app.find_handler, "__func__", None)
    if getattr(router, "__module__", None) != __name__ or getattr(router, "__name__", "") != "find_checked_handler":
        missing.append("the Host check")
    if _routed_to(app, "/broker") is not SqsBrokerView:
        missing.append("the SQS Broker page")
    if _routed_to(app, "/metrics") is not AuthenticatedMetrics:
        missing.append("/metrics behind auth")
    return missing


def refuse_unless_guarded(app: flower_app.Flower) -> None:
    """Exit (one line, status 1) before Flower serves, unless its safety wrappers are in place."""
    missing = missing_safeguards(app)
    if missing:
        sys.exit(
            f"flower refused to start: its safety wrappers are not in place ({', '.join(missing)}):"
            " tasks/ops/flower.py's install() did not run, or Flower no longer reads what it changes"
        )


def _check_when_flower_starts(sender: Any = None, **_: Any) -> None:
    check_options()
    logs.use_configured_format()  # tornado has set up its handlers by now
    stopping.stop_within(STOP_SECONDS, "flower")  # before Flower starts its threads


def install() -> None:
    """Wire the above into Flower, before Flower builds its app (idempotent)."""
    global _installed
    if _installed:
        return
    replace_route("/broker", SqsBrokerView)
    replace_route("/metrics", AuthenticatedMetrics)
    flower_app.Flower.find_handler = route_by_host(flower_app.Flower.find_handler)
    flower_events.install()
    workers.register()
    signals.import_modules.connect(_check_when_flower_starts, weak=False)
    _installed = True
