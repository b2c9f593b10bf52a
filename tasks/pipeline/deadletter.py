"""The dead-letter path: login-queue-dlq, one message per bad record.

A dead letter keeps the original body (unless DEAD_LETTER_KEEP_BODY is off) so that
`redrive` can replay it once its cause is fixed, and carries as message attributes
the reason and the original message id and SentTimestamp, signed with the body
(tasks.pipeline.source) so that `redrive` can trust them.

A body is never withheld for its size. A letter goes in a SendMessageBatch call of its
own when it is large, and fits SQS's 1 MiB unless its body was within its attributes'
size of that limit; such a message is never made a dead letter here (`fits`): the fetch
leaves it in login-queue for SQS's own redrive policy (tasks.pipeline.oversize).
"""

from __future__ import annotations

from collections.abc import Iterable

from tasks.broker import aws
from tasks.pipeline.keys import KeyRing
from tasks.pipeline.records import DeadLetter
from tasks.pipeline.source import redrive_attributes

WITHHELD_BODY = "(body withheld: DEAD_LETTER_KEEP_BODY is off)"
# What earlier versions put in place of a body too large for a dead letter: `redrive`
# leaves such letters where they are.
TOO_LARGE_BODY = "(body withheld: too large for a dead letter)"
# SendMessageBatch takes at most 1 MiB in all, bodies and attributes as SQS counts them.
CALL_BUDGET = 1_048_576
ATTRIBUTE_OVERHEAD = 16  # an attribute's data type, and a margin


class DeadLetterError(RuntimeError):
    """SQS did not take every dead letter."""


def _body(letter: DeadLetter, keep_body: bool) -> str:
    return letter.message.body if keep_body and letter.message.body else WITHHELD_BODY


def _bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _size(entry: dict) -> int:
    """At least what SQS counts of an entry: its body, and each attribute's name, type and value."""
    attributes = entry["MessageAttributes"].items()
    return _bytes(entry["MessageBody"]) + sum(
        _bytes(k) + _bytes(v["StringValue"]) + ATTRIBUTE_OVERHEAD for k, v in attributes
    )


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

    def fits(self, letter: DeadLetter) -> bool:
        """Whether SQS takes this dead letter, its body and attributes together."""
        return _size(_entry(0, letter, self.keep_body, self.keys)) <= CALL_BUDGET

    def send(self, letters: Iterable[DeadLetter]) -> int:
        letters = list(letters)
        entries = [_entry(i, letter, self.keep_body, self.keys) for i, letter in enumerate(letters)]
        for call in calls(entries):
            response = self.sqs.send_message_batch(QueueUrl=self.url, Entries=call)
            if response.get("Failed"):
                codes = sorted({f.get("Code", "?") for f in response["Failed"]})
                raise DeadLetterError(f"{len(response['Failed'])} dead letters refused: {codes}")
        return len(letters)
