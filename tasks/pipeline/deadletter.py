"""The dead-letter path: login-queue-dlq, one message per bad record.

A dead letter keeps the original body (unless DEAD_LETTER_KEEP_BODY is off) so that
`redrive` can replay it once its cause is fixed, and carries as message attributes
the reason, the original SentTimestamp and the original message id, signed
(tasks.pipeline.source) so that `redrive` can trust it.
"""

from __future__ import annotations

from collections.abc import Iterable

from tasks.broker import aws
from tasks.pipeline.keys import KeyRing
from tasks.pipeline.records import DeadLetter
from tasks.pipeline.source import redrive_attributes

WITHHELD_BODY = "(body withheld: DEAD_LETTER_KEEP_BODY is off)"


class DeadLetterError(RuntimeError):
    """SQS did not take every dead letter."""


def _entry(index: int, letter: DeadLetter, keep_body: bool, keys: KeyRing) -> dict:
    return {
        "Id": str(index),
        "MessageBody": letter.message.body if keep_body and letter.message.body else WITHHELD_BODY,
        "MessageAttributes": {
            "reason": {"DataType": "String", "StringValue": letter.reason[:1000]},
            "sent_timestamp": {"DataType": "Number", "StringValue": str(letter.message.sent_at_ms)},
            **redrive_attributes(letter.message.message_id, keys),
        },
    }


class DeadLetterQueue:
    def __init__(self, name: str, keys: KeyRing, keep_body: bool = True) -> None:
        self.url = aws.queue_url(name)
        self.keys = keys
        self.keep_body = keep_body
        self.sqs = aws.client("sqs")

    def send(self, letters: Iterable[DeadLetter]) -> int:
        letters = list(letters)
        for chunk in aws.chunks(letters):
            entries = [_entry(i, letter, self.keep_body, self.keys) for i, letter in enumerate(chunk)]
            response = self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
            if response.get("Failed"):
                codes = sorted({f.get("Code", "?") for f in response["Failed"]})
                raise DeadLetterError(f"{len(response['Failed'])} dead letters refused: {codes}")
        return len(letters)
