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


def alive(max_age: float) -> bool:
    path = Path(config.WORKER_HEALTH_FILE)
    return path.exists() and time.time() - path.stat().st_mtime < max_age
