"""The dead-letter path: login-queue-dlq, one message per bad record.

A dead letter keeps the original body (unless DEAD_LETTER_KEEP_BODY is off) so that
`redrive` can replay it once its cause is fixed, and carries as message attributes
the reason and the original message id and SentTimestamp, signed with the body
(tasks.pipeline.source) so that `redrive` can trust them.
"""

from __future__ import annotations

from collections.abc import Iterable

from tasks.broker import aws
from tasks.pipeline.keys import KeyRing
from tasks.pipeline.records import DeadLetter
from tasks.pipeline.source import redrive_attributes

WITHHELD_BODY = "(body withheld: DEAD_LETTER_KEEP_BODY is off)"
TOO_LARGE_BODY = "(body withheld: too large for a dead letter)"
# SendMessageBatch takes at most 1 MiB in all; a call is kept well under it, and a body
# that could not go in a call of its own beside its attributes is withheld.
CALL_BUDGET = 1_000_000
MAX_BODY = CALL_BUDGET - 16_384


class DeadLetterError(RuntimeError):
    """SQS did not take every dead letter."""


def _body(letter: DeadLetter, keep_body: bool) -> str:
    if not (keep_body and letter.message.body):
        return WITHHELD_BODY
    return letter.message.body if len(letter.message.body.encode()) <= MAX_BODY else TOO_LARGE_BODY


def _size(entry: dict) -> int:
    attributes = sum(len(k) + len(v["StringValue"]) + 16 for k, v in entry["MessageAttributes"].items())
    return len(entry["MessageBody"].encode()) + attributes


def calls(entries: list[dict]) -> list[list[dict]]:
    """Entries grouped for SendMessageBatch: at most ten, and at most CALL_BUDGET bytes."""
    groups: list[list[dict]] = []
    size = 0
    for entry in entries:
        if not groups or len(groups[-1]) == 10 or size + _size(entry) > CALL_BUDGET:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += _size(entry)
    return groups


def _entry(index: int, letter: DeadLetter, keep_body: bool, keys: KeyRing) -> dict:
    return {
        "Id": str(index),
        "MessageBody": _body(letter, keep_body),
        "MessageAttributes": {
            "reason": {"DataType": "String", "StringValue": letter.reason[:1000]},
            **redrive_attributes(letter.message, keys),
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
        entries = [_entry(i, letter, self.keep_body, self.keys) for i, letter in enumerate(letters)]
        for call in calls(entries):
            response = self.sqs.send_message_batch(QueueUrl=self.url, Entries=call)
            if response.get("Failed"):
                codes = sorted({f.get("Code", "?") for f in response["Failed"]})
                raise DeadLetterError(f"{len(response['Failed'])} dead letters refused: {codes}")
        return len(letters)
