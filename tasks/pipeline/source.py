"""The source queue, login-queue: receive in parallel, delete in batches.

A message is received with a visibility timeout of our own (SOURCE_VISIBILITY_TIMEOUT),
so it stays hidden while its batch is handed off, and it is deleted only after that.
Its idempotency key is the SQS MessageId. A replayed dead letter keeps its original id
in the ``source_message_id`` attribute, trusted only with the ``source_message_signature``
that `redrive` sets (an HMAC of the id under a key derived from the masking key ring):
a producer cannot choose an id and so suppress a genuine event's row.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

from tasks.broker import aws
from tasks.pipeline.keys import KeyRing
from tasks.pipeline.records import SourceMessage

log = logging.getLogger(__name__)
ORIGINAL_ID = "source_message_id"
ORIGINAL_ID_SIGNATURE = "source_message_signature"
SIGNING_PURPOSE = "redrive/message-id"


def redrive_attributes(message_id: str, keys: KeyRing) -> dict[str, dict[str, str]]:
    """The attributes that carry a replayed message's original id, signed."""
    return {
        ORIGINAL_ID: {"DataType": "String", "StringValue": message_id},
        ORIGINAL_ID_SIGNATURE: {"DataType": "String", "StringValue": keys.sign(message_id, SIGNING_PURPOSE)},
    }


def message_id(raw: dict, keys: KeyRing) -> str:
    """The idempotency key of a received message: its signed original id, else its MessageId."""
    original = aws.message_attribute(raw, ORIGINAL_ID)
    signature = aws.message_attribute(raw, ORIGINAL_ID_SIGNATURE)
    if original and signature and keys.verify(original, signature, SIGNING_PURPOSE):
        return original
    return raw["MessageId"]


@dataclass(frozen=True)
class Received:
    message: SourceMessage
    receipt_handle: str

    @property
    def size(self) -> int:
        return len(self.message.body)


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sqs")


def _received(raw: dict, keys: KeyRing) -> Received:
    message = SourceMessage(
        message_id=message_id(raw, keys),
        sent_at_ms=int(raw["Attributes"]["SentTimestamp"]),
        body=raw["Body"],
    )
    return Received(message, raw["ReceiptHandle"])


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
            MessageAttributeNames=[ORIGINAL_ID, ORIGINAL_ID_SIGNATURE],
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
