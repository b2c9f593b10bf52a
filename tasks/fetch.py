"""The fetch task: login-queue -> batches -> mask-and-insert tasks.

Beat runs `fetch_batches` every FETCH_INTERVAL seconds. It receives from login-queue
with several ReceiveMessage calls in flight until it holds a batch (BATCH_SIZE
messages or BATCH_MAX_BYTES as the task message will carry them) or the batch's oldest
message has waited BATCH_MAX_WAIT_MS, hands the batch to a `mask_and_insert` task, and
only once that publish succeeded deletes the batch's source messages (in the
background, while the next batch is received). A message too large for any batch, or
one that cannot be a row as received (tasks.pipeline.source), becomes a dead letter
here, with its reason. It goes on for up to FETCH_MAX_SECONDS while there are messages;
on a quiet queue it long-polls until the next fetch starts, so beat is the safety net
that keeps a fetch running, not the pace at which events move. A fetch that dies leaves
its messages to reappear after SOURCE_VISIBILITY_TIMEOUT. Its start and the newest
SentTimestamp it received go to the ledger's heartbeats at its end: beat's last tick
and the oldest message's age on /metrics.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from time import monotonic, time

import celeryconfig as config
from tasks.batch import mask_and_insert
from tasks.celery import app
from tasks.pipeline.batching import receive_batches
from tasks.pipeline.service import dead_letter_set_apart, mark_fetch, source_queue
from tasks.pipeline.source import settle_deletes

log = logging.getLogger(__name__)


@app.task(name="tasks.fetch_batches")
def fetch_batches() -> dict[str, int]:
    source = source_queue()
    messages = batches = 0
    newest_sent_ms: int | None = None
    deletes: list[Future[int]] = []
    started, clock = time(), monotonic()
    deadline = clock + config.FETCH_MAX_SECONDS
    try:
        for batch in receive_batches(
            source,
            config.BATCH_SIZE,
            config.BATCH_MAX_BYTES,
            deadline,
            idle_until=clock + config.FETCH_INTERVAL,
            max_wait=config.BATCH_MAX_WAIT_MS / 1000,
            idle_wait=config.FETCH_WAIT_SECONDS,
        ):
            if batch.set_apart:
                dead_letter_set_apart(batch.set_apart)
                deletes += source.delete_later(batch.set_apart)
            if batch.messages:
                mask_and_insert.apply_async(([r.message.as_args() for r in batch.messages],))
                deletes += source.delete_later(batch.messages)  # while the next batch is received
            messages, batches = messages + len(batch.messages), batches + bool(batch.messages)
            sent = [r.message.sent_at_ms for r in batch.messages]
            newest_sent_ms = max([*sent, newest_sent_ms or 0]) if sent else newest_sent_ms
    finally:
        settle_deletes(deletes)
        mark_fetch(started, newest_sent_ms)
    seconds = monotonic() - clock
    log.log(
        logging.INFO if messages else logging.DEBUG,
        "fetch handed off %d messages in %d batches in %.2f s",
        messages,
        batches,
        seconds,
        extra={"messages": messages, "batches": batches, "duration_seconds": round(seconds, 3)},
    )
    return {"messages": messages, "batches": batches}
