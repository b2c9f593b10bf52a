"""The source queue, login-queue: receive in parallel, delete in batches.

A message is received with a visibility timeout of our own (SOURCE_VISIBILITY_TIMEOUT),
so it stays hidden while its batch is handed off, and it is deleted only after that.
Its idempotency key is the SQS MessageId, and its date SQS's SentTimestamp. A replayed
dead letter keeps its original id and SentTimestamp in the ``source_message_id`` and
``source_sent_timestamp`` attributes, trusted only with the ``source_message_signature``
that the pipeline sets: an HMAC of the id, the time and the body's SHA-256, under a key
derived from the masking key ring. A producer can neither choose an id (and so suppress
a genuine event's row) nor move a genuine signature onto a body of its own.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

from tasks.broker import aws
from tasks.pipeline.keys import KeyRing
from tasks.pipeline.records import SourceMessage

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


def identity(raw: dict, keys: KeyRing) -> tuple[str, int]:
    """A received message's idempotency key and send time: the signed originals where
    their signature holds for this body, else its own MessageId and SentTimestamp."""
    own = (raw["MessageId"], int(raw.get("Attributes", {}).get("SentTimestamp", 0)))
    original, sent, signature = (aws.message_attribute(raw, name) for name in ORIGINAL_ATTRIBUTES)
    if not signature:
        return own
    if original and sent and sent.isascii() and sent.isdigit():
        claimed = (original, int(sent))
        if keys.verify(_signed_text(*claimed, raw["Body"]), signature, SIGNING_PURPOSE):
            return claimed
    log.warning("a message carried an original id whose signature does not hold; it keeps its own id")
    return own


@dataclass(frozen=True)
class Received:
    message: SourceMessage
    receipt_handle: str


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sqs")


def _received(raw: dict, keys: KeyRing) -> Received:
    message_id, sent_at_ms = identity(raw, keys)
    return Received(SourceMessage(message_id, sent_at_ms, raw["Body"]), raw["ReceiptHandle"])


class SourceQueue:
    def __init__(self, name: str, keys: KeyRing, visibility_timeout: int, receivers: int = 4) -> None:
        self.url = aws.queue_url(name)
        self.keys = keys
        self.visibility_timeout = visibility_timeout
        self.receivers = receivers
        self.sqs = aws.client("sqs")

    def receive(self, count: int = 10, wait: int = 0) -> list[Received]:
        response = self.sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=min(count, 10),
            WaitTimeSeconds=wait,
            VisibilityTimeout=self.visibility_timeout,
            MessageSystemAttributeNames=["SentTimestamp"],
            MessageAttributeNames=ORIGINAL_ATTRIBUTES,
        )
        return [_received(raw, self.keys) for raw in response.get("Messages", [])]

    def receive_up_to(self, count: int, wait: int = 0) -> list[Received]:
        """Up to `count` messages, with several ReceiveMessage calls in flight."""
        calls = [min(10, count - i) for i in range(0, count, 10)][: self.receivers]
        if len(calls) == 1:
            return self.receive(calls[0], wait)
        results = _pool(self.receivers).map(lambda n: self.receive(n, wait), calls)
        return [message for result in results for message in result]

    def _delete_chunk(self, chunk: list[Received]) -> int:
        entries = [{"Id": str(i), "ReceiptHandle": r.receipt_handle} for i, r in enumerate(chunk)]
        return len(self.sqs.delete_message_batch(QueueUrl=self.url, Entries=entries).get("Failed", []))

    def delete_later(self, received: list[Received]) -> list[Future[int]]:
        """Start deleting handed-off messages in the background (ten per call)."""
        return [_pool(self.receivers).submit(self._delete_chunk, chunk) for chunk in aws.chunks(received)]

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
