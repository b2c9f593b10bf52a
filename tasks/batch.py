"""The mask-and-insert task: one batch of source messages, parsed, masked and written.

Everything the batch can write goes in one transaction (tasks.store); bad records go
to the dead-letter path with their reason, and never stop the rest of the batch.
Transient failures (PostgreSQL or SQS unreachable, serialization failures) are
retried with exponential backoff and equal jitter, up to BATCH_MAX_RETRIES; a batch
that exhausts them, or fails for a permanent reason, goes whole to the dead-letter
path with that reason. Nothing is dropped.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field
from functools import cache
from time import monotonic
from typing import Any

import psycopg2
from botocore.exceptions import BotoCoreError, ClientError
from celery import Task
from celery.signals import worker_init

import celeryconfig as config
from tasks import store
from tasks.celery import app
from tasks.deadletter import DeadLetterError, DeadLetterQueue
from tasks.keys import MaskingKeyError, load_key_ring
from tasks.masking import Masker
from tasks.records import DeadLetter, LoginEvent, SourceMessage, parse_batch

log = logging.getLogger(__name__)
THROTTLING = {"Throttling", "ThrottlingException", "RequestThrottled", "ServiceUnavailable", "InternalError"}


class StartupRefused(SystemExit):
    """The worker may not run with this configuration."""


def load_masker() -> Masker:
    keys = load_key_ring(config.MASKING_KEYS, config.MASKING_KEYS_FILE)
    if keys.development and config.PIPELINE_ENV != "embedded":
        raise MaskingKeyError(
            f"the development key may not mask outside the embedded stack (PIPELINE_ENV={config.PIPELINE_ENV})"
        )
    return Masker(keys, config.MASKING_MODE)


@worker_init.connect
def _check_masking_key(**_: Any) -> None:
    """Fail at start, not on the first batch (Celery's signals swallow Exception)."""
    try:
        load_masker()
    except (MaskingKeyError, ValueError) as exc:
        raise StartupRefused(f"worker refused to start: {exc}") from None


@dataclass
class Pipeline:
    """What a worker process keeps between batches."""

    masker: Masker
    _conn: store.Connection | None = field(default=None, repr=False)

    def connection(self) -> store.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = store.connect_writer(config.database_url())
        return self._conn

    def reset(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None


@cache
def pipeline() -> Pipeline:
    return Pipeline(load_masker())


@cache
def dead_letter_queue() -> DeadLetterQueue:
    """Apart from the pipeline, so that a batch can be dead-lettered when masking fails."""
    return DeadLetterQueue(config.DEAD_LETTER_QUEUE, config.DEAD_LETTER_KEEP_BODY)


def mask_event(event: LoginEvent, masker: Masker) -> tuple[store.MaskedRow, bool]:
    """The row for an event, and whether its ip (if any) was an address."""
    masked_ip, is_address = masker.mask_ip(event.ip) if event.ip is not None else (None, True)
    masked_device = masker.mask_device_id(event.device_id) if event.device_id is not None else None
    row = store.MaskedRow(
        event.message_id,
        event.user_id,
        event.device_type,
        masked_ip,
        masked_device,
        event.locale,
        event.app_version,
        event.create_date,
    )
    return row, is_address


def write_batch(pipe: Pipeline, messages: list[SourceMessage], task_id: str | None) -> store.BatchCounts:
    """Parse, mask and write a batch in one transaction; returns its counts.

    Duplicates are deliveries whose message was already a row or a dead letter
    (or came twice in this batch): received = inserted + dead_lettered + duplicates.
    """
    started = monotonic()
    events, letters = parse_batch(messages)
    masked = [mask_event(event, pipe.masker) for event in events]
    by_id = {m.message_id: m for m in messages}
    conn = pipe.connection()
    try:
        with conn.cursor() as cur:
            inserted, refused = store.insert_isolating(cur, [row for row, _ in masked])
            letters += [DeadLetter(by_id[row.message_id], reason) for row, reason in refused]
            unique = {letter.message.message_id: letter for letter in letters}
            new = store.record_dead_letters(cur, {i: letter.reason for i, letter in unique.items()})
            dead_letter_queue().send(letter for i, letter in unique.items() if i in new)
            counts = store.BatchCounts(
                received=len(messages),
                inserted=inserted,
                duplicates=len(messages) - inserted - len(new),
                dead_lettered=len(new),
                non_address_ips=sum(not is_address for _, is_address in masked),
            )
            store.record_batch(cur, task_id, counts, monotonic() - started)
        conn.commit()
    except BaseException:
        pipe.reset()
        raise
    return counts


def is_transient(exc: BaseException) -> bool:
    """Whether trying again later may succeed."""
    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError | BotoCoreError | DeadLetterError):
        return True  # includes SerializationFailure and DeadlockDetected
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error in THROTTLING or status >= 500
    return isinstance(exc, ConnectionError | TimeoutError)


def describe(exc: BaseException) -> str:
    """A one-line reason, without the values of any record."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def backoff(retries: int) -> float:
    """Exponential backoff with equal jitter: between half the step and the whole step.

    Full jitter (anywhere from zero) could let every retry draw short, so that a batch
    gave up within seconds of a database restart. Half of every step is certain, so
    the retries span at least half the sum of the steps (121 s with the defaults).
    """
    step = min(config.RETRY_BACKOFF_MAX, 2.0 ** (retries + 1))
    return step / 2 + random.uniform(0, step / 2)


def give_up(messages: list[SourceMessage], reason: str) -> dict[str, Any]:
    """Send a whole batch to the dead-letter path. If SQS refuses this too, the
    task fails and its message stays for the batch queue's own redrive policy."""
    log.error("batch of %d messages dead-lettered: %s", len(messages), reason)
    sent = dead_letter_queue().send(DeadLetter(m, reason) for m in messages)
    return {"received": len(messages), "dead_lettered": sent, "gave_up": reason}


class BatchTask(Task):
    """Shows a batch in Flower and events as its size, never its records."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        if args:
            options.setdefault("argsrepr", f"batch of {len(args[0])} messages")
        return super().apply_async(args, kwargs, **options)


@app.task(bind=True, base=BatchTask, name="tasks.mask_and_insert", max_retries=config.BATCH_MAX_RETRIES)
def mask_and_insert(self: Task, messages: list[list[Any]]) -> dict[str, Any]:
    batch = [SourceMessage.from_args(m) for m in messages]
    try:
        return asdict(write_batch(pipeline(), batch, self.request.id))
    except Exception as exc:
        if not is_transient(exc):
            return give_up(batch, f"permanent failure: {describe(exc)}")
        if self.request.retries >= self.max_retries:
            return give_up(batch, f"gave up after {self.request.retries} retries: {describe(exc)}")
        raise self.retry(exc=exc, countdown=backoff(self.request.retries)) from None
