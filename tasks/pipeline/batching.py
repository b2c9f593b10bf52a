"""Cutting the source stream into batches: how many messages, and how many bytes.

A batch travels to `mask_and_insert` as one Celery task message on SQS, whose limit is
1 MiB *after* kombu's encoding: the arguments as JSON (non-ASCII escaped as ``\\uXXXX``,
up to six bytes a character), that body in base64 inside kombu's JSON envelope, and the
envelope in base64 again (the SQS transport's ``sqs_base64_encoding``): 16/9 of the
arguments' JSON, plus the envelope's headers. A batch is therefore capped by the size of
its messages as JSON (``wire_size``), never above ``MAX_BATCH_BYTES`` whatever
BATCH_MAX_BYTES says. A large body arrives here already compacted to its event's fields
(tasks.pipeline.oversize); a message still too large for a batch (BATCH_MAX_BYTES set
below a small event's size) is set apart, to become a dead letter with the reason ``too
large`` and its body, as is a message the source already set apart with its own reason
(tasks.pipeline.source).

A fetch holds at most FETCH_MAX_BYTES of received messages, by bytes, not by count
(``receive_batches``'s ``max_held``): the bodies it holds (their size in memory), plus
every message asked for and not yet answered counted at SQS's largest
(``RECEIVE_RESERVE``, 1 MiB), since ten messages of a ReceiveMessage may be 10 MiB. It
asks for fewer messages, in fewer calls, as it holds more, and hands off what it holds
when nothing more may come in; a flood of 1 MiB messages therefore costs a fetch at most
FETCH_MAX_BYTES of bodies, whatever BATCH_SIZE and FETCH_RECEIVERS say.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from math import ceil
from time import monotonic, sleep

from tasks.pipeline.source import Received, SourceQueue

TOO_LARGE = "too large"
SQS_MAX_MESSAGE_BYTES = 1_048_576
ENVELOPE_ALLOWANCE = 8_192  # kombu's headers and properties (argsrepr, ids, routing), generously
# The most JSON a batch may hold so that its task message fits SQS: 585,216 bytes.
MAX_BATCH_BYTES = (SQS_MAX_MESSAGE_BYTES - ENVELOPE_ALLOWANCE) * 9 // 16
LINGER_PAUSE = 0.02  # seconds between receives that find the queue empty while a batch fills
# A message asked for and not yet received is counted at the most SQS may answer for it.
RECEIVE_RESERVE = SQS_MAX_MESSAGE_BYTES


def wire_size(received: Received) -> int:
    """Bytes of this message's arguments as kombu's JSON will carry them."""
    return len(json.dumps(received.message.as_args())) + 2  # a comma and a space between messages


@dataclass
class Batch:
    """Messages to hand to one task, and those set apart (each with its reason) to
    become dead letters: too large for any task, or unusable as received."""

    messages: list[Received] = field(default_factory=list)
    set_apart: list[Received] = field(default_factory=list)


def cut_batch(pending: list[Received], size: int, max_bytes: int) -> tuple[Batch, list[Received]]:
    """The first messages that fit a batch, and the rest. A message larger than
    `max_bytes` on its own is set apart as too large, never handed to a task; one
    that already carries a reason is set apart with it."""
    max_bytes = min(max_bytes, MAX_BATCH_BYTES)
    batch, total, taken = Batch(), 0, 0
    for received in pending:
        if len(batch.messages) == size:
            break
        if received.reason is not None:
            batch.set_apart.append(received)
            taken += 1
            continue
        bytes_ = wire_size(received)
        if bytes_ > max_bytes:
            batch.set_apart.append(replace(received, reason=TOO_LARGE))
        elif total + bytes_ > max_bytes:
            break
        else:
            batch.messages.append(received)
            total += bytes_
        taken += 1
    return batch, pending[taken:]


def held_bytes(pending: list[Received]) -> int:
    """The memory the bodies of these messages take."""
    return sum(sys.getsizeof(r.message.body) for r in pending)


def receive_batches(
    source: SourceQueue,
    size: int,
    max_bytes: int,
    deadline: float,
    *,
    idle_until: float | None = None,
    max_wait: float = 0.25,
    idle_wait: int = 1,
    max_held: int = 64 * RECEIVE_RESERVE,
) -> Iterator[Batch]:
    """Batches from the source queue until `deadline` (monotonic seconds).

    A batch is handed off when it is full or when its oldest message has waited
    `max_wait` seconds, so a message waits for its batchmates that long at most. While a
    fetch holds nothing and the queue is quiet, it long-polls with one call of
    `idle_wait` seconds, and goes on doing so until `idle_until` (the next fetch's start):
    a message that arrives meanwhile is on its way at once, not at the next beat tick.
    With `idle_wait` 0 a quiet queue ends the fetch.

    At most `max_held` bytes: what it holds, plus RECEIVE_RESERVE for each message asked
    for (at least twice RECEIVE_RESERVE, so that one message is held while another comes)."""
    idle_until = deadline if idle_until is None else min(idle_until, deadline)
    max_held = max(max_held, 2 * RECEIVE_RESERVE)
    pending: list[Received] = []
    oldest, quiet, flowing = 0.0, None, True  # quiet: the last receive with nothing pending found nothing
    while True:
        now = monotonic()
        room = (max_held - held_bytes(pending)) // RECEIVE_RESERVE  # messages it may still ask for
        if pending and (len(pending) >= size or now - oldest >= max_wait or now >= deadline or room < 1):
            batch, pending = cut_batch(pending, size, max_bytes)
            yield batch
        elif pending:  # all receivers while messages flow, one call while the queue is empty
            got = source.receive_up_to(min(size - len(pending) if flowing else 10, room), 0)
            pending, flowing = pending + got, bool(got)
            if not got:  # the batch lingers a little
                sleep(min(LINGER_PAUSE, max(0.0, oldest + max_wait - monotonic())))
        elif now >= deadline or (quiet and (now >= idle_until or not idle_wait)):
            return
        elif quiet is False:  # the last batch has gone and messages were flowing
            pending = source.receive_up_to(min(size, room), 0)
            oldest, quiet, flowing = monotonic(), not pending, bool(pending)
        else:  # one long poll to start and while quiet, ending about when the next fetch starts
            wait = min(idle_wait, max(1, ceil(idle_until - now)))
            pending = source.receive_up_to(min(10, room), wait)
            oldest, quiet, flowing = monotonic(), not pending, bool(pending)
