"""Remote control from a client (Flower, `celery inspect`): one reply queue per thread.

kombu names a client's reply queue after ``id()`` of the mailbox copy it makes for each
call, so nearly every call declared a new SQS queue. Flower makes several calls per
refresh: measured with Flower refreshed every 3 s, about 4 new queues per refresh and
about 160 alive at once (the transport deletes an answered queue after 120 s idle).
Here the name depends only on the host, process and thread, so each thread's calls reuse
one queue: a Flower keeps one per thread of its executor. A reply that arrives after its
call timed out lands in that queue; the next call, whose ticket differs, drops it with
its own copy of the mailbox instead of keeping it for good (kombu's ``unclaimed``).

The app uses it through ``control=`` in tasks/celery.py; tests/unit/test_control.py
pins the kombu internals it relies on: ``Mailbox.oid``, ``reply_queue``,
``get_reply_queue``, ``unclaimed`` and ``common.oid_from``.

Upstream: celery#8348 (open: SQS reply queues pile up); a patch to kombu is drafted in
docs/upstream.md. Known cost: kombu counts a late reply against the next call's
``limit``. Delete when kombu names reply queues stably (`python dev/devkit/repro.py
control` exits 3), with ``control=`` in tasks/celery.py.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any

from celery.app import control
from kombu import Queue, pidbox
from kombu.common import oid_from


class Mailbox(pidbox.Mailbox):
    def __call__(self, connection: Any) -> Mailbox:
        bound = super().__call__(connection)
        bound.unclaimed = defaultdict(deque)  # late replies: this call's, dropped with it
        return bound

    @property
    def oid(self) -> str:
        """Host, process and thread: the same for every call of this thread."""
        return oid_from(Mailbox)

    @property
    def reply_queue(self) -> Queue:  # kombu caches it on the copy; the thread decides it
        return self.get_reply_queue()


class Control(control.Control):
    Mailbox = Mailbox
