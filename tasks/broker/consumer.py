"""The worker's consumer: Celery's, publishing task events in groups (issue 21).

Celery buffers a worker's task events and publishes the buffer at the event loop's next
turn, which in practice is one publish per event: a batch's three (received, started,
succeeded) were three SNS publishes, 3% of all the calls the pipeline makes to SQS and
SNS and 12 µs of the worker's CPU per event. Here the first buffered event starts a
timer of TASK_EVENTS_GROUP_MS; when it fires, everything buffered by then goes as one
``task.multi`` message, which Celery's EventReceiver, and so Flower, unpacks as the
single events. A group that reaches GROUP_MAX events goes at once, so a message stays
far below SNS's 256 KB, and shutdown publishes what is left before the dispatcher
closes. TASK_EVENTS_GROUP_MS=0 keeps Celery's own behaviour.

Selected by ``worker_consumer`` in celeryconfig.py; the internals used
(``_flush_events``, ``_flush_events_promise``, ``on_send_event_buffered``) are pinned by
tests/unit/test_consumer.py.
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

import celeryconfig as config

# A task event is under 1 KB (arguments are shown as "batch of N messages"); 64 of them,
# JSON in base64 in SNS's envelope, stay under 100 KB.
GROUP_MAX = 64


class Consumer(CeleryConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._buffered_events = 0
        self._events_timer: Any = None

    def on_send_event_buffered(self) -> None:
        """Called by the dispatcher for each task event it buffers."""
        delay = config.TASK_EVENTS_GROUP_MS / 1000
        if not self.hub or not delay:
            return super().on_send_event_buffered()
        self._buffered_events += 1
        if self._buffered_events >= GROUP_MAX:
            self.hub.call_soon(self._flush_events_promise)
        elif self._events_timer is None:
            self._events_timer = self.hub.call_later(delay, self._flush_events)

    def _flush_events(self) -> None:
        if self._events_timer is not None:
            self._events_timer.cancel()
            self._events_timer = None
        self._buffered_events = 0
        super()._flush_events()

    def shutdown(self) -> None:
        self._flush_events()
        super().shutdown()
