"""The fetch task: login-queue -> batches -> mask-and-insert tasks.

Beat runs `fetch_batches` every FETCH_INTERVAL seconds. It receives from login-queue
with several ReceiveMessage calls in flight until it holds a batch (BATCH_SIZE
messages or BATCH_MAX_BYTES of bodies) or the queue is empty, hands the batch to a
`mask_and_insert` task, and only once that publish succeeded deletes the batch's
source messages (in the background, while the next batch is received). It goes on for
up to FETCH_MAX_SECONDS; a fetch that dies leaves its messages to reappear after
SOURCE_VISIBILITY_TIMEOUT.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from functools import cache
from time import monotonic

import celeryconfig as config
from tasks.batch import mask_and_insert
from tasks.celery import app
from tasks.source import Received, SourceQueue, settle_deletes


@cache
def source_queue() -> SourceQueue:
    return SourceQueue(config.SOURCE_QUEUE, config.SOURCE_VISIBILITY_TIMEOUT, config.FETCH_RECEIVERS)


def cut_batch(pending: list[Received], size: int, max_bytes: int) -> tuple[list[Received], list[Received]]:
    """The first messages that fit a batch (at least one), and the rest."""
    total = 0
    for count, received in enumerate(pending[:size]):
        total += received.size
        if total > max_bytes and count:
            return pending[:count], pending[count:]
    return pending[:size], pending[size:]


def receive_batches(source: SourceQueue, size: int, max_bytes: int, deadline: float) -> Iterator[list[Received]]:
    """Batches from the source queue until it is empty or the deadline passed."""
    pending: list[Received] = []
    more, wait = True, config.FETCH_WAIT_SECONDS
    while more or pending:
        while more and len(pending) < size:
            got = source.receive_up_to(size - len(pending), wait)
            pending += got
            more, wait = bool(got) and monotonic() < deadline, 0
        if not pending:
            return
        batch, pending = cut_batch(pending, size, max_bytes)
        yield batch


@app.task(name="tasks.fetch_batches")
def fetch_batches() -> dict[str, int]:
    source = source_queue()
    messages = batches = 0
    deletes: list[Future[int]] = []
    deadline = monotonic() + config.FETCH_MAX_SECONDS
    try:
        for batch in receive_batches(source, config.BATCH_SIZE, config.BATCH_MAX_BYTES, deadline):
            mask_and_insert.apply_async(([r.message.as_args() for r in batch],))
            deletes += source.delete_later(batch)  # while the next batch is received
            messages, batches = messages + len(batch), batches + 1
    finally:
        settle_deletes(deletes)
    return {"messages": messages, "batches": batches}
