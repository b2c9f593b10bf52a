"""`redrive`: move dead letters back once their cause is fixed.

Records (login-queue-dlq -> login-queue): each dead letter goes back with its original
body, message id and SentTimestamp (so its create_date), signed, so a record that was in fact written is
skipped as a duplicate, never written twice. Its entry in the dead_letters ledger is
removed first, so a record that is still bad is dead-lettered again, with its reason,
rather than taken for a duplicate. A message SQS itself moved there (received too often
and never handed off) carries no signed id and goes back under its own MessageId.
Dead letters whose body was withheld cannot be replayed and stay where they are.
A dead letter of a user forgotten after it was sent (tasks.pipeline.erasure) is never
replayed: it is deleted, with its dead_letters entry, and counted.

Each dead letter is read under its own handling, as the fetch reads a source message
(tasks.pipeline.source): originals that are malformed or not signed for the body are
ignored (the message goes back under its own id), and a message that cannot be
replayed at all, or that SQS refuses to take back, stays in the dead-letter queue and
is reported on a line of its own, naming the problem and never a value. The command
moves everything else and exits 0. A reason is the message's own `reason` attribute, which
a producer may have chosen (SQS moves a message with its attributes): it is shown with its
control characters escaped (tasks/ops/terminal.py).

What a run takes (``Filter``): by reason label (``--reason``: a class of
tasks/pipeline/reasons.py, or a group: ``transient`` for batches given up after their
retries, what an outage leaves; ``malformed`` for records that can never be rows) and by
when the letter was dead-lettered (``--since``/``--until``, on its SentTimestamp). A run
takes only letters dead-lettered before it began, and never reads back what it moved:
each letter it receives stays hidden until it ends (renewed every HIDE_SECONDS / 2), and
one dead-lettered again meanwhile, by a pipeline that is running, is newer than the run
and carries an original id the run has moved; both are left for a later run. The run
ends at the first receive that brings no letter older than itself. Letters
not taken are visible again the moment the run ends, however it ends. ``--dry-run``
counts by reason what would move and what would stay, and needs no database.

Batches (``--batches``, login-pipeline-batches-dlq -> login-pipeline-batches): a batch
task that SQS moved aside after BATCH_QUEUE_MAX_RECEIVES receives goes back as the
very task message it was; mask-and-insert is idempotent by message id.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import monotonic, time
from typing import Any

from botocore.exceptions import ClientError

import celeryconfig as config
from tasks.broker import aws
from tasks.ops.terminal import escaped
from tasks.pipeline import erasure, store
from tasks.pipeline.deadletter import TOO_LARGE_BODY, WITHHELD_BODY, calls
from tasks.pipeline.keys import KeyRing
from tasks.pipeline.reasons import labels, redrive_class
from tasks.pipeline.records import SourceMessage
from tasks.pipeline.retry import describe
from tasks.pipeline.source import Unusable, identity, redrive_attributes

MOVED_BY_SQS = "(no reason: moved by SQS after max receives)"
# A dead letter this run received and did not delete stays hidden this long, renewed
# while the run lasts, and is made visible again when it ends (or after this, if killed).
HIDE_SECONDS = 60


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Filter:
    """Which dead letters a redrive takes: any of `reasons` (labels of
    tasks.pipeline.reasons.SELECTABLE; none: every reason), dead-lettered within
    [since_ms, until_ms] (epoch ms of the letter's SentTimestamp: when the pipeline
    dead-lettered it, or, for one SQS moved, when its original was sent)."""

    reasons: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, reason: str | None, sent_ms: int | None) -> bool:
        if self.reasons and not labels(reason) & self.reasons:
            return False
        if self.since_ms is not None and (sent_ms is None or sent_ms < self.since_ms):
            return False
        return self.until_ms is None or (sent_ms is not None and sent_ms <= self.until_ms)

    def __str__(self) -> str:
        parts = [f"--reason {name}" for name in sorted(self.reasons)]
        parts += [f"--since {_iso(self.since_ms)}"] if self.since_ms is not None else []
        parts += [f"--until {_iso(self.until_ms)}"] if self.until_ms is not None else []
        return " ".join(parts)


def _by_reason(counts: Counter[str | None]) -> list[str]:
    return [
        f"  {count:>6}  {redrive_class(reason):<16}  {escaped(reason or MOVED_BY_SQS)}"
        for reason, count in counts.most_common()
    ]


@dataclass
class RedriveReport:
    source: str
    target: str
    dry_run: bool = False
    where: str = ""  # the filter, as given on the command line
    moved: int = 0  # in a dry run: would move
    kept: int = 0
    reasons: Counter[str | None] = field(default_factory=Counter)  # of those moved (or kept), by reason
    left: Counter[str | None] = field(default_factory=Counter)  # not matching the filter, by reason
    later: int = 0  # dead-lettered since the run began, or again after this run moved them
    problems: list[str] = field(default_factory=list)
    forgotten: int = 0  # dead letters of forgotten users, sent before the erasure: deleted

    def __str__(self) -> str:
        move, keep, leave = ("would move", "keep", "would leave") if self.dry_run else ("moved", "kept", "left")
        lines = [
            f"{move} {self.moved} messages from {self.source} to {self.target}, {keep} {self.kept} (body withheld)"
        ]
        lines += _by_reason(self.reasons)
        if self.left:
            lines.append(f"{leave} {sum(self.left.values())} not matching {self.where}:")
            lines += _by_reason(self.left)
        if self.later:
            lines.append(
                f"{leave} {self.later} dead-lettered since this run began (or again after it moved them):"
                " a later run takes them"
            )
        lines += [f"not moved: {escaped(problem)}" for problem in self.problems]
        if self.forgotten:
            lines.append(f"dropped {self.forgotten} events of forgotten users (sent before their erasure)")
        return "\n".join(lines)


class _Held:
    """The dead letters a run received and has not deleted: hidden while it runs (never
    read twice), visible again as soon as it ends, whatever it ends with."""

    def __init__(self, sqs: Any, url: str) -> None:
        self.sqs, self.url = sqs, url
        self.handles: dict[str, str] = {}  # MessageId -> its latest ReceiptHandle
        self.seen: set[str] = set()  # every MessageId received, deleted ones too
        self.hidden_at = monotonic()

    def receive(self) -> list[dict]:
        """The next dead letters this run has not received before (none: the end)."""
        self._keep_hidden()
        messages = self.sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["SentTimestamp"],
            VisibilityTimeout=HIDE_SECONDS,
            WaitTimeSeconds=1,
        ).get("Messages", [])
        fresh = [m for m in messages if m["MessageId"] not in self.seen]
        self.handles.update((m["MessageId"], m["ReceiptHandle"]) for m in messages)
        self.seen.update(m["MessageId"] for m in messages)
        return fresh

    def delete(self, messages: list[dict]) -> None:
        for chunk in aws.chunks(messages):
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)]
            self.sqs.delete_message_batch(QueueUrl=self.url, Entries=entries)
            for m in chunk:
                self.handles.pop(m["MessageId"], None)

    def _set_visibility(self, seconds: int) -> None:
        for chunk in aws.chunks(list(self.handles.values())):
            entries = [{"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": seconds} for i, h in enumerate(chunk)]
            self.sqs.change_message_visibility_batch(QueueUrl=self.url, Entries=entries)

    def _keep_hidden(self) -> None:
        if monotonic() - self.hidden_at > HIDE_SECONDS / 2:
            self._set_visibility(HIDE_SECONDS)
            self.hidden_at = monotonic()

    def release(self) -> None:
        self._set_visibility(0)
        self.handles.clear()


def _sent_ms(message: dict) -> int | None:
    value = (message.get("Attributes") or {}).get("SentTimestamp")
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _original_id(message: dict, keys: KeyRing) -> str | None:
    try:
        return identity(message, keys)[0]
    except Exception:  # reported when the letter is read to be moved (_originals)
        return None


def _delete_sent(held: _Held, messages: list[dict], response: dict) -> int:
    sent = {int(e["Id"]) for e in response.get("Successful", [])}
    done = [m for i, m in enumerate(messages) if i in sent]
    held.delete(done)
    return len(done)


def redrive(
    keys: KeyRing, limit: int | None = None, dry_run: bool = False, where: Filter | None = None
) -> RedriveReport:
    """Replay record dead letters into login-queue: those `where` picks, dead-lettered
    before the run began, each at most once a run; the others stay, untouched."""
    where = where or Filter()
    sqs = aws.client("sqs")
    dlq, source = aws.queue_url(config.DEAD_LETTER_QUEUE), aws.queue_url(config.SOURCE_QUEUE)
    report = RedriveReport(config.DEAD_LETTER_QUEUE, config.SOURCE_QUEUE, dry_run, str(where))
    began_ms, held, moved_ids, taken = int(time() * 1000), _Held(sqs, dlq), set[str](), 0
    conn = None if dry_run else store.connect(config.database_url())
    try:
        older = True
        while older and (limit is None or taken < limit):
            messages = held.receive()
            sents = [_sent_ms(m) for m in messages]
            later = [sent is not None and sent >= began_ms for sent in sents]
            # A receive that brings nothing older than the run (or nothing) is its last:
            # a pipeline that keeps dead-lettering would otherwise keep it going.
            older = not all(later)
            picked = []
            for m, sent, is_later in zip(messages, sents, later, strict=True):
                reason = aws.message_attribute(m, "reason")
                if is_later or (moved_ids and _original_id(m, keys) in moved_ids):
                    report.later += 1
                elif not where.matches(reason, sent):
                    report.left[reason] += 1
                else:
                    picked.append(m)
            if limit is not None:
                picked = picked[: limit - taken]  # the rest: visible again at the end
            taken += len(picked)
            report.reasons.update(aws.message_attribute(m, "reason") for m in picked)
            replayable = [m for m in picked if m.get("Body") not in (WITHHELD_BODY, TOO_LARGE_BODY)]
            report.kept += len(picked) - len(replayable)
            if conn is None:
                report.moved += len(replayable)
            elif replayable:
                pairs = _without_forgotten(held, conn, keys, _originals(replayable, keys, report), report)
                moved_ids.update(o.message_id for _, o in pairs)
                report.moved += _move(held, conn, keys, source, pairs, report)
    finally:
        if conn is not None:
            conn.close()
        held.release()
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


def _without_forgotten(
    held: _Held,
    conn: store.Connection,
    keys: KeyRing,
    pairs: list[tuple[dict, SourceMessage]],
    report: RedriveReport,
) -> list[tuple[dict, SourceMessage]]:
    """The dead letters to replay: those of users forgotten after they were sent are
    deleted here, with their dead_letters entries, and counted."""
    users = [erasure.user_of(o.body) for _, o in pairs]
    with conn, conn.cursor() as cur:
        erased = erasure.erased_at(cur, keys, [u for u in users if u])
        gone = [p for p, u in zip(pairs, users, strict=True) if erasure.is_forgotten(u, p[1].sent_at_ms, erased)]
        if gone:
            cur.execute("DELETE FROM dead_letters WHERE message_id = ANY(%s)", ([o.message_id for _, o in gone],))
    if gone:
        held.delete([m for m, _ in gone])
        report.forgotten += len(gone)
    return [p for p in pairs if p not in gone]


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
    held: _Held,
    conn: store.Connection,
    keys: KeyRing,
    source: str,
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
    return _delete_sent(held, [m for m, _ in pairs], _send(held.sqs, source, entries, report))


def redrive_batches(limit: int | None = None, dry_run: bool = False) -> RedriveReport:
    """Replay batch task messages from the batch dead-letter queue into the batch queue."""
    sqs, prefix = aws.client("sqs"), config.CELERY_QUEUE_PREFIX
    names = (f"{prefix}{config.BATCH_QUEUE}-dlq", f"{prefix}{config.BATCH_QUEUE}")
    dlq, target = aws.queue_url(names[0]), aws.queue_url(names[1])
    report, held, taken = RedriveReport(*names, dry_run), _Held(sqs, dlq), 0
    try:
        while limit is None or taken < limit:
            messages = held.receive()[: None if limit is None else limit - taken]
            if not messages:
                break
            taken += len(messages)
            report.reasons[None] += len(messages)
            if dry_run:
                report.moved += len(messages)
                continue
            entries = [{"Id": str(i), "MessageBody": m["Body"]} for i, m in enumerate(messages)]
            report.moved += _delete_sent(held, messages, sqs.send_message_batch(QueueUrl=target, Entries=entries))
    finally:
        held.release()
    return report
