"""Cutting the source stream into batches: how many messages, and how many bytes.

A batch travels to `mask_and_insert` as one Celery task message on SQS, whose limit is
1 MiB *after* kombu has JSON-encoded the arguments (non-ASCII escaped as ``\\uXXXX``,
up to six bytes a character) and base64-encoded the body (4/3). A batch is therefore
capped by the size of its messages as JSON (``wire_size``), not by their characters:
BATCH_MAX_BYTES of JSON is at most 4/3 of that on the wire. A single message too large
for any batch is set apart, to become a dead letter with the reason ``too large``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from time import monotonic

from tasks.pipeline.source import Received, SourceQueue


def wire_size(received: Received) -> int:
    """Bytes of this message's arguments as kombu's JSON will carry them."""
    return len(json.dumps(received.message.as_args())) + 2  # a comma and a space between messages


@dataclass
class Batch:
    """Messages to hand to one task, and those too large for any task."""

    messages: list[Received] = field(default_factory=list)
    too_large: list[Received] = field(default_factory=list)


def cut_batch(pending: list[Received], size: int, max_bytes: int) -> tuple[Batch, list[Received]]:
    """The first messages that fit a batch, and the rest. A message larger than
    `max_bytes` on its own is set apart as too large, never handed to a task."""
    batch, total, taken = Batch(), 0, 0
    for received in pending:
        if len(batch.messages) == size:
            break
        bytes_ = wire_size(received)
        if bytes_ > max_bytes:
            batch.too_large.append(received)
        elif total + bytes_ > max_bytes:
            break
        else:
            batch.messages.append(received)
            total += bytes_
        taken += 1
    return batch, pending[taken:]


def receive_batches(
    source: SourceQueue, size: int, max_bytes: int, deadline: float, first_wait: int = 1
) -> Iterator[Batch]:
    """Batches from the source queue until it is empty or the deadline passed."""
    pending: list[Received] = []
    more, wait = True, first_wait
    while more or pending:
        while more and len(pending) < size:
            got = source.receive_up_to(size - len(pending), wait)
            pending += got
            more, wait = bool(got) and monotonic() < deadline, 0
        if not pending:
            return
        batch, pending = cut_batch(pending, size, max_bytes)
        yield batch
