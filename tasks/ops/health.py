"""Worker liveness: a file touched on every heartbeat of the worker's event loop.

A hung consumer loop sends no heartbeats, so the file goes stale; a Kubernetes liveness
probe (`python -m tasks health`) fails on a stale file without any SQS round trip,
unlike `celery inspect ping`, which creates a reply queue per probe.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from celery.signals import heartbeat_sent, worker_ready

import celeryconfig as config


@worker_ready.connect
@heartbeat_sent.connect
def touch(**_: Any) -> None:
    path = Path(config.WORKER_HEALTH_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def heartbeat_age() -> float | None:
    """Seconds since this machine's worker last touched the health file; None if never."""
    try:
        return time.time() - Path(config.WORKER_HEALTH_FILE).stat().st_mtime
    except FileNotFoundError:
        return None


def alive(max_age: float) -> bool:
    age = heartbeat_age()
    return age is not None and age < max_age


def verdict(max_age: float) -> str:
    """One line: what was checked, and the heartbeat's age."""
    age, where = heartbeat_age(), config.WORKER_HEALTH_FILE
    if age is None:
        return f"not alive: no worker heartbeat yet ({where} does not exist)"
    state = "alive" if age < max_age else "not alive"
    return f"{state}: the worker's last heartbeat was {age:.1f} s ago (limit {max_age:g} s; {where})"
