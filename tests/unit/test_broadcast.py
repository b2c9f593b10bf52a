"""What reaches kombu from a no-ack queue (tasks/broker/broadcast.py), and what Flower
counts (tasks/ops/flower_events.py): real kombu envelopes pass, every other shape is
named and dropped. The same shapes go through a real worker and Flower in
tests/test_hostile_broadcasts.py."""

from __future__ import annotations

import base64
import json
import time

import pytest
from kombu import Connection, Exchange, Queue
from kombu.transport.SQS import Channel

from tasks.broker.broadcast import problem
from tasks.ops.flower_events import Admission


def unwrap(raw: bytes) -> bytes:
    """kombu's SQS transport's own reading of a body (its optional base64)."""
    return Channel._decode_python_message_body(Channel.__new__(Channel), raw)


def published(body: object, exchange: str, routing_key: str, **headers: object) -> str:
    """The envelope kombu's virtual transport makes of a publish, as SQS would carry it."""
    with Connection("memory://") as conn:
        queue = Queue("broadcast-test", Exchange(f"test-{exchange}", type="direct"), routing_key=routing_key)
        conn.Producer().publish(
            body, exchange=queue.exchange, routing_key=routing_key, declare=[queue], headers=headers
        )
        return json.dumps(conn.default_channel._get("broadcast-test"))


def heartbeat(**fields: object) -> dict:
    return {
        "type": "worker-heartbeat",
        "hostname": "w@h",
        "timestamp": time.time(),
        "utcoffset": 0,
        "clock": 3,
        **fields,
    }


GOOD = {
    "heartbeat": (published(heartbeat(loadavg=[0.1, 0.2, 0.3], freq=2.0), "celeryev", "worker.heartbeat"), "events"),
    "task group": (
        published(
            [{"type": "task-started", "hostname": "w@h", "timestamp": 1.0, "uuid": "u"}], "celeryev", "task.multi"
        ),
        "events",
    ),
    "ping": (
        published(
            {
                "method": "ping",
                "arguments": {},
                "destination": None,
                "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "k"},
                "ticket": "t",
            },
            "celery.pidbox",
            "",
            clock=4,
        ),
        "pidbox",
    ),
    "reply": (published({"w@h": {"ok": "pong"}}, "reply.celery.pidbox", "k", ticket="t"), "reply"),
}


@pytest.mark.parametrize(("raw", "kind"), GOOD.values(), ids=GOOD.keys())
def test_kombus_own_envelopes_pass(raw: str, kind: str) -> None:
    assert problem(raw, kind, unwrap) is None


def replaced(raw: str, **parts: object) -> str:
    envelope = json.loads(raw)
    envelope.update(parts)
    return json.dumps(envelope)


def with_body(raw: str, body: object) -> str:
    return replaced(raw, body=base64.b64encode(json.dumps(body).encode()).decode())


HEARTBEAT, PING = GOOD["heartbeat"][0], GOOD["ping"][0]
BAD = {
    "not JSON": ("not json at all", "events", "body is not JSON"),
    "no properties": ('{"a": 1}', "pidbox", "envelope has no properties"),
    "nested": ("[" * 100_000 + "]" * 100_000, "events", "body is not JSON"),
    "object hook": (json.dumps({"__type__": "uuid", "__value__": "x"}), "events", "body is not JSON"),
    "headers a list": (replaced(HEARTBEAT, headers=[1]), "events", "headers are not an object"),
    "body not base64": (replaced(HEARTBEAT, body="%%%"), "events", "not base64"),
    "timestamp text": (with_body(HEARTBEAT, heartbeat(timestamp="noon")), "events", "timestamp has the wrong type"),
    "timestamp NaN": (with_body(HEARTBEAT, heartbeat(timestamp=float("nan"))), "events", "not a finite number"),
    "boolean pid": (with_body(HEARTBEAT, heartbeat(pid=True)), "events", "pid has the wrong type"),
    "type unlike the key": (with_body(HEARTBEAT, heartbeat(type="worker-online")), "events", "routing key"),
    "a list, not a group": (with_body(HEARTBEAT, [heartbeat()]), "events", "task.multi"),
    "loadavg of text": (with_body(HEARTBEAT, heartbeat(loadavg=["x"])), "events", "loadavg"),
    "control without method": (with_body(PING, {"arguments": {}}), "pidbox", "no method"),
    "destination text": (with_body(PING, {"method": "ping", "destination": "all"}), "pidbox", "wrong type"),
    "reply to a task queue": (
        with_body(PING, {"method": "ping", "reply_to": {"exchange": "batches", "routing_key": "batches"}}),
        "pidbox",
        "reply exchange",
    ),
    "reply a list": (with_body(PING, [1]), "reply", "reply is not an object"),
}


@pytest.mark.parametrize(("raw", "kind", "why"), BAD.values(), ids=BAD.keys())
def test_every_other_shape_is_named(raw: str, kind: str, why: str) -> None:
    reason = problem(raw, kind, unwrap)
    assert reason is not None and why in reason
    assert "noon" not in reason and "%%%" not in reason  # a reason names the part, never a value


def test_flower_counts_only_known_types_and_registered_tasks() -> None:
    admission = Admission(lambda: {"tasks.mask_and_insert"})
    assert admission.refusal(heartbeat()) is None
    assert admission.refusal({**heartbeat(), "type": "task-custom"}) == "an event of an unknown type"
    received = {**heartbeat(), "type": "task-received", "uuid": "u"}
    assert admission.refusal({**received, "name": "tasks.mask_and_insert"}) is None
    assert admission.refusal({**received, "name": "evil.task"}) == "an event of a task the app does not register"
    assert admission.refusal({**heartbeat(), "hostname": "h" * 256}) == "an event with no usable hostname"


def test_workers_beyond_the_bound_push_out_the_one_silent_longest() -> None:
    admission = Admission(set, max_workers=3)
    assert [admission.heard_from(name) for name in ("a", "b", "c", "a")] == [None] * 4
    assert admission.heard_from("d") == "b"  # a spoke again after b
    assert admission.heard_from("e") == "c"
    assert list(admission.workers) == ["a", "d", "e"]
