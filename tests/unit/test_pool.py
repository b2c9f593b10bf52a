"""The worker runs tasks/broker/pool.py's pool. What the pool is for, a warm shutdown that
ends however a payload stands, is tested through a real worker: tests/test_pool_shutdown.py
(deterministic: a payload held half written) and tests/test_faults.py (20 SIGTERMs at
random moments of a batch stream); an upstream internal renamed under it fails those."""

from __future__ import annotations

from celery.concurrency import get_implementation

import celeryconfig as config
from tasks.broker import pool


def test_the_worker_runs_this_pool() -> None:
    assert get_implementation(config.worker_pool) is pool.TaskPool
    assert pool.TaskPool.Pool is pool.AsynPool and pool.AsynPool.ResultHandler is pool.ResultHandler
