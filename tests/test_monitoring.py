"""Remote control, task events and Flower on the SQS broker (tasks.transport).

Every test talks to a real worker process over the test stack's LocalStack; this
test process plays the client (`celery inspect`, an event listener), so it has no
kombu event loop, like the real clients.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from celery.events.event import get_exchange
from celery.events.receiver import EventReceiver
from kombu import Connection, Exchange, Producer

import celeryconfig as config
from devkit import seed
from tasks.broker import aws
from tasks.broker.transport import Transport
from tasks.celery import app
from tests.helpers import ROOT, flower_api, free_port, start_flower, stop_process, wait_until

pytestmark = pytest.mark.usefixtures("test_stack")
FLOWER_PORT = free_port()
# Flower's API answers only under auth (tasks/ops/flower.py refuses FLOWER_UNAUTHENTICATED_API).
AUTH = ("monitor", "test-only-password")


def queue_names() -> set[str]:
    urls = aws.client("sqs").list_queues(QueueNamePrefix=config.CELERY_QUEUE_PREFIX).get("QueueUrls", [])
    return {u.rsplit("/", 1)[1] for u in urls}


def test_fanout_is_declared_so_celery_enables_remote_control() -> None:
    assert "fanout" in Transport.implements.exchange_type
    with app.connection_for_write() as conn:
        assert conn.transport.implements.exchange_type >= {"direct", "fanout"}


def test_inspect_ping_gets_a_reply_from_the_worker(worker) -> None:
    replies = app.control.inspect(timeout=5).ping()
    assert replies and any(name.startswith(worker.name) for name in replies)


def test_the_cli_gets_its_reply_and_leaves_no_reply_queue(worker) -> None:
    before = {q for q in queue_names() if "reply" in q}
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "inspect", "ping", "--timeout", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "pong" in result.stdout, result.stderr
    assert {q for q in queue_names() if "reply" in q} == before


def inspect_ping(node: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`celery -A tasks inspect ping` of one node, as an operator runs it."""
    command = [sys.executable, "-m", "celery", "-A", "tasks", "inspect", "ping", "-d", node, "--timeout", str(timeout)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_late_replies_to_clients_that_gave_up_leave_no_queue(test_stack) -> None:
    """The stopped-worker recipe: three clients time out while the worker is stopped and
    exit; resumed, the worker answers all three. No reply queue may be left."""
    from tests.helpers import Worker

    worker = Worker(f"late-{time.monotonic_ns()}")
    try:
        assert "pong" in inspect_ping(worker.node, 10).stdout  # its pidbox is consumed
        before = {q for q in queue_names() if "reply" in q}
        os.kill(worker.process.pid, signal.SIGSTOP)
        try:
            for _ in range(3):
                gave_up = inspect_ping(worker.node, 1)
                assert "No nodes replied" in gave_up.stdout + gave_up.stderr, gave_up.stdout
        finally:
            os.kill(worker.process.pid, signal.SIGCONT)
        pidbox = next(
            q for q in queue_names() if q.startswith(f"{config.CELERY_QUEUE_PREFIX}{worker.name}") and "pidbox" in q
        )

        def answered_the_backlog() -> bool:
            depth = aws.queue_depth(pidbox)  # the three pings received (and deleted: no-ack) ...
            return depth == {"visible": 0, "in_flight": 0} and "pong" in inspect_ping(worker.node, 5).stdout

        wait_until(answered_the_backlog, timeout=60, poll=0.5, what="the worker to answer its backlog")
        # ... and answered: one loop handles the pidbox's messages in turn, the later ping last
        assert {q for q in queue_names() if "reply" in q} == before
    finally:
        worker.kill()


def test_a_reply_with_no_local_binding_reaches_the_queue_named_after_its_routing_key() -> None:
    reply_queue = app.control.mailbox(app.connection_for_write()).reply_queue
    with app.connection_for_write() as client:  # the client waits, its reply queue declared
        bound = reply_queue(client.default_channel)
        bound.declare()
        with app.connection_for_write() as replier:  # another connection: no binding known there
            exchange = Exchange(reply_queue.exchange.name, "direct", durable=False)
            Producer(replier.default_channel).publish(
                {"hello": 1}, exchange=exchange, routing_key=reply_queue.routing_key, declare=[exchange]
            )
        message = wait_until(lambda: bound.get(no_ack=True), timeout=10, what="the reply")
        assert message.payload == {"hello": 1}
        # point 4: the no-ack message was deleted without an event loop, so it is gone
        assert bound.get(no_ack=True) is None


def batch_succeeded(carried: list[tuple[int, dict]]) -> str | None:
    """The id of a mask_and_insert task whose task-succeeded event has come, if any."""
    names = {e["uuid"]: e.get("name") for _, e in carried if e["type"] == "task-received"}
    done = [e["uuid"] for _, e in carried if e["type"] == "task-succeeded"]
    return next((uuid for uuid in done if names.get(uuid) == "tasks.mask_and_insert"), None)


def test_task_events_reach_a_listener_in_another_process_in_groups(worker) -> None:
    """Celery's receiver, as Flower runs it, gets every event of a batch; the worker sends
    those of TASK_EVENTS_GROUP_MS as one message (tasks/broker/consumer.py), so a batch
    task's received, started and succeeded come in fewer messages than three."""
    seen: list[str] = []
    carried: list[tuple[int, dict]] = []  # (message number, event)

    class Receiver(EventReceiver):
        def _receive(self, body: object, message: object, **kwargs: object) -> None:
            number = len({n for n, _ in carried})
            carried.extend((number, event) for event in (body if isinstance(body, list) else [body]))
            super()._receive(body, message)

    with Connection(
        config.broker_url, transport=config.broker_transport, transport_options=config.broker_transport_options
    ) as conn:
        receiver = Receiver(conn, handlers={"*": lambda event: seen.append(event["type"])}, app=app)
        listener = threading.Thread(target=receiver.capture, kwargs={"limit": None, "wakeup": False}, daemon=True)
        listener.start()
        try:
            channel = conn.channel()
            get_exchange(conn)(channel).declare()  # as Celery's event dispatcher declares it
            assert channel.state.exchanges["celeryev"]["type"] == "fanout"
            time.sleep(3)  # the listener's queue is subscribed to the SNS topic
            seed.send(config.SOURCE_QUEUE, seed.sample_bodies()[:10])
            batch = wait_until(lambda: batch_succeeded(list(carried)), timeout=60, what="a batch's task-succeeded")
        finally:
            receiver.should_stop = True
            listener.join(timeout=10)
    assert {"task-received", "task-started", "task-succeeded"} <= set(seen)
    ours = [(number, e["type"]) for number, e in carried if e.get("uuid") == batch]
    assert len({number for number, _ in ours}) < len(ours) == 3, ours


@pytest.fixture
def flower(worker):
    process = start_flower(FLOWER_PORT, env={"FLOWER_BASIC_AUTH": ":".join(AUTH)})
    yield process
    stop_process(process)


def api(path: str) -> object:
    return flower_api(FLOWER_PORT, path, auth=AUTH)


def test_flower_shows_workers_tasks_and_pipeline_metrics(flower, worker) -> None:
    assert wait_until(
        lambda: any(n.startswith(worker.name) for n in api("/api/workers?refresh=1") or {}),
        timeout=30,
        what="the worker in Flower",
    )
    seed.send(config.SOURCE_QUEUE, seed.sample_bodies())

    def succeeded() -> list[dict]:
        tasks = api("/api/tasks?taskname=tasks.mask_and_insert&state=SUCCESS") or {}
        return list(tasks.values())

    task = wait_until(succeeded, timeout=60, what="a succeeded batch in Flower")[0]
    assert task["runtime"] > 0 and task["args"].startswith("batch of ")
    assert "ip" not in task["args"] and "device_id" not in task["args"]
    metrics = api("/metrics")
    assert isinstance(metrics, str)
    from tasks.ops.metrics import SPECS  # Flower serves every metric the standalone server does

    missing = [spec.name for spec in SPECS if f"\n{spec.name}" not in metrics]
    assert not missing, f"not on Flower's /metrics: {missing}"
    assert 'flower_events_total{task="tasks.mask_and_insert",type="task-succeeded"' in metrics


def test_flower_refreshing_its_workers_reuses_its_reply_queues(flower, worker) -> None:
    """Each refresh is an inspect round of several calls; kombu named a new SQS queue per
    call (about 160 alive at once with a refresh every 3 s). One per Flower thread now."""

    def reply_queues() -> set[str]:
        return {q for q in queue_names() if q.endswith("-reply-celery-pidbox")}  # kombu's "." is "-" on SQS

    before = reply_queues()
    for _ in range(15):
        assert api("/api/workers?refresh=1") is not None
    made = reply_queues() - before
    assert reply_queues() and len(made) <= 8, f"{len(made)} new reply queues in 15 refreshes, not one per thread"


def test_flower_removes_its_event_queue_when_it_exits(worker) -> None:
    def event_queues() -> set[str]:
        return {q for q in queue_names() if "celeryev" in q}

    before = event_queues()  # a Flower killed earlier in the session leaves its own (`sweep` removes those)
    process = start_flower(FLOWER_PORT, env={"FLOWER_BASIC_AUTH": ":".join(AUTH)})
    try:
        created = wait_until(lambda: event_queues() - before, timeout=30, what="its event queue")
        process.terminate()
        process.wait(timeout=30)
    finally:
        stop_process(process)
    assert not created & queue_names()


def test_liveness_follows_the_worker_heartbeat(test_stack, tmp_path) -> None:
    from tests.helpers import Worker, python_m_tasks

    health = {"WORKER_HEALTH_FILE": str(tmp_path / "alive" / "worker.alive")}
    worker = Worker("heartbeat", env=health, heartbeat=True)
    try:
        first = wait_until(lambda: (tmp_path / "alive" / "worker.alive").exists(), timeout=30, what="health file")
        assert first and python_m_tasks("health", "--max-age", "10", env=health).returncode == 0
        mtime = (tmp_path / "alive" / "worker.alive").stat().st_mtime
        wait_until(
            lambda: (tmp_path / "alive" / "worker.alive").stat().st_mtime > mtime,
            timeout=15,
            what="a heartbeat to touch the file again",
        )
    finally:
        worker.kill()
    time.sleep(4)
    assert python_m_tasks("health", "--max-age", "3", env=health).returncode == 1


def test_sweep_removes_what_a_killed_listener_left_and_spares_the_pipeline(worker) -> None:
    from tasks.ops.sweep import sweep

    sqs = aws.client("sqs")
    dead = sqs.create_queue(QueueName=f"{config.CELERY_QUEUE_PREFIX}celeryev-dead-listener")["QueueUrl"]
    sqs.send_message(QueueUrl=dead, MessageBody="an unread event")
    idle = sqs.create_queue(QueueName=f"{config.CELERY_QUEUE_PREFIX}celeryev-live-listener")["QueueUrl"]
    time.sleep(1.5)
    assert sweep(older_than=1)["queues"] >= 1
    names = queue_names()
    assert "login-pipeline-celeryev-dead-listener" not in names
    assert "login-pipeline-celeryev-live-listener" in names  # drained: a live listener keeps it so
    assert {"login-pipeline-fetch", "login-pipeline-batches"} <= names
    sqs.delete_queue(QueueUrl=idle)
