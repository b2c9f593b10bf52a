"""Hostile messages on the pidbox and events topics (issue 27, findings 2 and 8).

Whoever may publish to the ``…-celery-pidbox`` or ``…-celeryev`` SNS topic reaches every
worker's and every Flower's queues. Here this test process is that publisher: garbage of
many shapes goes through the real topics to a real worker (with gossip, heartbeats and
its pidbox, as in production) and a real Flower, which must keep working; and crafted,
well-formed events must not grow Flower's /metrics beyond its bounds.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

import celeryconfig as config
from tasks.broker import aws
from tasks.celery import app
from tasks.ops.flower_events import MAX_WORKERS
from tests.helpers import ROOT, Worker, flower_request, free_port, start_flower, stop_process, wait_until

pytestmark = pytest.mark.usefixtures("test_stack")
AUTH = ("monitor", "test-only-password")


def topic_arn(suffix: str) -> str:
    sns = aws.client("sns")
    arns = [t["TopicArn"] for t in sns.list_topics().get("Topics", [])]
    return next(arn for arn in arns if arn.endswith(f":{config.CELERY_QUEUE_PREFIX}{suffix}"))


def envelope(content: object, routing_key: str = "worker.heartbeat", exchange: str = "celeryev", **over: object) -> str:
    """kombu's envelope as its virtual transport publishes it, with `over` replacing parts."""
    message: dict = {
        "body": base64.b64encode(json.dumps(content).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": "forged@nowhere"},
        "properties": {
            "delivery_info": {"exchange": exchange, "routing_key": routing_key},
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "delivery_mode": 1,
            "priority": 0,
        },
    }
    message.update(over)
    return json.dumps(message)


def event(**fields: object) -> dict:
    return {"type": "worker-heartbeat", "hostname": "forged@nowhere", "timestamp": time.time(), **fields}


GARBAGE = {
    "not JSON": "not json at all",
    "JSON without properties": '{"no": "properties"}',
    "a JSON list": "[1, 2, 3]",
    "a JSON string": '"just text"',
    "base64 of not JSON": base64.b64encode(b"not json at all").decode(),
    "nested 100,000 deep": "[" * 100_000 + "]" * 100_000,
    "huge": "x" * 200_000,
    "kombu's object hook refuses it": json.dumps({"__type__": "uuid", "__value__": "not a uuid"}),
    "properties a list": envelope(event(), properties=[1, 2]),
    "no delivery info": envelope(event(), properties={"delivery_tag": "t", "body_encoding": "base64"}),
    "headers a list": envelope(event(), headers=[1]),
    "clock as text": envelope(event(), headers={"clock": "noon"}),
    "body not base64": envelope(event(), body="%%% not base64 %%%"),
    "body base64 of not JSON": envelope(event(), body=base64.b64encode(b"{not json").decode()),
    "content type pickle": envelope(event(), **{"content-type": "application/x-python-serialize"}),
    "event a list of numbers": envelope([1, 2]),
    "event timestamp as text": envelope(event(timestamp="yesterday")),
    "event hostname a list": envelope(event(hostname=["a"])),
    "event NaN timestamp": envelope(event(timestamp=float("nan"))),
    "a worker event in a task group": envelope([event()], routing_key="task.multi"),
    "routing key of another type": envelope(event(), routing_key="worker.elect"),
    "election without id": envelope(event(type="worker-elect"), routing_key="worker.elect"),
    "task event without uuid": envelope(event(type="task-started"), routing_key="task.started"),
    "control without method": envelope({"arguments": {}}, "", "celery.pidbox"),
    "control destination as text": envelope({"method": "ping", "destination": "all"}, "", "celery.pidbox"),
    "control reply to a task queue": envelope(
        {"method": "ping", "reply_to": {"exchange": "batches", "routing_key": "batches"}}, "", "celery.pidbox"
    ),
    "control arguments a list": envelope({"method": "ping", "arguments": [1]}, "", "celery.pidbox"),
}


@pytest.fixture(scope="module")
def watched() -> Iterator[tuple[Worker, int]]:
    """A worker as production runs it (gossip, heartbeats) and a Flower watching it."""
    worker = Worker(f"hostile-{time.monotonic_ns()}", heartbeat=True, gossip=True)
    port = free_port()
    flower = start_flower(port, {"FLOWER_BASIC_AUTH": ":".join(AUTH)}, name="flower-hostile")
    try:
        wait_until(lambda: online(port, worker.node), timeout=60, what="Flower to see the worker")
        yield worker, port
    finally:
        stop_process(flower)
        worker.stop()


def metrics(port: int) -> str:
    status, body = flower_request(port, "/metrics", auth=AUTH)
    assert status == 200, status
    return body


def online(port: int, node: str) -> bool:
    return f'flower_worker_online{{worker="{node}"}} 1.0' in metrics(port)


def announce(hostname: str) -> None:
    """A well-formed worker-online event from `hostname`, through the events topic."""
    with app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, hostname=hostname, enabled=True)
        dispatcher.send("worker-online")
        dispatcher.close()


def inspect_ping(node: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "celery", "-A", "tasks", "inspect", "ping", "-d", node, "--timeout", "10"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_garbage_on_both_topics_stops_neither_worker_nor_flower(watched: tuple[Worker, int]) -> None:
    worker, port = watched
    flower_log = config.STACK_DIR / f"flower-hostile-{port}.log"
    sns = aws.client("sns")
    for suffix in ("celery-pidbox", "celeryev"):
        arn = topic_arn(suffix)
        for message in GARBAGE.values():
            sns.publish(TopicArn=arn, Message=message)
    worker.wait_for("dropped a malformed message", timeout=60)
    wait_until(lambda: "dropped a malformed message" in flower_log.read_text(), timeout=60, what="Flower to drop")
    # Both keep working: the worker answers remote control, Flower still takes its events.
    result = inspect_ping(worker.node)
    assert result.returncode == 0 and "pong" in result.stdout, result.stdout + result.stderr
    announce("after-the-garbage@nowhere")
    wait_until(lambda: online(port, "after-the-garbage@nowhere"), timeout=30, what="Flower to take a later event")
    assert flower_request(port, "/healthcheck") == (200, "OK")
    log = worker.log.read_text()
    assert worker.process.poll() is None, log[-3000:]
    assert "Unrecoverable error" not in log and "Control command error" not in log
    assert "Failed to capture events" not in flower_log.read_text()


def test_crafted_events_do_not_grow_flowers_metrics(watched: tuple[Worker, int]) -> None:
    """Well-formed events from forged workers, of forged tasks and types: /metrics keeps
    at most MAX_WORKERS workers, and no forged task name or type."""
    worker, port = watched
    before = len(metrics(port).splitlines())
    with app.connection_for_write() as conn:
        for i in range(300):
            dispatcher = app.events.Dispatcher(conn, hostname=f"forged-{i}@nowhere", enabled=True)
            dispatcher.send("task-received", uuid=str(uuid.uuid4()), name=f"evil.task.{i}", retries=0)
            dispatcher.send(f"task-custom-{i}", uuid=str(uuid.uuid4()))
            dispatcher.send("worker-heartbeat", freq=2.0, active=i, processed=i)
            dispatcher.close()
    announce("sentinel@nowhere")
    wait_until(lambda: online(port, "sentinel@nowhere"), timeout=60, what="Flower to take the sentinel")
    wait_until(lambda: online(port, worker.node), timeout=30, what="the real worker's series to come back")
    text = metrics(port)
    workers = set(re.findall(r'worker="([^"]*)"', text))
    lines = len(text.splitlines())
    print(f"\n/metrics: {before} lines before, {lines} after 900 crafted events; {len(workers)} workers")
    assert "evil.task" not in text and "task-custom" not in text
    assert len(workers) <= MAX_WORKERS + 1  # +1: an eviction may wait for Flower's I/O loop
    assert lines <= before + 4 * (MAX_WORKERS + 1)
