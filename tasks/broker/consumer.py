"""The worker's consumer: Celery's, publishing task events in groups (issue 21).

Celery buffers a worker's task events and publishes the buffer at the event loop's next
turn, which in practice is one publish per event: a batch's three (received, started,
succeeded) were three SNS publishes, 3% of all the calls the pipeline makes to SQS and
SNS. Here the first buffered event starts a timer of TASK_EVENTS_GROUP_MS; when it
fires, everything buffered by then goes as one ``task.multi`` message, which Celery's
EventReceiver, and so Flower, unpacks as the single events. TASK_EVENTS_GROUP_MS=0
keeps Celery's own behaviour. Bounds and edges:

- Count: Celery's dispatcher publishes a group of its own once it holds
  ``buffer_limit`` (24) events; small events (arguments show as "batch of N messages").
- Size: an event with a traceback (task-failed, task-retried) goes at once with what
  waits, as Celery would send it, so no group carries more than one traceback.
- Threads: an event buffered off the loop's thread (a hard time limit firing while the
  pool drains at shutdown) is flushed Celery's way, through the hub's locked ready set.
- Reconnects: Celery carries a closed dispatcher's unsent events over to the next one,
  not its buffered groups; ``on_close`` moves them among the unsent first.
- Shutdown publishes what waits before the dispatcher closes.

Selected by ``worker_consumer`` in celeryconfig.py; tests/unit/test_consumer.py drives the
grouping on a real hub, with the dispatcher Celery's Events bootstep makes and a real
EventReceiver reading the groups.

Kept on a measurement with 10 ms of network latency (docs/upstream.md): freshness p99
1.20 s grouped against 1.62 to 1.89 s ungrouped at the same load, throughput within noise.

Upstream: none filed; draft (a ``worker_event_group_interval`` setting) in
docs/upstream.md. Delete when Celery offers it, with TASK_EVENTS_GROUP_MS.
"""

from __future__ import annotations

import threading
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

import celeryconfig as config

WITH_TRACEBACK = frozenset({"task-failed", "task-retried"})


class Consumer(CeleryConsumer):
    _events_timer: Any = None  # kombu's timer Entry while a group waits

    def on_send_event_buffered(self) -> None:
        """Called by the dispatcher for each task event it buffers."""
        delay = config.TASK_EVENTS_GROUP_MS / 1000
        off_the_loop = threading.current_thread() is not threading.main_thread()
        if not (self.hub and delay) or off_the_loop or self._last_buffered_type() in WITH_TRACEBACK:
            return super().on_send_event_buffered()  # Celery's own: a flush at the loop's next turn
        if self._events_timer is None or self._events_timer.canceled:
            self._events_timer = self.hub.call_later(delay, self._flush_events)

    def _last_buffered_type(self) -> str | None:
        buffered = self.event_dispatcher._group_buffer.get("task") if self.event_dispatcher else None
        return buffered[-1].get("type") if buffered else None

    def _flush_events(self) -> None:
        self._cancel_events_timer()
        super()._flush_events()

    def _cancel_events_timer(self) -> None:
        if self._events_timer is not None:
            self._events_timer.cancel()
            self._events_timer = None

    def on_close(self) -> None:
        """The connection is lost: buffered groups join the unsent events, which Celery
        hands to the next dispatcher and publishes when it starts."""
        self._cancel_events_timer()
        dispatcher = self.event_dispatcher
        if dispatcher is not None:
            with dispatcher.mutex:
                for group, events in dispatcher._group_buffer.items():
                    if events:
                        dispatcher._outbound_buffer.append((list(events), f"{group}.multi"))
                        events.clear()
        super().on_close()

    def shutdown(self) -> None:
        self._flush_events()
        super().shutdown()
