"""tasks/broker/consumer.py on a real kombu hub and a real Celery event dispatcher (on
kombu's in-memory transport), without a worker: when a group of task events is
published, and what happens to it on a reconnect and at shutdown. The dispatcher is the
one Celery's own Events bootstep makes, and a real EventReceiver unpacks the groups, so
a change in how Celery buffers, carries over or reads events fails a behaviour here,
without pinning Celery's source. tests/test_monitoring.py sees a batch's events arrive grouped
through a real worker and SQS."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.app.events import Events as AppEvents
from celery.events.dispatcher import EventDispatcher
from celery.events.receiver import EventReceiver
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer import events
from kombu.asynchronous import Hub

import celeryconfig as config
from tasks.broker.consumer import Consumer
from tasks.celery import app

GROUP_MS = 50


class Dispatcher(EventDispatcher):
    """Celery's dispatcher, noting what it publishes: (routing key, number of events)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.published: list[tuple[str, int]] = []
        super().__init__(*args, **kwargs)

    def _publish(self, event: Any, producer: Any, routing_key: str, *args: Any, **kwargs: Any) -> None:
        self.published.append((routing_key, len(event) if isinstance(event, list) else 1))
        super()._publish(event, producer, routing_key, *args, **kwargs)


class RecordingEvents(AppEvents):
    dispatcher_cls = Dispatcher  # what Celery's Events bootstep builds: app.events.Dispatcher


@pytest.fixture
def consumer(monkeypatch: pytest.MonkeyPatch) -> Iterator[Consumer]:
    monkeypatch.setattr(config, "TASK_EVENTS_GROUP_MS", GROUP_MS)
    memory = Celery("consumer-test", broker="memory://", events=RecordingEvents, set_as_current=False)
    hub = Hub()
    worker = SimpleNamespace(use_eventloop=True, semaphore=None)  # what the consumer reads of its WorkController
    c = Consumer(lambda *args: None, app=memory, hub=hub, hostname="test@host", controller=worker)
    c.amqheartbeat = 0
    STEPS[c] = events.Events(c, task_events=True)
    STEPS[c].start(c)  # Celery's own step makes the dispatcher, as in a worker
    yield c
    STEPS.pop(c).shutdown(c)
    hub.close()


STEPS: dict[Consumer, events.Events] = {}  # each test consumer's Events bootstep


def restart_events(c: Consumer) -> Dispatcher:
    """What Celery does when the connection comes back: the same Events step starts again."""
    STEPS[c].start(c)
    return c.event_dispatcher


def run_hub(c: Consumer, seconds: float) -> None:
    """What the worker's loop does between polls: run what is ready, fire due timers."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        while c.hub._ready:
            c.hub._ready.pop()()
        c.hub.fire_timers(max_timers=100)
        time.sleep(0.005)


def send(c: Consumer, *types: str) -> None:
    for type_ in types:
        c.event_dispatcher.send(type_, uuid="u1")


def test_a_batchs_events_go_as_one_message_after_the_group_time(consumer: Consumer) -> None:
    send(consumer, "task-received", "task-started")
    run_hub(consumer, GROUP_MS / 1000 / 5)
    assert consumer.event_dispatcher.published == []  # waiting for the group
    send(consumer, "task-succeeded")
    run_hub(consumer, GROUP_MS / 1000 * 2)
    assert consumer.event_dispatcher.published == [("task.multi", 3)]
    send(consumer, "task-received")  # a new group: a new timer
    run_hub(consumer, GROUP_MS / 1000 * 2)
    assert consumer.event_dispatcher.published == [("task.multi", 3), ("task.multi", 1)]


def test_an_event_with_a_traceback_goes_at_once_with_what_waits(consumer: Consumer) -> None:
    send(consumer, "task-received", "task-failed")
    run_hub(consumer, 0.001)
    assert consumer.event_dispatcher.published == [("task.multi", 2)]


def test_an_event_sent_off_the_loops_thread_is_flushed_celerys_way(consumer: Consumer) -> None:
    sender = threading.Thread(target=send, args=(consumer, "task-succeeded"))
    sender.start()
    sender.join()
    assert consumer._events_timer is None and consumer.hub._ready  # a flush is ready, no timer
    run_hub(consumer, 0.001)
    assert consumer.event_dispatcher.published == [("task.multi", 1)]


def test_a_reconnect_hands_waiting_events_to_the_next_dispatcher(consumer: Consumer) -> None:
    send(consumer, "task-received", "task-started")
    old = consumer.event_dispatcher
    consumer.on_close()  # the connection is lost: what Celery does before its steps restart
    new = restart_events(consumer)  # Celery's step carries the old dispatcher's buffer over
    assert new is not old
    assert old.published == [] and new.published == [("task.multi", 2)]


def test_shutdown_publishes_what_waits(consumer: Consumer) -> None:
    send(consumer, "task-received")
    consumer.blueprint.shutdown = lambda parent: None  # type: ignore[method-assign]  # no steps were started
    consumer.shutdown()
    assert consumer.event_dispatcher.published == [("task.multi", 1)]


def test_the_worker_uses_it() -> None:
    assert app.conf.worker_consumer == "tasks.broker.consumer:Consumer"
    assert issubclass(Consumer, CeleryConsumer)


def test_celerys_dispatcher_publishes_a_full_group_without_waiting(consumer: Consumer) -> None:
    """The count bound the module relies on: Celery's own buffer limit (24) flushes a group."""
    send(consumer, *["task-succeeded"] * 24)
    assert consumer.event_dispatcher.published == [("task.multi", 24)]


def test_celerys_receiver_unpacks_a_group_into_its_events(consumer: Consumer) -> None:
    """What Flower reads: a real EventReceiver on the same broker sees each event of a group."""
    seen: list[str] = []
    receiver = EventReceiver(
        consumer.app.connection_for_read(), handlers={"*": lambda e: seen.append(e["type"])}, app=consumer.app
    )
    with receiver.consumer_context() as (connection, _, _):
        send(consumer, "task-received", "task-started", "task-succeeded")
        run_hub(consumer, GROUP_MS / 1000 * 2)
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:
            with suppress(socket.timeout):
                connection.drain_events(timeout=0.1)
    assert consumer.event_dispatcher.published == [("task.multi", 3)]
    assert seen == ["task-received", "task-started", "task-succeeded"]
