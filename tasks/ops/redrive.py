"""`redrive`: move dead letters back once their cause is fixed.

Records (login-queue-dlq -> login-queue): each dead letter goes back with its original
body, message id and SentTimestamp (so its create_date), signed, so a record that was in fact written is
skipped as a duplicate, never written twice. Its entry in the dead_letters ledger is
removed first, so a record that is still bad is dead-lettered again, with its reason,
rather than taken for a duplicate. A message SQS itself moved there (received too often
and never handed off) carries no signed id and goes back under its own MessageId.
Dead letters whose body was withheld cannot be replayed and stay where they are.

Each dead letter is read under its own handling, as the fetch reads a source message
(tasks.pipeline.source): originals that are malformed or not signed for the body are
ignored (the message goes back under its own id), and a message that cannot be
replayed at all, or that SQS refuses to take back, stays in the dead-letter queue and
is reported on a line of its own, naming the problem and never a value. The command
moves everything else and exits 0.

Batches (``--batches``, login-pipeline-batches-dlq -> login-pipeline-batches): a batch
task that SQS moved aside after BATCH_QUEUE_MAX_RECEIVES receives goes back as the
very task message it was; mask-and-insert is idempotent by message id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

import celeryconfig as config
from tasks.broker import aws
from tasks.pipeline import store
from tasks.pipeline.deadletter import TOO_LARGE_BODY, WITHHELD_BODY, calls
from tasks.pipeline.keys import KeyRing
from tasks.pipeline.records import SourceMessage
from tasks.pipeline.retry import describe
from tasks.pipeline.source import Unusable, identity, redrive_attributes

MOVED_BY_SQS = "(no reason: moved by SQS after max receives)"


@dataclass
class RedriveReport:
    source: str
    target: str
    dry_run: bool = False
    moved: int = 0  # in a dry run: would move
    kept: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        move, keep = ("would move", "keep") if self.dry_run else ("moved", "kept")
        lines = [
            f"{move} {self.moved} messages from {self.source} to {self.target}, {keep} {self.kept} (body withheld)"
        ]
        lines += [f"  {count:>6}  {reason}" for reason, count in self.reasons.most_common()]
        lines += [f"not moved: {problem}" for problem in self.problems]
        return "\n".join(lines)


def _received(sqs: Any, url: str, limit: int | None, hide_for: int) -> Iterator[list[dict]]:
    """Messages of a queue, ten at a time, until it is empty or `limit` were read."""
    seen = 0
    while limit is None or seen < limit:
        count = 10 if limit is None else min(10, limit - seen)
        messages = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=count,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["SentTimestamp"],
            VisibilityTimeout=hide_for,
        ).get("Messages", [])
        if not messages:
            return
        seen += len(messages)
        yield messages


def _hand_back(sqs: Any, url: str, messages: list[dict]) -> None:
    """Make messages a dry run looked at visible again at once."""
    for chunk in aws.chunks(messages):
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0} for i, m in enumerate(chunk)
        ]
        sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)


def _delete_sent(sqs: Any, url: str, messages: list[dict], response: dict) -> int:
    sent = {int(e["Id"]) for e in response.get("Successful", [])}
    done = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages) if i in sent]
    if done:
        sqs.delete_message_batch(QueueUrl=url, Entries=done)
    return len(done)


def redrive(keys: KeyRing, limit: int | None = None, dry_run: bool = False) -> RedriveReport:
    """Replay record dead letters into login-queue."""
    sqs = aws.client("sqs")
    dlq, source = aws.queue_url(config.DEAD_LETTER_QUEUE), aws.queue_url(config.SOURCE_QUEUE)
    report, looked_at = RedriveReport(config.DEAD_LETTER_QUEUE, config.SOURCE_QUEUE, dry_run), []
    conn = store.connect(config.database_url())
    try:
        for messages in _received(sqs, dlq, limit, 60 if dry_run else 30):
            report.reasons.update(aws.message_attribute(m, "reason") or MOVED_BY_SQS for m in messages)
            replayable = [m for m in messages if m.get("Body") not in (WITHHELD_BODY, TOO_LARGE_BODY)]
            report.kept += len(messages) - len(replayable)
            if dry_run:
                looked_at += messages
                report.moved += len(replayable)
            elif replayable:
                report.moved += _move(sqs, conn, keys, source, dlq, _originals(replayable, keys, report), report)
    finally:
        conn.close()
        _hand_back(sqs, dlq, looked_at)
    return report


def _originals(messages: list[dict], keys: KeyRing, report: RedriveReport) -> list[tuple[dict, SourceMessage]]:
    """Each dead letter with the message it goes back as; one that cannot go back is
    reported and stays in the dead-letter queue."""
    originals = []
    for m in messages:
        try:
            if not isinstance(m.get("Body"), str):
                raise Unusable("message body is not text")
            originals.append((m, SourceMessage(*identity(m, keys), m["Body"])))
        except Unusable as exc:
            report.problems.append(str(exc))
        except Exception as exc:
            report.problems.append(f"message could not be read: {describe(exc)}")
    return originals


def _send(sqs: Any, url: str, entries: list[dict], report: RedriveReport) -> dict:
    """SendMessageBatch in calls that fit SQS's limits; what SQS refused is reported."""
    successful: list[dict] = []
    for call in calls(entries):
        try:
            response = sqs.send_message_batch(QueueUrl=url, Entries=call)
        except ClientError as exc:
            report.problems += [f"SQS refused to take it back ({describe(exc)})"] * len(call)
            continue
        successful += response.get("Successful", [])
        report.problems += [f"SQS refused to take it back ({f.get('Code', '?')})" for f in response.get("Failed", [])]
    return {"Successful": successful}


def _move(
    sqs: Any,
    conn: store.Connection,
    keys: KeyRing,
    source: str,
    dlq: str,
    pairs: list[tuple[dict, SourceMessage]],
    report: RedriveReport,
) -> int:
    if not pairs:
        return 0
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM dead_letters WHERE message_id = ANY(%s)", ([o.message_id for _, o in pairs],))
    entries = [
        {"Id": str(i), "MessageBody": o.body, "MessageAttributes": redrive_attributes(o, keys)}
        for i, (_, o) in enumerate(pairs)
    ]
    return _delete_sent(sqs, dlq, [m for m, _ in pairs], _send(sqs, source, entries, report))


def redrive_batches(limit: int | None = None, dry_run: bool = False) -> RedriveReport:
    """Replay batch task messages from the batch dead-letter queue into the batch queue."""
    sqs, prefix = aws.client("sqs"), config.CELERY_QUEUE_PREFIX
    names = (f"{prefix}{config.BATCH_QUEUE}-dlq", f"{prefix}{config.BATCH_QUEUE}")
    dlq, target = aws.queue_url(names[0]), aws.queue_url(names[1])
    report, looked_at = RedriveReport(*names, dry_run), []
    try:
        for messages in _received(sqs, dlq, limit, 60 if dry_run else 30):
            report.reasons[MOVED_BY_SQS] += len(messages)
            if dry_run:
                looked_at += messages
                report.moved += len(messages)
                continue
            entries = [{"Id": str(i), "MessageBody": m["Body"]} for i, m in enumerate(messages)]
            report.moved += _delete_sent(sqs, dlq, messages, sqs.send_message_batch(QueueUrl=target, Entries=entries))
    finally:
        _hand_back(sqs, dlq, looked_at)
    return report
