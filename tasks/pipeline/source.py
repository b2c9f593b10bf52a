"""The source queue, login-queue: receive in parallel, delete in batches.

A message is received with a visibility timeout of our own (SOURCE_VISIBILITY_TIMEOUT),
so it stays hidden while its batch is handed off, and it is deleted only after that.
Its idempotency key is the SQS MessageId, and its date SQS's SentTimestamp. A replayed
dead letter keeps its original id and SentTimestamp in the ``source_message_id`` and
``source_sent_timestamp`` attributes, trusted only with the ``source_message_signature``
that the pipeline sets: an HMAC of the id, the time and the body's SHA-256, under a key
derived from the masking key ring. A producer can neither choose an id (and so suppress
a genuine event's row) nor move a genuine signature onto a body of its own.

Every step that reads a received message runs under that message's own handling, so a
message, however odd, costs itself alone and never its batchmates:

- Signed originals are used only when all three are well formed (an id of 1 to 128
  characters, a time of 1 to 15 ASCII digits, a signature in `KeyRing.sign`'s format)
  and the signature holds for this body. Otherwise, for whatever reason, the message
  keeps its own MessageId and SentTimestamp and is processed like any new message: a
  forger gains nothing, and no attribute's value is parsed unbounded or quoted.
- A message whose own fields are unusable (no SentTimestamp of 1 to 15 digits, a body
  that is not text) is set apart with a reason (`Received.reason`) and becomes a dead
  letter from the fetch.
- A body too large to travel as it is (over tasks.pipeline.oversize.COMPACT_ABOVE
  characters) is read here, on receipt: a valid event goes on as its fields alone, an
  invalid one is set apart with the record's own reason and its whole body. So the
  fetch never holds more than a response's worth of a large body it does not need.
- A message without a MessageId or ReceiptHandle SQS would never send; it is logged
  (no values) and left alone, so the queue's redrive policy moves it to the
  dead-letter queue after its receives run out.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

from tasks.broker import aws
from tasks.pipeline.keys import KeyRing
from tasks.pipeline.oversize import compact
from tasks.pipeline.records import Invalid, SourceMessage

log = logging.getLogger(__name__)
ORIGINAL_ID = "source_message_id"
ORIGINAL_SENT = "source_sent_timestamp"
ORIGINAL_SIGNATURE = "source_message_signature"
ORIGINAL_ATTRIBUTES = [ORIGINAL_ID, ORIGINAL_SENT, ORIGINAL_SIGNATURE]
SIGNING_PURPOSE = "redrive/original"


def _signed_text(message_id: str, sent_at_ms: int, body: str) -> str:
    return f"{message_id}|{sent_at_ms}|{hashlib.sha256(body.encode('utf-8', 'surrogatepass')).hexdigest()}"


def redrive_attributes(message: SourceMessage, keys: KeyRing) -> dict[str, dict[str, str]]:
    """The attributes that carry a message's original id and time, signed with its body."""
    signature = keys.sign(_signed_text(message.message_id, message.sent_at_ms, message.body), SIGNING_PURPOSE)
    return {
        ORIGINAL_ID: {"DataType": "String", "StringValue": message.message_id},
        ORIGINAL_SENT: {"DataType": "Number", "StringValue": str(message.sent_at_ms)},
        ORIGINAL_SIGNATURE: {"DataType": "String", "StringValue": signature},
    }


MAX_ID_CHARS = 128  # user_logins.message_id is varchar(128)
MAX_TIME_DIGITS = 15  # epoch milliseconds up to the year 33658; int() never sees more


class Unusable(ValueError):
    """A received message that cannot be a row as it is; the reason quotes no value."""


def _text_field(value: object, limit: int) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


def epoch_ms(value: object) -> int | None:
    """A time in epoch milliseconds from text of 1 to MAX_TIME_DIGITS ASCII digits, else None."""
    text = _text_field(value, MAX_TIME_DIGITS)
    if text is None or not (text.isascii() and text.isdigit()) or int(text) == 0:
        return None
    return int(text)


def _own(raw: dict) -> tuple[str, int]:
    """A message's own MessageId and SentTimestamp; Unusable if SQS gave none usable."""
    message_id = _text_field(raw.get("MessageId"), MAX_ID_CHARS)
    if message_id is None:
        raise Unusable("message has no usable MessageId")
    attributes = raw.get("Attributes")
    sent = epoch_ms(attributes.get("SentTimestamp") if isinstance(attributes, dict) else None)
    if sent is None:
        raise Unusable("message has no usable SentTimestamp")
    return message_id, sent


def _signed_originals(raw: dict, keys: KeyRing) -> tuple[str, int] | None:
    """The original id and time a message carries, if well formed and signed for its body."""
    original, sent, signature = (aws.message_attribute(raw, name) for name in ORIGINAL_ATTRIBUTES)
    if signature is None and original is None and sent is None:
        return None
    claimed_id, claimed_sent, body = _text_field(original, MAX_ID_CHARS), epoch_ms(sent), raw.get("Body")
    if claimed_id is None or claimed_sent is None or not isinstance(body, str):
        return _distrusted()
    if not keys.verify(_signed_text(claimed_id, claimed_sent, body), signature, SIGNING_PURPOSE):
        return _distrusted()
    return claimed_id, claimed_sent


def _distrusted() -> tuple[str, int] | None:
    log.warning("a message carried original ids that are malformed or not signed for it; it keeps its own")
    return None


def identity(raw: dict, keys: KeyRing) -> tuple[str, int]:
    """A received message's idempotency key and send time: the signed originals where
    they are well formed and their signature holds for this body, else its own
    MessageId and SentTimestamp. Unusable if it has no usable own ones."""
    own = _own(raw)
    return _signed_originals(raw, keys) or own


@dataclass(frozen=True)
class Received:
    """A received message; `reason` says why it is set apart to be a dead letter."""

    message: SourceMessage
    receipt_handle: str
    reason: str | None = None


@cache
def _pool(workers: int, purpose: str) -> ThreadPoolExecutor:
    """Threads for one kind of call: receives never queue behind deletes."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"sqs-{purpose}")


def _received(raw: object, keys: KeyRing) -> Received | None:
    """One message of a ReceiveMessage response, under its own handling: a Received
    (set apart with a reason if it cannot be a row), or None if it cannot even be
    deleted or named (logged, left to the queue's redrive policy). Never raises."""
    receipt = raw.get("ReceiptHandle") if isinstance(raw, dict) else None
    message_id = _text_field(raw.get("MessageId"), MAX_ID_CHARS) if isinstance(raw, dict) else None
    if not (isinstance(raw, dict) and isinstance(receipt, str) and receipt and message_id):
        log.warning("a received message has no usable MessageId or ReceiptHandle; left to the redrive policy")
        return None
    body = raw.get("Body")
    text = body if isinstance(body, str) else ""
    try:
        if not isinstance(body, str):
            raise Unusable("message body is not text")
        message_id, sent_at_ms = identity(raw, keys)
        message = SourceMessage(message_id, sent_at_ms, text)
    except Unusable as exc:
        return Received(SourceMessage(message_id, 0, text), receipt, str(exc))
    except Exception as exc:  # a message no rule foresaw: it alone is set apart
        reason = f"message could not be read: {type(exc).__name__}"
        return Received(SourceMessage(message_id, 0, text), receipt, reason)
    try:
        return Received(compact(message), receipt)
    except Invalid as exc:  # a large body that is no valid event: a dead letter, whole
        return Received(message, receipt, str(exc))
    except Exception as exc:  # a record no rule foresaw: it alone is set apart, whole
        return Received(message, receipt, f"record could not be read: {type(exc).__name__}")


def received_messages(response: object, keys: KeyRing) -> list[Received]:
    """The messages of a ReceiveMessage response, each read under its own handling."""
    messages = response.get("Messages") if isinstance(response, dict) else None
    if not isinstance(messages, list):
        return []
    return [r for r in (_received(raw, keys) for raw in messages) if r is not None]


class SourceQueue:
    """login-queue's hot calls: with `lean`, lean signed requests (tasks.broker.lean_sqs)
    instead of botocore's, for about a third of the CPU per call."""

    def __init__(
        self, name: str, keys: KeyRing, visibility_timeout: int, receivers: int = 4, *, lean: bool = True
    ) -> None:
        self.url = aws.queue_url(name)
        self.keys = keys
        self.visibility_timeout = visibility_timeout
        self.receivers = receivers
        self.sqs = aws.lean_sqs() if lean else aws.client("sqs")

    def receive(self, count: int = 10, wait: int = 0) -> list[Received]:
        response = self.sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=min(count, 10),
            WaitTimeSeconds=wait,
            VisibilityTimeout=self.visibility_timeout,
            MessageSystemAttributeNames=["SentTimestamp"],
            MessageAttributeNames=ORIGINAL_ATTRIBUTES,
        )
        return received_messages(response, self.keys)

    def receive_up_to(self, count: int, wait: int = 0) -> list[Received]:
        """Up to `count` messages, with several ReceiveMessage calls in flight."""
        calls = [min(10, count - i) for i in range(0, count, 10)][: self.receivers]
        if len(calls) == 1:
            return self.receive(calls[0], wait)
        results = _pool(self.receivers, "receive").map(lambda n: self.receive(n, wait), calls)
        return [message for result in results for message in result]

    def _delete_chunk(self, chunk: list[Received]) -> int:
        entries = [{"Id": str(i), "ReceiptHandle": r.receipt_handle} for i, r in enumerate(chunk)]
        return len(self.sqs.delete_message_batch(QueueUrl=self.url, Entries=entries).get("Failed", []))

    def delete_later(self, received: list[Received]) -> list[Future[int]]:
        """Start deleting handed-off messages in the background (ten per call)."""
        return [_pool(self.receivers, "delete").submit(self._delete_chunk, chunk) for chunk in aws.chunks(received)]

    def delete(self, received: list[Received]) -> int:
        """Delete handed-off messages; returns how many SQS did not delete."""
        return settle_deletes(self.delete_later(received))


def settle_deletes(pending: list[Future[int]]) -> int:
    """Wait for background deletes. Messages not deleted reappear after the visibility
    timeout and are skipped as duplicates, so a failure here loses nothing."""
    failed = 0
    for future in pending:
        try:
            failed += future.result()
        except Exception as exc:
            log.warning("DeleteMessageBatch failed: %s", type(exc).__name__)
            failed += 10
    if failed:
        log.warning("up to %d handed-off source messages were not deleted", failed)
    return failed
