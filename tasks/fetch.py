"""The fetch task: login-queue -> batches -> mask-and-insert tasks.

Beat runs `fetch_batches` every FETCH_INTERVAL seconds. It receives from login-queue
with several ReceiveMessage calls in flight until it holds a batch (BATCH_SIZE messages
or BATCH_MAX_BYTES as the task message will carry them) or the batch's oldest message
has waited BATCH_MAX_WAIT_MS, hands the batch to a `mask_and_insert` task, and only once
that publish succeeded deletes the batch's source messages (in the background, while the
next batch is received). It holds at most FETCH_MAX_BYTES of received messages
(tasks.pipeline.batching); a body too large to travel as it is travels as its event's
fields alone (tasks.pipeline.oversize). A large body that is no valid event, or a
message that cannot be a row as received (tasks.pipeline.source), becomes a dead letter
here, with its reason and its body. It goes on for up to FETCH_MAX_SECONDS while there
are messages; on a quiet queue it long-polls until the next fetch starts, so beat is the
safety net that keeps a fetch running, not the pace at which events move. A fetch that
dies leaves its messages to reappear after SOURCE_VISIBILITY_TIMEOUT. Its start and the
newest SentTimestamp it received go to the ledger's heartbeats at its end: beat's last
tick and the oldest message's age on /metrics.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from concurrent.futures import Future
from functools import cache
from time import monotonic, time

import celeryconfig as config
from tasks.batch import mask_and_insert
from tasks.celery import app
from tasks.pipeline.batching import receive_batches
from tasks.pipeline.service import dead_letter_set_apart, mark_fetch, source_queue
from tasks.pipeline.source import settle_deletes

log = logging.getLogger(__name__)


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial threshold, kept fixed


@cache
def map_large_allocations() -> None:
    """Serve every allocation above 128 KiB by its own mapping, returned to the system
    when freed (glibc's mallopt). By default glibc raises that threshold to the size of
    the largest block freed, up to 32 MiB, so after the first 1 MiB body every later one
    came from the heap, whose freed pages a process keeps: a flood of 1 MiB messages
    grew a pool process by about 100 MiB more than the bodies it held at once."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def return_freed_memory() -> None:
    """Give the pages a fetch freed back to the system (glibc's malloc_trim): its receive
    threads' allocator arenas otherwise keep them, and a pool process that once read a
    flood of 1 MiB messages would hold that memory while another one reads the next."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@app.task(name="tasks.fetch_batches")
def fetch_batches() -> dict[str, int]:
    map_large_allocations()
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
            max_held=config.FETCH_MAX_BYTES,
        ):
            if batch.set_apart:
                deletes += source.delete_later(dead_letter_set_apart(batch.set_apart))
            if batch.messages:
                mask_and_insert.apply_async(([r.message.as_args() for r in batch.messages],))
                deletes += source.delete_later(batch.messages)  # while the next batch is received
            messages, batches = messages + len(batch.messages), batches + bool(batch.messages)
            sent = [r.message.sent_at_ms for r in batch.messages]
            newest_sent_ms = max([*sent, newest_sent_ms or 0]) if sent else newest_sent_ms
    finally:
        settle_deletes(deletes)
        mark_fetch(started, newest_sent_ms)
        return_freed_memory()
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
