"""The worker's prefork pool: Celery's, made to end every warm shutdown (issue 12).

Two races in Celery 5.7's shutdown each left a worker in ``Pool.join`` after SIGTERM,
both found with py-spy on the pool children of a hung worker:

1. **A job payload half written.** A batch task is up to ~560 KB and crosses the 64 KiB
   pipe to a pool child in pieces, written by the event loop as the child reads. Celery's
   warm shutdown closes the pool (``Blueprint.close``) before it stops the consumer, whose
   ``pool.flush()`` finishes payloads already started, but only while the pool still
   runs. A SIGTERM between two pieces left the child reading the rest forever. Here the
   pool flushes itself before it closes.
2. **A result no one reads.** That flush drops from the pool's cache every job no child
   has acknowledged yet, also one a child has already read and is about to run (its
   message is not acked, so SQS delivers it again: batches are idempotent). Celery reads
   the children's result pipes only while its cache holds jobs, and a child that ran
   such a job waits up to 30 s for its result to be read before it exits
   (billiard's ``_ensure_messages_consumed``). Here results are read until every child
   has exited.

Selected by ``worker_pool`` in celeryconfig.py; ``tests/test_faults.py`` sends 20
SIGTERMs at random moments of a batch stream. Internals relied on (pinned by
tests/unit/test_pool.py): ``AsynPool.flush``, ``AsynPool.close``, ``AsynPool._state``,
``ResultHandler.on_stop_not_started``, ``_flush_outqueue``, ``fileno_to_outq``,
``join_exited_workers`` and ``on_state_change``.
"""

from __future__ import annotations

from billiard.pool import RUN, TERMINATE, WorkersJoined
from celery.concurrency import asynpool, prefork


class ResultHandler(asynpool.ResultHandler):
    def on_stop_not_started(self) -> None:
        super().on_stop_not_started()  # while the cache holds jobs
        outqueues = set(self.fileno_to_outq)
        while outqueues and self._state != TERMINATE:  # then until every child has gone
            for fd in list(outqueues):
                asynpool.iterate_file_descriptors_safely(
                    [fd], self.fileno_to_outq, self._flush_outqueue,
                    outqueues.discard, self.fileno_to_outq, self.on_state_change,
                )  # fmt: skip
            try:
                self.join_exited_workers(shutdown=True)
            except WorkersJoined:
                return


class AsynPool(asynpool.AsynPool):
    ResultHandler = ResultHandler

    def close(self) -> None:
        if self._state == RUN:
            self.flush()  # finishes the payloads already started, which it does only now
        super().close()


class TaskPool(prefork.TaskPool):
    Pool = AsynPool
