"""The worker's prefork pool: Celery's, made to end every warm shutdown (issue 12).

Two races in Celery 5.7's shutdown each left a worker in ``Pool.join`` after SIGTERM,
both found with py-spy on the pool children of a hung worker:

1. **A job payload half written.** A batch task is up to ~560 KB and crosses the 64 KiB
   pipe to a pool child in pieces, written by the event loop as the child reads. Celery's
   warm shutdown closes the pool (``Blueprint.close``) before it stops the consumer, whose
   ``pool.flush()`` finishes payloads already started only while the pool still runs. A
   SIGTERM between two pieces left the child reading the rest forever.
2. **A job run behind the pool's back.** That flush drops from the pool's cache every
   job no child has acknowledged yet, also one a child has already read and is about to
   run. The child runs it with no time limit (limits start when the pool sees the
   acknowledgement) and its message is never acked. Celery reads results only while its
   cache holds jobs, so the child then waited 30 s for its result to be read before it
   exited (billiard's ``_ensure_messages_consumed``).

So here the pool, when it closes, first stops starting or replacing children and writes
the rest of every payload it has started; at shutdown it drops only the jobs no child
has any of (their messages go back to the queue), and keeps every other one: timed,
acked when done, its result read. Results are read until every child has exited, from
all the children's pipes at once.

Selected by ``worker_pool`` in celeryconfig.py. tests/test_pool_shutdown.py holds a
payload half written (its child stopped) and sends SIGTERM: this pool exits within
seconds and the batch is written; stock Celery's (``CELERY_WORKER_POOL=processes``) hangs
there every time (2026-12-07, Celery 5.7.0). tests/test_faults.py adds 20 SIGTERMs at
random moments of a batch stream.

Upstream: none filed; draft issue and patch in docs/upstream.md (celery#1310 is related,
not the same). Delete when stock Celery's pool passes tests/test_pool_shutdown.py run with
``CELERY_WORKER_POOL=processes``; then remove ``worker_pool`` and tests/unit/test_pool.py too.
"""

from __future__ import annotations

from billiard.pool import RUN, WorkersJoined
from celery.concurrency import asynpool, prefork


class ResultHandler(asynpool.ResultHandler):
    def on_stop_not_started(self) -> None:
        """Read the children's results until every child has gone (Celery stops once its
        cache is empty), waiting on all their pipes at once (Celery waits 0.5 s on each
        idle one in turn: up to 2 s before it sees that a child has exited)."""
        outqueues = set(self.fileno_to_outq)
        while outqueues:
            if self.check_timeouts is not None:
                self.check_timeouts()  # time limits of the jobs still running
            readable, _, _ = asynpool._select(readers=outqueues, timeout=0.2)  # drops a closed pipe
            for fd in readable:
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
        if self._state != RUN:
            return
        self._worker_handler.close()  # no child is started or replaced from now on
        try:
            self._finish_started_writes()
        finally:
            super().close()

    def _finish_started_writes(self) -> None:
        """Write the rest of each payload a child has part of: it reads a whole job."""
        for job in list(self._cache.values()):
            writer, child = asynpool._get_job_writer(job), job._write_to
            if writer is not None and child is not None and not asynpool.gen_not_started(writer):
                self._flush_writer(child, writer)

    def flush(self) -> None:
        if self._state == RUN:  # the broker connection was lost: Celery's own flush
            super().flush()
            return
        # A warm shutdown: drop only the jobs no child has any of; their messages are
        # not acked, so they go back to the queue.
        for job in tuple(self._cache.values()):
            if not job._accepted and job._write_to is None:
                job.discard()
        self.outbound_buffer.clear()


class TaskPool(prefork.TaskPool):
    Pool = AsynPool
