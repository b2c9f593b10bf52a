"""tasks/broker/control.py without a broker: a thread's calls share one reply queue,
threads do not, late replies die with their call, and the app uses this control. The
round trips run on kombu's in-memory transport, so they see what the override relies on
in kombu (the reply queue and the replies' routing key both come from ``oid``, late
replies go to ``unclaimed``) without pinning its source."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from kombu import Connection

from tasks.broker.control import Control, Mailbox
from tasks.celery import app


def reply_queue_name(mailbox: Mailbox) -> str:
    return mailbox(Connection("memory://")).reply_queue.name


def test_the_calls_of_one_thread_share_a_reply_queue_and_threads_do_not() -> None:
    mailbox = app.control.mailbox
    names = {reply_queue_name(mailbox) for _ in range(20)}
    assert len(names) == 1 and names.pop().endswith(".reply.celery.pidbox")
    other: list[str] = []
    thread = threading.Thread(target=lambda: other.append(reply_queue_name(mailbox)))
    thread.start()
    thread.join()
    assert other[0] != reply_queue_name(mailbox)


def test_a_late_reply_is_kept_only_by_the_call_it_arrived_in() -> None:
    first, second = app.control.mailbox(Connection("memory://")), app.control.mailbox(Connection("memory://"))
    first.unclaimed["an old ticket"].append({"late": "reply"})
    assert not second.unclaimed and not app.control.mailbox.unclaimed


def test_the_app_uses_this_control() -> None:
    assert isinstance(app.control, Control) and isinstance(app.control.mailbox, Mailbox)


# The app's mailbox sends through the app's broker; these use one of their own.
MAILBOX = Mailbox("celery", type="fanout", accept=["json"])


@contextmanager
def worker_node(handler: Callable[..., Any]) -> Iterator[None]:
    """A pidbox node answering `ping` with `handler`, on kombu's in-memory transport (one
    broker per process), consumed on a thread of its own as a worker's is."""
    stop = threading.Event()

    def serve() -> None:
        connection = memory()
        node = MAILBOX(connection).Node("worker@test", handlers={"ping": handler})
        with node.listen(channel=connection.default_channel):
            while not stop.is_set():
                with suppress(socket.timeout):
                    connection.drain_events(timeout=0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def memory() -> Connection:
    return Connection("memory://", transport_options={"polling_interval": 0.01})


def ping(mailbox: Mailbox, timeout: float, limit: int = 1) -> list[dict[str, Any]]:
    return mailbox._broadcast("ping", reply=True, timeout=timeout, limit=limit)


def test_each_call_gets_its_reply_through_the_threads_one_reply_queue() -> None:
    """The reply is routed to the queue the call waits on: kombu uses ``oid`` for both."""
    with worker_node(lambda state, **_: "pong"):
        calls = [MAILBOX(memory()) for _ in range(3)]
        assert [ping(call, timeout=5) for call in calls] == [[{"worker@test": "pong"}]] * 3
        assert len({call.reply_queue.name for call in calls}) == 1


def test_a_late_reply_is_dropped_with_the_call_that_read_it() -> None:
    """A reply that comes after its call gave up lands in the thread's queue; the next
    call reads it, keeps it only in its own copy, and still gets its own reply."""
    delays = iter([0.5, 0.0])
    replied = threading.Event()

    def slow_then_quick(state: Any, **_: Any) -> str:
        time.sleep(next(delays))
        replied.set()
        return "pong"

    with worker_node(slow_then_quick):
        assert ping(MAILBOX(memory()), timeout=0.1) == []  # gave up
        assert replied.wait(5)
        second = MAILBOX(memory())
        # kombu counts the late reply against the call's limit (docs/upstream.md, control.py)
        assert ping(second, timeout=5, limit=2) == [{"worker@test": "pong"}]
        assert sum(map(len, second.unclaimed.values())) == 1  # the late one, gone with this copy
        assert not MAILBOX(memory()).unclaimed and not MAILBOX.unclaimed
