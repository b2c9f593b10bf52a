"""Which Celery workers are alive, by their heartbeats as Flower hears them:
``login_pipeline_workers_alive`` on Flower's /metrics, what LoginPipelineNoWorkerOnline
reads.

Flower's own ``flower_worker_online{worker}`` is set to 1 by a worker's online or
heartbeat event and to 0 only by its offline event, which a worker killed (SIGKILL, the
OOM killer, a lost node) never sends: in issue 32's game day it stayed 1 for ten minutes
after the only worker was killed. Here a worker counts as alive while the last heartbeat
Flower received from it is at most MISSED_HEARTBEATS of its own intervals (the
heartbeat's ``freq``, 2 s by default) old, plus DELIVERY_SLACK seconds for the trip
through SQS; an offline event ends it at once. Every worker is judged on its own, so the
count falls by one for each worker of several that dies.

The state is Flower's (``flower.events.Events.state``, a ``celery.events.state.State``:
``workers`` by hostname, each with ``heartbeats``, the local receive times, and ``freq``);
Flower's /metrics handler hands it over before each scrape (``watch``, from
tasks/ops/flower.py). `python -m tasks metrics` hears no events and serves no such gauge.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import cache
from typing import Any

from prometheus_client.core import REGISTRY, Metric
from prometheus_client.registry import Collector

from tasks.ops.metrics import WORKERS_ALIVE

MISSED_HEARTBEATS = 2
DELIVERY_SLACK = 5.0  # seconds: an event crosses SNS and SQS, and Flower polls its queue
DEFAULT_FREQ = 2.0  # celery's heartbeat interval, for a worker that has not said its own

_state: Any = None


def watch(state: Any) -> None:
    """Count the workers of this Flower events state from now on."""
    global _state
    _state = state


def is_alive(worker: Any, now: float) -> bool:
    """Whether `worker` (celery.events.state.Worker) was heard from recently enough."""
    heartbeats = list(worker.heartbeats or ())
    if not heartbeats:  # none yet, or an offline event cleared them
        return False
    try:
        freq = float(worker.freq) or DEFAULT_FREQ
    except (TypeError, ValueError):
        freq = DEFAULT_FREQ
    return now - heartbeats[-1] <= MISSED_HEARTBEATS * freq + DELIVERY_SLACK


def alive(state: Any, now: float | None = None) -> int:
    """How many workers of `state` are alive (see the module)."""
    moment = time.time() if now is None else now
    return sum(is_alive(worker, moment) for worker in list(state.workers.values()))


class WorkersCollector(Collector):
    """``login_pipeline_workers_alive`` from the watched state; nothing before one is watched."""

    def describe(self) -> Iterator[Metric]:
        yield WORKERS_ALIVE.family()

    def collect(self) -> Iterator[Metric]:
        if _state is not None:
            yield WORKERS_ALIVE.family(value=alive(_state))


@cache
def register() -> None:
    """Add the collector to Prometheus's registry (Flower's), once per process."""
    REGISTRY.register(WorkersCollector())
