"""A probe run inside Celery's own integration suite (`python -m tasks dev conformance --probe`):
does a task reach the worker before an `inspect` broadcast sent right after it?

Celery's ``test_inspect.py::test_scheduled`` publishes an ETA task and, on the next line,
asks the worker for its scheduled tasks. On SQS the task goes to the task queue with
``SendMessage`` and the broadcast through SNS to the worker's pidbox queue: two queues,
polled independently, so nothing orders them. This probe repeats that pattern on the
suite's own session worker and times, for each try, the task's trip (publish to the
worker's ``task_received``) and the broadcast's (publish to the worker's ``scheduled``
handler), and whether the reply listed the task. Copied into the unpacked Celery tree
(``t/integration/``) by dev/devkit/conformance.py; one JSON line per try goes to the file
named by CONFORMANCE_PROBE_OUT.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.signals import task_received
from celery.worker.control import Panel

TRIES = int(os.environ.get("CONFORMANCE_PROBE_TRIES", "40"))


def test_task_and_broadcast_order(manager: Any) -> None:
    add = importlib.import_module("t.integration.tasks").add
    received: dict[str, float] = {}
    handled: list[float] = []

    def on_received(request: Any = None, **_: Any) -> None:
        received[request.id] = time.monotonic()

    original = Panel.data["scheduled"]

    def timed_scheduled(state: Any, **kwargs: Any) -> Any:
        handled.append(time.monotonic())
        return original(state, **kwargs)

    task_received.connect(on_received, weak=False)
    Panel.data["scheduled"] = timed_scheduled
    try:
        with open(os.environ["CONFORMANCE_PROBE_OUT"], "a") as out:
            for _ in range(TRIES):
                out.write(json.dumps(one_try(manager, add, received, handled)) + "\n")
                out.flush()
    finally:
        Panel.data["scheduled"] = original
        task_received.disconnect(on_received)


def one_try(manager: Any, add: Any, received: dict[str, float], handled: list[float]) -> dict[str, Any]:
    """As test_scheduled does: an ETA task, then at once `inspect scheduled`."""
    sent = time.monotonic()
    result = add.apply_async([1, 2], {"z": 3}, eta=datetime.now(UTC) + timedelta(seconds=5))
    asked = time.monotonic()
    replies = manager.app.control.inspect().scheduled() or {}
    listed = {entry["request"]["id"] for entries in replies.values() for entry in entries}
    deadline = time.monotonic() + 30
    while result.id not in received and time.monotonic() < deadline:
        time.sleep(0.01)
    task_at = received.get(result.id)
    broadcast_at = handled[-1] if handled and handled[-1] >= asked else None
    return {
        "task_s": None if task_at is None else round(task_at - sent, 4),
        "broadcast_s": None if broadcast_at is None else round(broadcast_at - asked, 4),
        "task_first": task_at is not None and broadcast_at is not None and task_at < broadcast_at,
        "listed": result.id in listed,
    }
