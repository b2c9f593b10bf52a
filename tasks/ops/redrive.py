"""`redrive`: move dead letters back to login-queue once their cause is fixed.

Each dead letter goes back with its original body and its original message id (the
``source_message_id`` attribute), so a record that was in fact written is skipped as a
duplicate, never written twice. Its entry in the dead_letters ledger is removed first,
so a record that is still bad is dead-lettered again, with its reason, rather than
taken for a duplicate. Dead letters whose body was withheld cannot be replayed and
stay where they are.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import celeryconfig as config
from tasks.broker import aws
from tasks.pipeline import store
from tasks.pipeline.deadletter import WITHHELD_BODY
from tasks.pipeline.source import ORIGINAL_ID


@dataclass
class RedriveReport:
    moved: int = 0
    kept: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def __str__(self) -> str:
        lines = [f"moved {self.moved} dead letters to {config.SOURCE_QUEUE}, kept {self.kept} (body withheld)"]
        lines += [f"  {count:>6}  {reason}" for reason, count in self.reasons.most_common()]
        return "\n".join(lines)


def redrive(limit: int | None = None, dry_run: bool = False) -> RedriveReport:
    sqs = aws.client("sqs")
    dlq, source = aws.queue_url(config.DEAD_LETTER_QUEUE), aws.queue_url(config.SOURCE_QUEUE)
    report, seen, looked_at = RedriveReport(), 0, []
    conn = store.connect(config.database_url())
    try:
        while limit is None or seen < limit:
            count = 10 if limit is None else min(10, limit - seen)
            messages = sqs.receive_message(
                QueueUrl=dlq,
                MaxNumberOfMessages=count,
                MessageAttributeNames=["All"],
                VisibilityTimeout=30 if not dry_run else 60,
            ).get("Messages", [])
            if not messages:
                break
            seen += len(messages)
            for m in messages:
                report.reasons[
                    aws.message_attribute(m, "reason") or "(no reason: moved by SQS after max receives)"
                ] += 1
            replayable = [m for m in messages if m["Body"] != WITHHELD_BODY]
            report.kept += len(messages) - len(replayable)
            if dry_run:
                looked_at += messages
            elif replayable:
                _move(sqs, conn, source, dlq, replayable)
                report.moved += len(replayable)
    finally:
        conn.close()
        for chunk in aws.chunks(looked_at):  # a dry run hands them back at once
            sqs.change_message_visibility_batch(
                QueueUrl=dlq,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for i, m in enumerate(chunk)
                ],
            )
    return report


def _move(sqs, conn: store.Connection, source: str, dlq: str, messages: list[dict]) -> None:
    ids = [aws.message_attribute(m, ORIGINAL_ID) or m["MessageId"] for m in messages]
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM dead_letters WHERE message_id = ANY(%s)", (ids,))
    entries = [
        {
            "Id": str(i),
            "MessageBody": m["Body"],
            "MessageAttributes": {ORIGINAL_ID: {"DataType": "String", "StringValue": mid}},
        }
        for i, (m, mid) in enumerate(zip(messages, ids, strict=True))
    ]
    response = sqs.send_message_batch(QueueUrl=source, Entries=entries)
    sent = {int(e["Id"]) for e in response.get("Successful", [])}
    done = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages) if i in sent]
    if done:
        sqs.delete_message_batch(QueueUrl=dlq, Entries=done)
