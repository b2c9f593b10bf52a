"""Liveness of the worker and of beat: a file each touches while it works, and its age.

The worker touches WORKER_HEALTH_FILE on every heartbeat of its event loop (and when
ready); beat touches BEAT_HEALTH_FILE on every tick of its scheduler
(``HeartbeatScheduler``, celeryconfig's ``beat_scheduler``). A hung consumer loop or a
stuck beat stops touching its file, so it goes stale; a Kubernetes liveness probe
(`python -m tasks health`, `health --beat`) fails on a stale file without any SQS
round trip, unlike `celery inspect ping`, which creates a reply queue per probe.
`check` says what it looked at and how old the heartbeat is, in one line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.beat import PersistentScheduler
from celery.signals import heartbeat_sent, worker_ready

import celeryconfig as config

WHO = {"worker": "the worker's event loop", "beat": "beat's scheduler"}


def touch_file(path: str) -> None:
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.touch()


@worker_ready.connect
@heartbeat_sent.connect
def touch(**_: Any) -> None:
    touch_file(config.WORKER_HEALTH_FILE)


class HeartbeatScheduler(PersistentScheduler):
    """Celery's persistent scheduler, touching BEAT_HEALTH_FILE on every tick. A tick
    comes at least every FETCH_INTERVAL seconds (the fetch is due that often); a beat
    that cannot publish (its broker call hangs) stops ticking."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval = super().tick(*args, **kwargs)
        touch_file(config.BEAT_HEALTH_FILE)
        return interval


@dataclass(frozen=True)
class Health:
    alive: bool
    line: str  # what was checked and the heartbeat's age, or why there is none


def check(process: str, max_age: float, now: float | None = None) -> Health:
    """Whether `process` ("worker" or "beat") touched its file within `max_age` seconds."""
    path = Path(config.BEAT_HEALTH_FILE if process == "beat" else config.WORKER_HEALTH_FILE)
    variable = "BEAT_HEALTH_FILE" if process == "beat" else "WORKER_HEALTH_FILE"
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except OSError:
        return Health(False, f"{process} not alive: no heartbeat file {path} ({variable}); has it started here?")
    seen = f"heartbeat of {WHO[process]} {age:.1f} s ago (limit {max_age:g} s, {path})"
    if age < max_age:
        return Health(True, f"{process} alive: {seen}")
    return Health(False, f"{process} not alive: {seen}; look at its log, or restart it")
