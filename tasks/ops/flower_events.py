"""Which task events Flower's state and /metrics take: label values stay bounded.

Flower labels its series (``flower_events_total{worker,type,task}``, the runtime
histogram, the prefetch gauges, ``flower_worker_online{worker}``) with the hostname,
type and task name an event carries, and whoever may publish to the events topic
chooses those: 20 crafted events took /metrics from 218 to 18,221 lines (issue 27).
Events reach Flower here first (``admit``, wrapped around ``flower.events.Events.on_event``,
in Flower's capture thread), and an event is dropped and counted
(tasks.broker.broadcast's counter and log line) when:

- its type is none of Celery's event types (``EVENT_TYPES``);
- it names a task (``name``) that the app has not registered;
- its hostname is longer than MAX_HOSTNAME characters.

Workers are bounded in count rather than known in advance (a Kubernetes pod's name is
new at each rollout): Flower keeps the series of the MAX_WORKERS hostnames heard from
most recently; a new hostname beyond them removes the series of the one silent longest
(Flower's own ``PrometheusMetrics.remove_workers``, on Flower's I/O loop). A flood of
forged hostnames can only push a real worker's series out until its next heartbeat,
never grow /metrics beyond MAX_WORKERS workers times the known types times the registered tasks.
Shapes that could not be read at all never get here (tasks/broker/broadcast.py).

Flower internals relied on (flower 2.2.0): ``Events.on_event`` (called for each event in
the capture thread), ``Events.capp``, ``Events.io_loop``, ``Events.state.metrics`` and
``PrometheusMetrics.remove_workers``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection
from functools import partial
from typing import Any

from flower import events as flower_events

from tasks.broker import broadcast

MAX_WORKERS = 64
MAX_HOSTNAME = 255
EVENT_TYPES = frozenset(
    {
        "worker-online",
        "worker-heartbeat",
        "worker-offline",
        "task-sent",
        "task-received",
        "task-started",
        "task-succeeded",
        "task-failed",
        "task-rejected",
        "task-revoked",
        "task-retried",
    }
)


class Admission:
    """The bounded set of workers Flower counts, and the rule for each event."""

    def __init__(self, task_names: Callable[[], Collection[str]], max_workers: int = MAX_WORKERS) -> None:
        self.task_names = task_names
        self.max_workers = max_workers
        self.workers: OrderedDict[str, None] = OrderedDict()  # least recently heard from first

    def refusal(self, event: Any) -> str | None:
        """Why Flower must not count this event, or None."""
        if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
            return "an event of an unknown type"
        hostname = event.get("hostname")
        if not isinstance(hostname, str) or not 0 < len(hostname) <= MAX_HOSTNAME:
            return "an event with no usable hostname"
        name = event.get("name")
        if name is not None and name not in self.task_names():
            return "an event of a task the app does not register"
        return None

    def heard_from(self, hostname: str) -> str | None:
        """Note a worker; the one silent longest if it must make room, else None."""
        if hostname in self.workers:
            self.workers.move_to_end(hostname)
            return None
        self.workers[hostname] = None
        if len(self.workers) <= self.max_workers:
            return None
        evicted, _ = self.workers.popitem(last=False)
        return evicted


def admitting(on_event: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """Flower's ``Events.on_event``, taking only what `Admission` admits."""

    def on_admitted_event(self: Any, event: Any) -> None:
        admission = getattr(self, "_admission", None)
        if admission is None:
            admission = self._admission = Admission(lambda: self.capp.tasks.keys())
        why = admission.refusal(event)
        if why is not None:
            broadcast.dropped("Flower's events", "events", why)
            return
        evicted = admission.heard_from(event["hostname"])
        if evicted is not None:
            self.io_loop.add_callback(partial(self.state.metrics.remove_workers, [evicted]))
        on_event(self, event)

    return on_admitted_event


def install() -> None:
    """Wrap Flower's event intake (idempotent)."""
    if not getattr(flower_events.Events.on_event, "_admitting", False):
        wrapped = admitting(flower_events.Events.on_event)
        wrapped._admitting = True  # type: ignore[attr-defined]
        flower_events.Events.on_event = wrapped
