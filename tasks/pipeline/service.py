"""Mask and insert, as plain functions: what one batch task does, without Celery.

Every step that looks at one record (parse, validate, normalise, mask, encode for
COPY) runs under that record's own handling (`prepare`): whatever it raises makes that
record a dead letter with a reason, and its neighbours still become rows. Reading the
task's argument is one entry at a time too (`read_args`): an entry that is not a
message is a dead letter of its own. The batch is then written in one transaction
(tasks.pipeline.store). A batch given up whole (a permanent error, or its retries
exhausted) goes to the dead-letter path and into the ledger like any dead letter.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from time import monotonic, time

import psycopg2

import celeryconfig as config
from tasks.pipeline import erasure, store
from tasks.pipeline.deadletter import DeadLetterQueue
from tasks.pipeline.keys import KeyRing, Surroundings, load_key_ring, refuse_development_key
from tasks.pipeline.masking import Masker, ValueTooLong
from tasks.pipeline.records import DeadLetter, Invalid, SourceMessage, parse_event
from tasks.pipeline.retry import describe
from tasks.pipeline.source import Received, SourceQueue

log = logging.getLogger(__name__)


def load_key_ring_checked() -> KeyRing:
    """The configured key ring; MaskingKeyError if there is none, or if it is the
    embedded stack's development key outside the stack that made it."""
    keys = load_key_ring(config.MASKING_KEYS, config.MASKING_KEYS_FILE)
    where = Surroundings(config.STACK_DIR, config.SQS_ENDPOINT_URL, config.DATABASE_URL, config.DATABASE_URL_FILE)
    refuse_development_key(keys, where)
    return keys


def load_masker() -> Masker:
    return Masker(load_key_ring_checked(), config.MASKING_MODE)


@cache
def key_ring() -> KeyRing:
    """The process's key ring, read and checked once for the pipeline and both queues."""
    return load_key_ring_checked()


@dataclass
class Pipeline:
    """What a worker process keeps between batches."""

    masker: Masker
    _conn: store.Connection | None = field(default=None, repr=False)

    def connection(self) -> store.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = store.connect_writer(config.database_url(), config.STATEMENT_TIMEOUT_MS)
        return self._conn

    def reset(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None


@cache
def pipeline() -> Pipeline:
    return Pipeline(Masker(key_ring(), config.MASKING_MODE))


@cache
def dead_letter_queue() -> DeadLetterQueue:
    """Apart from the pipeline's connection: a batch is dead-lettered even when the database is down."""
    return DeadLetterQueue(config.DEAD_LETTER_QUEUE, key_ring(), config.DEAD_LETTER_KEEP_BODY)


@cache
def source_queue() -> SourceQueue:
    return SourceQueue(
        config.SOURCE_QUEUE,
        key_ring(),
        config.SOURCE_VISIBILITY_TIMEOUT,
        config.FETCH_RECEIVERS,
        lean=config.SQS_LEAN_CALLS,
    )


@dataclass(frozen=True)
class Prepared:
    """A record made ready to write: its row, and whether its ip was an address."""

    row: store.MaskedRow
    ip_is_address: bool


def mask_record(message: SourceMessage, masker: Masker) -> Prepared:
    """Parse, mask and encode one record; raises for a record that cannot be a row."""
    event = parse_event(message)
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
    row.copy_line().encode("utf-8")  # encoding for COPY fails here, for this record alone
    return Prepared(row, is_address)


def prepare(messages: list[SourceMessage], masker: Masker) -> tuple[list[Prepared], list[DeadLetter]]:
    """Each message made ready, or a dead letter with its reason: never raises for a record."""
    ready: list[Prepared] = []
    letters: list[DeadLetter] = []
    for message in messages:
        try:
            ready.append(mask_record(message, masker))
        except (Invalid, ValueTooLong) as exc:  # their reasons name a field, never a value
            letters.append(DeadLetter(message, str(exc)))
        except Exception as exc:  # a record no rule foresaw: it alone is set apart
            letters.append(DeadLetter(message, f"record could not be masked: {describe(exc)}"))
    return ready, letters


def read_args(entries: object, task_id: str | None) -> tuple[list[SourceMessage], list[DeadLetter]]:
    """A batch task's argument, one entry at a time: its messages, and a dead letter for
    each entry that is not one (named after the task and its place, with no body)."""
    messages: list[SourceMessage] = []
    refused: list[DeadLetter] = []
    for index, entry in enumerate(entries if isinstance(entries, list) else [entries]):
        try:
            messages.append(SourceMessage.from_args(entry))
        except Invalid as exc:
            refused.append(DeadLetter(SourceMessage(f"entry {index} of task {task_id}"[:128], 0, ""), str(exc)))
    return messages, refused


def write_batch(
    pipe: Pipeline, messages: list[SourceMessage], task_id: str | None, unread: Sequence[DeadLetter] = ()
) -> store.BatchCounts:
    """Parse, mask and write a batch in one transaction; returns its counts. `unread`
    are dead letters already decided (entries of the task that were no message).

    Duplicates are deliveries whose message was already a row or a dead letter
    (or came twice in this batch): received = inserted + dead_lettered + duplicates.
    """
    started = monotonic()
    ready, letters = prepare(messages, pipe.masker)
    letters += unread
    by_id = {m.message_id: m for m in messages}
    conn = pipe.connection()
    try:
        with conn.cursor() as cur:
            ready, letters, forgotten = _drop_forgotten(cur, pipe.masker.keys, by_id, ready, letters)
            inserted, refused = store.insert_isolating(cur, [p.row for p in ready])
            letters += [DeadLetter(by_id[row.message_id], reason) for row, reason in refused]
            new = _dead_letter(cur, letters)
            received = len(messages) + len(unread)
            counts = store.BatchCounts(
                received=received,
                inserted=len(inserted),
                duplicates=received - len(inserted) - new - forgotten,
                dead_lettered=new,
                non_address_ips=sum(not p.ip_is_address for p in ready),
                forgotten=forgotten,
            )
            store.record_batch(cur, task_id, counts, batch_times(started, [by_id[i] for i in inserted]))
        conn.commit()
    except BaseException:
        pipe.reset()
        raise
    return counts


def _drop_forgotten(
    cur: store.Cursor, keys: KeyRing, by_id: dict[str, SourceMessage], ready: list[Prepared], letters: list[DeadLetter]
) -> tuple[list[Prepared], list[DeadLetter], int]:
    """The batch without the events of users forgotten after those events were sent
    (tasks.pipeline.erasure), and how many were dropped."""
    letter_users = [erasure.user_of(letter.message.body) for letter in letters]
    erased = erasure.erased_at(cur, keys, [p.row.user_id for p in ready] + [u for u in letter_users if u])
    if not erased:
        return ready, letters, 0
    kept = [p for p in ready if not erasure.is_forgotten(p.row.user_id, by_id[p.row.message_id].sent_at_ms, erased)]
    kept_letters = [
        letter
        for letter, user in zip(letters, letter_users, strict=True)
        if not erasure.is_forgotten(user, letter.message.sent_at_ms, erased)
    ]
    return kept, kept_letters, len(ready) - len(kept) + len(letters) - len(kept_letters)


def batch_times(started: float, inserted: list[SourceMessage]) -> store.BatchTimes:
    """The batch's duration so far, and each inserted row's freshness: from its event's
    SentTimestamp (the original one, for a redriven event) to now, just before the commit."""
    now = time()
    return store.BatchTimes(monotonic() - started, [max(0.0, now - m.sent_at_ms / 1000) for m in inserted])


def _dead_letter(cur: store.Cursor, letters: list[DeadLetter]) -> int:
    """Note dead letters in the ledger and send those not noted before; returns how many."""
    unique = {letter.message.message_id: letter for letter in letters}
    new = store.record_dead_letters(cur, {i: letter.reason for i, letter in unique.items()})
    dead_letter_queue().send(letter for i, letter in unique.items() if i in new)
    return len(new)


def give_up(
    pipe: Pipeline, messages: list[SourceMessage], reason: str, task_id: str | None, unread: Sequence[DeadLetter] = ()
) -> store.BatchCounts:
    """Send a whole batch to the dead-letter path, noted in the ledger like any dead
    letter (`unread` ones with their own reasons). Where the database is the failure,
    the letters are sent all the same and the ledger is left as it was (logged); if SQS
    refuses too, this raises and the task's message stays for the batch queue's own
    redrive policy."""
    log.error("batch of %d messages dead-lettered: %s", len(messages), reason)
    letters = [DeadLetter(m, reason) for m in messages] + list(unread)
    total = len(letters)
    counts = store.BatchCounts(received=total, inserted=0, duplicates=0, dead_lettered=total)
    try:
        conn = pipe.connection()
        with conn.cursor() as cur:
            new = _dead_letter(cur, letters)
            counts = store.BatchCounts(total, 0, total - new, new)
            store.record_batch(cur, task_id, counts)
        conn.commit()
    except psycopg2.Error as exc:
        pipe.reset()
        log.error("ledger not updated for a batch given up (%s); its letters go to the queue", describe(exc))
        dead_letter_queue().send(letters)
    except BaseException:
        pipe.reset()  # never leave the ledger's inserts open for the next batch to commit
        raise
    return counts


def mark_fetch(started: float, newest_sent_ms: int | None) -> None:
    """Note a fetch's start (beat's heartbeat on /metrics) and the newest SentTimestamp it
    received (the oldest-message estimate); a database outage costs the mark, not the fetch."""
    pipe = pipeline()
    try:
        conn = pipe.connection()
        with conn.cursor() as cur:
            store.record_fetch(cur, started, newest_sent_ms)
        conn.commit()
    except psycopg2.Error as exc:
        pipe.reset()
        log.warning("fetch not marked in the ledger: %s", describe(exc))


def dead_letter_set_apart(received: list[Received]) -> list[Received]:
    """Messages set apart by the fetch (a large body that is no valid event, unusable as
    received, too large for a batch): dead letters straight from the fetch, each with its
    own reason and body. Returns those dead-lettered, which the fetch deletes. One whose
    dead letter SQS would not take (a body within its attributes' size of SQS's limit)
    is left in login-queue, for SQS's own redrive policy to move it to the dead-letter
    queue, body intact, after SOURCE_MAX_RECEIVES receives."""
    queue, done = dead_letter_queue(), []
    by_reason: dict[str, list[SourceMessage]] = {}
    for r in received:
        reason = r.reason or "set apart"
        if queue.fits(DeadLetter(r.message, reason)):
            by_reason.setdefault(reason, []).append(r.message)
            done.append(r)
    if len(done) < len(received):
        log.warning(
            "%d messages too large for a dead letter with their reason are left in %s: SQS moves them,"
            " body intact, to %s after %d receives",
            len(received) - len(done),
            config.SOURCE_QUEUE,
            config.DEAD_LETTER_QUEUE,
            config.SOURCE_MAX_RECEIVES,
        )
    for reason, messages in by_reason.items():
        give_up(pipeline(), messages, reason, None)
    return done
