"""What a message on a no-ack queue (pidbox, events, replies) must be before kombu sees it.

Whoever may publish to the ``…-celery-pidbox`` or ``…-celeryev`` SNS topic (Flower's role,
every worker, a mistaken script) reaches every worker's pidbox and event queues and every
Flower's. kombu takes what arrives there as its own envelope: ``Message="not json at all"``
raised ``KeyError('properties')`` inside the worker's event loop, Celery called it an
"Unrecoverable error", and every worker exited (issue 27). A deeply nested body raised
RecursionError the same way, an envelope whose body is not what Celery's consumers read
(a list where a dict goes, a string timestamp) raised further on, and in Flower each such
message restarted the event capture.

So tasks.broker.transport hands a message received on a no-ack queue to kombu only if
`problem` finds nothing wrong with it; otherwise the message is deleted (as kombu deletes
every no-ack message anyway), counted (`DROPPED`, by kind) and logged, at most one line
every LOG_EVERY seconds with the count, never the body. The checks are what kombu's
``Message`` and Celery's readers of these queues index or call without a guard:

- the envelope: kombu's JSON, unwrapped as kombu's SQS transport unwraps it (its optional
  base64) and read by kombu's own ``loads`` under a guard: an object whose ``properties`` hold a
  ``delivery_tag`` and a ``delivery_info`` with text ``exchange`` and ``routing_key``;
  headers an object (a ``clock`` an integer); content type JSON in UTF-8, the body
  base64-encoded JSON as kombu's virtual transport sends it;
- on an event queue: one event, or a ``task.multi`` group of task events; an event has a
  text ``type`` matching the routing key, a text ``hostname``, a finite numeric
  ``timestamp``, and each field Celery's state or Flower reads has its type;
- on a worker's pidbox: an object with a text ``method``, an object ``arguments``, a
  list of names ``destination``, and a ``reply_to`` on a reply exchange;
- on a reply queue: an object.

Well-formed messages are not judged further here: which event types, task names and
workers Flower counts is tasks.ops.flower_events's.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from kombu.utils.json import loads

log = logging.getLogger(__name__)
LOG_EVERY = 10.0  # seconds between two lines about dropped messages
DROPPED: Counter[str] = Counter()
_lock = threading.Lock()
_last_logged = [0.0]

Kind = str  # "events", "pidbox", "reply"
_NUMBER = (int, float)
# Fields of an event that Celery's state, its gossip or Flower read, and their types.
EVENT_FIELDS: dict[str, tuple[type, ...]] = {
    "type": (str,),
    "hostname": (str,),
    "timestamp": _NUMBER,
    "utcoffset": _NUMBER,
    "clock": (int,),
    "pid": (int,),
    "freq": _NUMBER,
    "active": (int,),
    "processed": (int,),
    "loadavg": (list,),
    "sw_ident": (str,),
    "sw_ver": (str,),
    "sw_sys": (str,),
    "uuid": (str,),
    "name": (str,),
    "runtime": _NUMBER,
    "retries": (int,),
    "eta": (str,),
    "expires": (str,),
    "root_id": (str,),
    "parent_id": (str,),
    "id": (str,),
    "topic": (str,),
    "action": (str,),
}
PIDBOX_FIELDS: dict[str, tuple[type, ...]] = {
    "method": (str,),
    "arguments": (dict,),
    "destination": (list,),
    "pattern": (str,),
    "matcher": (str,),
    "reply_to": (dict,),
    "ticket": (str,),
}


class Malformed(ValueError):
    """Why a message is dropped; names the part, never a value."""


def _typed(record: dict, fields: dict[str, tuple[type, ...]], what: str) -> None:
    for name, types in fields.items():
        value = record.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            raise Malformed(f"{what} field {name} has the wrong type")
        if isinstance(value, float) and not math.isfinite(value):
            raise Malformed(f"{what} field {name} is not a finite number")


def _event(event: object, routing_key: str | None) -> None:
    if not isinstance(event, dict):
        raise Malformed("event is not an object")
    _typed(event, EVENT_FIELDS, "event")
    for required in ("type", "hostname", "timestamp"):
        if event.get(required) is None:
            raise Malformed(f"event has no {required}")
    if routing_key is not None and routing_key != event["type"].replace("-", "."):
        raise Malformed("event type does not match its routing key")
    if event["type"].startswith("task-") and event.get("uuid") is None:
        raise Malformed("task event has no uuid")
    if event["type"] in ("worker-elect", "worker-elect-ack") and not (event.get("id") and event.get("clock")):
        raise Malformed("election event has no id or clock")
    loadavg = event.get("loadavg")
    if loadavg is not None and not all(isinstance(x, _NUMBER) and not isinstance(x, bool) for x in loadavg):
        raise Malformed("event field loadavg has the wrong type")


def _events(body: object, routing_key: str) -> None:
    if isinstance(body, list):  # Celery's group of task events, "task.multi"
        if routing_key != "task.multi" or not body:
            raise Malformed("a list of events that is not a task.multi group")
        for event in body:
            _event(event, None)
            if not event["type"].startswith("task-"):
                raise Malformed("a task.multi group holds a worker event")
        return
    _event(body, routing_key)


def _pidbox(body: object) -> None:
    if not isinstance(body, dict):
        raise Malformed("control message is not an object")
    _typed(body, PIDBOX_FIELDS, "control message")
    if not body.get("method"):
        raise Malformed("control message has no method")
    destination = body.get("destination")
    if destination is not None and not all(isinstance(name, str) for name in destination):
        raise Malformed("control message's destination is not a list of names")
    reply_to = body.get("reply_to")
    if reply_to is not None:
        exchange, key = reply_to.get("exchange"), reply_to.get("routing_key")
        if not (isinstance(exchange, str) and isinstance(key, str) and exchange.startswith("reply.")):
            raise Malformed("control message's reply_to is not a reply exchange and key")


def _json(text: str | bytes, what: str) -> Any:
    try:
        return loads(text)
    except Exception:  # kombu's own reader: ValueError, RecursionError, its object hooks' errors
        raise Malformed(f"{what} is not JSON") from None


def envelope(raw: object, unwrap: Callable[[bytes], bytes]) -> dict:
    """kombu's envelope in a received body, checked; Malformed if not. `unwrap` is how the
    transport reads a body (kombu's optional base64), so this reads what kombu will."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if not isinstance(raw, bytes):
        raise Malformed("body is not text")
    payload = _json(unwrap(raw), "body")
    if not isinstance(payload, dict):
        raise Malformed("body is not a kombu envelope")
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        raise Malformed("envelope has no properties")
    info = properties.get("delivery_info")
    if properties.get("delivery_tag") is None or not isinstance(info, dict):
        raise Malformed("envelope has no delivery tag or delivery info")
    if not (isinstance(info.get("exchange"), str) and isinstance(info.get("routing_key"), str)):
        raise Malformed("envelope's delivery info has no exchange or routing key")
    headers = payload.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise Malformed("envelope's headers are not an object")
    clock = (headers or {}).get("clock")
    if clock is not None and (isinstance(clock, bool) or not isinstance(clock, int)):
        raise Malformed("envelope's clock is not an integer")
    if payload.get("content-type") != "application/json" or payload.get("content-encoding") != "utf-8":
        raise Malformed("envelope's content is not JSON in UTF-8")
    if properties.get("body_encoding") != "base64" or not isinstance(payload.get("body"), str):
        raise Malformed("envelope's body is not base64")
    return payload


def content(payload: dict) -> Any:
    """The envelope's body as Celery will read it."""
    try:
        body = base64.b64decode(payload["body"], validate=True)
    except (binascii.Error, ValueError):
        raise Malformed("envelope's body is not base64") from None
    return _json(body, "envelope's body")


def problem(raw: object, kind: Kind, unwrap: Callable[[bytes], bytes]) -> str | None:
    """Why a message received on a no-ack queue of this kind must not reach kombu, or None."""
    try:
        payload = envelope(raw, unwrap)
        body = content(payload)
        if kind == "events":
            _events(body, payload["properties"]["delivery_info"]["routing_key"])
        elif kind == "pidbox":
            _pidbox(body)
        elif not isinstance(body, dict):
            raise Malformed("reply is not an object")
    except Malformed as exc:
        return str(exc)
    except Exception as exc:  # a shape no check foresaw: dropped all the same
        return f"message could not be read: {type(exc).__name__}"
    return None


def dropped(queue: str, kind: Kind, why: str) -> None:
    """Count a dropped message, and log it unless a line went out within LOG_EVERY seconds."""
    with _lock:
        DROPPED[kind] += 1
        now = time.monotonic()
        if now - _last_logged[0] < LOG_EVERY:
            return
        _last_logged[0] = now
        total = sum(DROPPED.values())
    log.warning(
        "dropped a malformed message on %s (%s); %d malformed broadcast messages dropped so far by this process",
        queue,
        why,
        total,
        extra={"dropped_broadcasts": total},
    )
