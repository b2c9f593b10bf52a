"""The dead-letter path: login-queue-dlq, one message per bad record.

A dead letter keeps the original body (unless DEAD_LETTER_KEEP_BODY is off) so that
`redrive` can replay it once its cause is fixed, and carries as message attributes
the reason, the original message id and the original SentTimestamp.
"""

from __future__ import annotations

from collections.abc import Iterable

from tasks.broker import aws
from tasks.pipeline.records import DeadLetter
from tasks.pipeline.source import ORIGINAL_ID

WITHHELD_BODY = "(body withheld: DEAD_LETTER_KEEP_BODY is off)"


class DeadLetterError(RuntimeError):
    """SQS did not take every dead letter."""


def _entry(index: int, letter: DeadLetter, keep_body: bool) -> dict:
    def text(value: str) -> dict:
        return {"DataType": "String", "StringValue": value}

    return {
        "Id": str(index),
        "MessageBody": letter.message.body if keep_body and letter.message.body else WITHHELD_BODY,
        "MessageAttributes": {
            "reason": text(letter.reason[:1000]),
            ORIGINAL_ID: text(letter.message.message_id),
            "sent_timestamp": {"DataType": "Number", "StringValue": str(letter.message.sent_at_ms)},
        },
    }


class DeadLetterQueue:
    def __init__(self, name: str, keep_body: bool = True) -> None:
        self.url = aws.queue_url(name)
        self.keep_body = keep_body
        self.sqs = aws.client("sqs")

    def send(self, letters: Iterable[DeadLetter]) -> int:
        letters = list(letters)
        for chunk in aws.chunks(letters):
            entries = [_entry(i, letter, self.keep_body) for i, letter in enumerate(chunk)]
            response = self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
            if response.get("Failed"):
                codes = sorted({f.get("Code", "?") for f in response["Failed"]})
                raise DeadLetterError(f"{len(response['Failed'])} dead letters refused: {codes}")
        return len(letters)
