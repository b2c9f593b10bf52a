"""tasks/broker/control.py without a broker: a thread's calls share one reply queue,
threads do not, late replies die with their call, and the app uses this control."""

from __future__ import annotations

import inspect
import threading

from kombu import Connection, pidbox
from kombu.common import oid_from

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


def test_the_app_uses_this_control_and_kombus_internals_are_as_expected() -> None:
    assert isinstance(app.control, Control) and isinstance(app.control.mailbox, Mailbox)
    source = inspect.getsource(pidbox.Mailbox)
    assert "self.unclaimed = defaultdict(deque)" in source and "unclaimed = self.unclaimed" in source
    assert "oid = self.oid" in inspect.getsource(pidbox.Mailbox.get_reply_queue)
    assert "'routing_key': self.oid" in source  # where replies are sent: the same oid
    assert list(inspect.signature(oid_from).parameters) == ["instance", "threads"]
