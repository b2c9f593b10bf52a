"""`forget`: erase users, and prove it with an audit that names no one.

For a set of erasure requests (user id and reason), in this order:

1. a tombstone per user (tasks.pipeline.erasure: the keyed hash and the erasure time),
   written under the erasure lock, so that every batch in flight commits first and
   every later batch, retry or redrive drops the user's events sent before the erasure;
2. the users' rows in user_logins;
3. their dead letters in login-queue-dlq (matched by the user id of the body) and their
   entries in dead_letters;
4. their events in the batch dead-letter queue: a task message holding only their
   events is deleted, one holding other users' events too is sent again without theirs;
5. one erasure_audit row per user through record_erasure(): the keyed hash, the reason,
   who (the database user) and when (set by the database), and the counts.

SQS cannot delete by content: each dead-letter queue is read in one bounded pass
(`scan_limit` messages), the messages that match deleted, the others kept hidden until
the pass ends and then made visible again. What the pass cannot reach (messages in
flight, received by someone else, or beyond the limit) is counted and reported; the
whole command is safe to run again. Dead letters whose body was withheld hold no body
to match and no PII; they are counted as not checked. Events still in login-queue are
not touched: those sent before the erasure are dropped by the batch that takes them,
and those sent after it are new data.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import celeryconfig as config
from tasks.broker import aws
from tasks.ops.recovery import RecoveryRefused, has_visible_text
from tasks.pipeline import store
from tasks.pipeline.deadletter import TOO_LARGE_BODY, WITHHELD_BODY
from tasks.pipeline.erasure import ERASURE_LOCK, MAX_USER_ID, normalised, subject_hash, user_of
from tasks.pipeline.keys import KeyRing
from tasks.pipeline.source import Unusable, identity

HIDE_FOR = 300  # seconds a pass keeps what it read hidden (made visible again when it ends)
SCAN_LIMIT = 10_000
LOCK_TIMEOUT_MS = 30_000


class ErasureRefused(RecoveryRefused):
    """An erasure request that cannot be carried out as given."""


@dataclass(frozen=True)
class Request:
    user_id: str
    reason: str


@dataclass
class ErasureReport:
    users: int = 0
    rows: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    queued: Counter[str] = field(default_factory=Counter)
    batch_events: Counter[str] = field(default_factory=Counter)
    resent: int = 0  # batch messages sent again without the forgotten users' events
    withheld: int = 0  # dead letters with no body to match (and no PII)
    unreadable: int = 0  # batch messages that could not be decoded
    unreached: Counter[str] = field(default_factory=Counter)  # by queue

    def __str__(self) -> str:
        lines = [
            f"forgot {self.users} users: deleted {self.rows.total()} rows, {self.dead_letters.total()} dead_letters"
            f" entries, {self.queued.total()} dead letters, {self.batch_events.total()} events of set-aside"
            f" batches ({self.resent} batch messages sent again without them)"
        ]
        lines += [
            f"not reached: {n} messages of {queue} (in flight or beyond the scan limit);"
            " run forget again once they are visible (safe to repeat)"
            for queue, n in sorted(self.unreached.items())
            if n
        ]
        if self.withheld:
            lines.append(f"not checked: {self.withheld} dead letters whose body was withheld (they hold no body)")
        if self.unreadable:
            lines.append(f"not checked: {self.unreadable} batch messages that are not task messages")
        return "\n".join(lines)


def read_requests(lines: Iterable[str], default_reason: str | None) -> list[Request]:
    """Requests from a file: one a line, `USER_ID` or `USER_ID<TAB>REASON`; blank lines skipped."""
    requests = []
    for number, line in enumerate(lines, 1):
        user_id, _, reason = line.rstrip("\r\n").partition("\t")
        if not user_id.strip():
            continue
        reason = reason or default_reason or ""
        if not has_visible_text(reason):
            raise ErasureRefused(f"line {number}: a reason with visible text is required (a tab, then the reason)")
        requests.append(Request(user_id, reason))
    return requests


def check(requests: list[Request]) -> None:
    if not requests:
        raise ErasureRefused("no user to forget")
    for request in requests:
        if not request.user_id.strip():
            raise ErasureRefused("a user id is required")
        if len(request.user_id) > MAX_USER_ID:
            raise ErasureRefused(f"a user id is at most {MAX_USER_ID} characters long")
        if not has_visible_text(request.reason):
            raise ErasureRefused("a reason with visible text is required for every erasure")


def forget(keys: KeyRing, requests: list[Request], scan_limit: int = SCAN_LIMIT) -> ErasureReport:
    """Erase these users everywhere the pipeline keeps them (the module's docstring)."""
    check(requests)
    requests = [Request(normalised(r.user_id), r.reason) for r in requests]
    users = {r.user_id for r in requests}
    report = ErasureReport(users=len(users))
    hashes = {user: subject_hash(keys, user) for user in users}
    conn = store.connect(config.database_url())
    try:
        write_tombstones(conn, hashes.values())
        report.rows.update(delete_rows(conn, users))
        sqs = aws.client("sqs")
        sweep_dead_letters(sqs, conn, keys, users, report, scan_limit)
        sweep_batches(sqs, users, report, scan_limit)
        audit(conn, requests, hashes, report)
    finally:
        conn.close()
    return report


def write_tombstones(conn: store.Connection, hashes: Iterable[str]) -> None:
    """Tombstones at the erasure time; waits for the batches in flight (ERASURE_LOCK)."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT set_config('lock_timeout', %s, true)", (str(LOCK_TIMEOUT_MS),))
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (ERASURE_LOCK,))
        cur.execute(
            "INSERT INTO erasure_tombstones AS t (subject_hash, erased_at) SELECT unnest(%s::text[]), now()"
            " ON CONFLICT (subject_hash) DO UPDATE SET erased_at = greatest(t.erased_at, EXCLUDED.erased_at)",
            (list(hashes),),
        )


def delete_rows(conn: store.Connection, users: set[str]) -> Counter[str]:
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM user_logins WHERE user_id = ANY(%s) RETURNING user_id", (list(users),))
        return Counter(row[0] for row in cur.fetchall())


def _receive(sqs: Any, url: str, count: int) -> list[dict]:
    return sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=count,
        WaitTimeSeconds=1,  # long polling: an empty answer means nothing visible is left
        VisibilityTimeout=HIDE_FOR,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["SentTimestamp"],
    ).get("Messages", [])


def _set_visible(sqs: Any, url: str, messages: list[dict]) -> None:
    for chunk in aws.chunks(messages):
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0} for i, m in enumerate(chunk)
        ]
        sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)


def _delete(sqs: Any, url: str, messages: list[dict]) -> None:
    for chunk in aws.chunks(messages):
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)]
        sqs.delete_message_batch(QueueUrl=url, Entries=entries)


def sweep(sqs: Any, queue: str, remove: Callable[[list[dict]], list[dict]], report: ErasureReport, limit: int) -> None:
    """One bounded pass over a queue: `remove` is given each page of messages and returns
    those to delete (having done what must come first); the rest stay hidden until the
    pass ends, then are made visible again. What the pass could not read is counted."""
    url = aws.queue_url(queue, sqs)
    in_flight = aws.queue_depth(queue, sqs)["in_flight"]
    kept: list[dict] = []
    seen = 0
    try:
        while seen < limit and (messages := _receive(sqs, url, min(10, limit - seen))):
            seen += len(messages)
            done = remove(messages)
            _delete(sqs, url, done)
            kept += [m for m in messages if m not in done]
        report.unreached[queue] += in_flight + aws.queue_depth(queue, sqs)["visible"]
    finally:
        _set_visible(sqs, url, kept)


def sweep_dead_letters(
    sqs: Any, conn: store.Connection, keys: KeyRing, users: set[str], report: ErasureReport, limit: int
) -> None:
    """The users' dead letters, and their entries in dead_letters (removed first)."""

    def remove(messages: list[dict]) -> list[dict]:
        theirs: dict[str, str] = {}  # original message id -> user
        done = []
        for m in messages:
            body = m.get("Body")
            if body in (WITHHELD_BODY, TOO_LARGE_BODY):
                report.withheld += 1
            elif (user := user_of(body)) in users:
                theirs[_original_id(m, keys)] = str(user)
                done.append(m)
        report.queued.update(theirs.values())
        if theirs:
            with conn, conn.cursor() as cur:
                cur.execute("DELETE FROM dead_letters WHERE message_id = ANY(%s) RETURNING message_id", (list(theirs),))
                report.dead_letters.update(theirs[row[0]] for row in cur.fetchall())
        return done

    sweep(sqs, config.DEAD_LETTER_QUEUE, remove, report, limit)


def _original_id(message: dict, keys: KeyRing) -> str:
    try:
        return identity(message, keys)[0]
    except Unusable:
        return str(message.get("MessageId"))


def sweep_batches(sqs: Any, users: set[str], report: ErasureReport, limit: int) -> None:
    """The users' events in batch task messages that SQS set aside."""
    queue = f"{config.CELERY_QUEUE_PREFIX}{config.BATCH_QUEUE}-dlq"
    url = aws.queue_url(queue, sqs)

    def remove(messages: list[dict]) -> list[dict]:
        done = []
        for m in messages:
            task = TaskMessage.decode(m.get("Body"))
            if task is None:
                report.unreadable += 1
                continue
            theirs = [user for user in task.users() if user in users]
            if not theirs:
                continue
            rest = task.without(users)
            if rest is not None:
                sqs.send_message(QueueUrl=url, MessageBody=rest)
                report.resent += 1
            report.batch_events.update(theirs)
            done.append(m)
        return done

    sweep(sqs, queue, remove, report, limit)


@dataclass
class TaskMessage:
    """A mask-and-insert task message as kombu's SQS transport sends it: base64 of a JSON
    envelope whose body is base64 of JSON [args, kwargs, embed], args[0] the batch."""

    envelope: dict[str, Any]
    body: list[Any]

    @classmethod
    def decode(cls, raw: object) -> TaskMessage | None:
        try:
            envelope = json.loads(base64.b64decode(str(raw), validate=True))
            body = json.loads(base64.b64decode(envelope["body"], validate=True))
            if not (isinstance(body, list) and body and isinstance(body[0], list) and isinstance(body[0][0], list)):
                return None
            return cls(envelope, body)
        except (binascii.Error, ValueError, KeyError, TypeError, IndexError):
            return None

    def entries(self) -> list[Any]:
        return list(self.body[0][0])

    def users(self) -> list[str | None]:
        return [_entry_user(entry) for entry in self.entries()]

    def without(self, users: set[str]) -> str | None:
        """This message again without those users' events (None: nothing left)."""
        rest = [entry for entry in self.entries() if _entry_user(entry) not in users]
        if not rest:
            return None
        body = [[rest, *self.body[0][1:]], *self.body[1:]]
        envelope = {**self.envelope, "body": base64.b64encode(json.dumps(body).encode()).decode()}
        headers = envelope.get("headers")
        if isinstance(headers, dict) and "argsrepr" in headers:
            envelope["headers"] = {**headers, "argsrepr": f"batch of {len(rest)} messages"}
        return base64.b64encode(json.dumps(envelope).encode()).decode()


def _entry_user(entry: object) -> str | None:
    return user_of(entry[2]) if isinstance(entry, list) and len(entry) == 3 else None


def audit(conn: store.Connection, requests: list[Request], hashes: dict[str, str], report: ErasureReport) -> None:
    """One erasure_audit row per request; the database sets who and when."""
    unreached = report.unreached.total()
    with conn, conn.cursor() as cur:
        for request in requests:
            user = request.user_id
            cur.execute(
                "SELECT public.record_erasure(%s, %s, %s, %s, %s, %s, %s)",
                (
                    hashes[user],
                    request.reason,
                    report.rows[user],
                    report.dead_letters[user],
                    report.queued[user],
                    report.batch_events[user],
                    unreached,
                ),
            )
