"""tasks/broker/pool.py without a worker: the Celery and billiard internals it relies on
are still there with the same signatures, and its pool is the one the worker uses. Its
behaviour is tested where it matters, through real workers: tests/test_faults.py sends
20 SIGTERMs at random moments of a batch stream."""

from __future__ import annotations

import inspect

import pytest
from billiard.pool import Pool
from celery.concurrency import asynpool, get_implementation

import celeryconfig as config
from tasks.broker import pool

INTERNALS = {
    (asynpool.AsynPool, "flush"): ["self"],
    (asynpool.AsynPool, "close"): ["self"],
    (asynpool.AsynPool, "_flush_writer"): ["self", "proc", "writer"],
    (asynpool, "_get_job_writer"): ["job"],
    (asynpool, "gen_not_started"): ["gen"],
    (asynpool, "_select"): ["readers", "writers", "err", "timeout", "poll"],
    (asynpool.ResultHandler, "on_stop_not_started"): ["self"],
    (asynpool.ResultHandler, "_flush_outqueue"): ["self", "fd", "remove", "process_index", "on_state_change"],
    (Pool, "_join_exited_workers"): ["self", "shutdown"],
    (asynpool, "iterate_file_descriptors_safely"): ["fds_iter", "source_data", "hub_method", "args", "kwargs"],
}


@pytest.mark.parametrize(("owner", "name"), list(INTERNALS), ids=lambda v: getattr(v, "__name__", v))
def test_the_internals_it_relies_on_keep_their_signatures(owner: object, name: str) -> None:
    assert list(inspect.signature(getattr(owner, name)).parameters) == INTERNALS[(owner, name)]


def test_the_job_attributes_it_reads_are_set_where_it_expects() -> None:
    """`_write_to` is set when a payload's first byte is written, `_accepted` when a child
    acknowledges the job, `_worker_handler` is what starts and replaces children."""
    source = inspect.getsource(asynpool.AsynPool)
    assert "job._write_to = proc" in source and "def _flush_writer" in source
    assert "self._accepted = True" in inspect.getsource(asynpool._pool.ApplyResult)
    assert "self._worker_handler.close()" in inspect.getsource(Pool.close)


def test_the_worker_runs_this_pool() -> None:
    assert get_implementation(config.worker_pool) is pool.TaskPool
    assert pool.TaskPool.Pool.ResultHandler is pool.ResultHandler
    assert "self.check_timeouts = check_timeouts" in inspect.getsource(asynpool._pool.ResultHandler.__init__)
    assert "self.fileno_to_outq = " in inspect.getsource(asynpool.ResultHandler)
