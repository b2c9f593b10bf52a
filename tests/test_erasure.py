"""Erasure end to end: `forget` while a worker runs, the tombstone against redrive and
retried batches, and the roles, each tried as its real login."""

from __future__ import annotations

import base64
import json
import re
import sys
import time
from collections.abc import Iterator
from datetime import date

import psycopg2
import pytest

import celeryconfig as config
from tasks.broker import aws
from tasks.pipeline import erasure, store
from tasks.pipeline.records import SourceMessage
from tasks.pipeline.service import load_key_ring_checked
from tasks.pipeline.source import redrive_attributes
from tests.helpers import dead_letters, kill_group, python_m_tasks, send_with_ids, settle, spawn, wait_until
from tests.test_privacy import attempt

pytestmark = pytest.mark.usefixtures("clean")
FORGET, KEEP = "forget-me-31", "keep-me-31"
BATCH_DLQ = f"{config.CELERY_QUEUE_PREFIX}{config.BATCH_QUEUE}-dlq"


def event(user: str, n: int, bad: bool = False) -> str:
    return json.dumps(
        {
            "user_id": user,
            "device_type": "ios",
            "ip": f"198.51.100.{n}",
            "device_id": f"dev-{user}-{n}",
            "locale": "en\u0000" if bad else "en",  # a NUL byte: a dead letter
            "app_version": "2.3.0",
        }
    )


def scalar(db: store.Connection, sql: str, *args: object) -> object:
    with db.cursor() as cur:
        cur.execute(sql, args)
        value = cur.fetchone()[0]
    db.rollback()
    return value


def rows_of(db: store.Connection, user: str) -> int:
    return int(scalar(db, "SELECT count(*) FROM user_logins WHERE user_id = %s", user))  # type: ignore[arg-type]


def hold_dead_letter(original_id: str) -> dict:
    """Receive the dead letter of one original id and keep it in flight (as another
    reader would), every other one made visible again."""
    sqs, url = aws.client("sqs"), aws.queue_url(config.DEAD_LETTER_QUEUE)
    for m in dead_letters():
        if aws.message_attribute(m, "source_message_id") == original_id:
            sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=600)
            held = m
        else:
            sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    return held


def set_aside(*batches: list[SourceMessage]) -> None:
    """Batch task messages in the batch dead-letter queue, as SQS's redrive policy puts them."""
    from tasks.batch import mask_and_insert

    for batch in batches:
        mask_and_insert.apply_async(([m.as_args() for m in batch],), queue=f"{config.BATCH_QUEUE}-dlq")


def bodies_in(queue: str) -> str:
    """Every body now visible in a queue (task messages opened), made visible again after."""
    sqs, url, found = aws.client("sqs"), aws.queue_url(queue), []
    while got := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60).get("Messages"):
        found += got
    for m in found:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    return "\n".join(erasure_text(m["Body"]) for m in found)


def erasure_text(body: str) -> str:
    """A message body, with a task message's two base64 layers opened."""
    from tasks.ops.erasure import TaskMessage

    task = TaskMessage.decode(body)
    return json.dumps(task.body) if task else body


def test_forget_erases_a_user_everywhere_while_a_worker_runs(db, worker) -> None:
    sent = int(time.time() * 1000)
    send_with_ids(
        {f"fm-row-{n}": event(FORGET, n) for n in range(3)}
        | {f"km-row-{n}": event(KEEP, n) for n in range(2)}
        | {f"fm-bad-{n}": event(FORGET, n, bad=True) for n in range(2)}
        | {"km-bad-0": event(KEEP, 9, bad=True)}
    )
    wait_until(lambda: scalar(db, "SELECT count(*) FROM dead_letters") == 3 and rows_of(db, KEEP) == 2, what="rows")
    assert rows_of(db, FORGET) == 3
    set_aside(
        [SourceMessage("fm-batch-0", sent, event(FORGET, 20))],
        [SourceMessage("fm-batch-1", sent, event(FORGET, 21)), SourceMessage("km-batch-0", sent, event(KEEP, 22))],
    )
    wait_until(lambda: aws.queue_depth(BATCH_DLQ)["visible"] == 2, what="two set-aside batches")
    held = hold_dead_letter("fm-bad-1")  # in flight: forget cannot reach it

    result = python_m_tasks("forget", "--user-id", FORGET, "--reason", "ticket GDPR-31")
    assert result.returncode == 0, result.stderr
    assert "forgot 1 users: deleted 3 rows, 1 dead_letters entries, 1 dead letters, 2 events" in result.stdout
    assert "(1 batch messages sent again without them)" in result.stdout
    assert f"not reached: 1 messages of {config.DEAD_LETTER_QUEUE}" in result.stdout

    # Nothing of the user is left but the dead letter forget could not reach.
    assert rows_of(db, FORGET) == 0 and rows_of(db, KEEP) == 2
    assert scalar(db, "SELECT array_agg(message_id ORDER BY 1) FROM dead_letters") == ["fm-bad-1", "km-bad-0"]
    assert FORGET not in bodies_in(BATCH_DLQ)
    # The audit and the tombstone: the keyed hash, never the id; who, why, the counts.
    with db.cursor() as cur:
        cur.execute("SELECT row_to_json(a)::text FROM erasure_audit a UNION ALL"
                    " SELECT row_to_json(t)::text FROM erasure_tombstones t")  # fmt: skip
        stored = "\n".join(r[0] for r in cur.fetchall())
        cur.execute(
            "SELECT subject_hash, reason, erased_by = current_user, rows_deleted, dead_letters_deleted,"
            " queued_deleted, batch_events_removed, unreached FROM erasure_audit"
        )
        [audit] = cur.fetchall()
    db.rollback()
    assert FORGET not in stored and re.fullmatch(r"1:[0-9a-f]{64}", audit[0])
    assert audit[0] == erasure.subject_hash(load_key_ring_checked(), FORGET)
    assert audit[1:] == ("ticket GDPR-31", True, 3, 1, 1, 2, 1)

    # The held dead letter comes back; a redrive drops it, and the other user's goes back.
    sqs = aws.client("sqs")
    sqs.change_message_visibility(
        QueueUrl=aws.queue_url(config.DEAD_LETTER_QUEUE), ReceiptHandle=held["ReceiptHandle"], VisibilityTimeout=0
    )
    redrive = python_m_tasks("redrive")
    assert redrive.returncode == 0 and "dropped 1 events of forgotten users" in redrive.stdout, redrive.stdout
    batches = python_m_tasks("redrive", "--batches")
    assert batches.returncode == 0 and "moved 1 messages" in batches.stdout, batches.stdout
    # An event sent before the erasure that arrives after it (a redriven original) is
    # dropped and counted; a login sent after it is new data.
    keys = load_key_ring_checked()
    before = SourceMessage("fm-late-0", sent, event(FORGET, 30))
    sqs.send_message(
        QueueUrl=aws.queue_url(config.SOURCE_QUEUE),
        MessageBody=before.body,
        MessageAttributes=redrive_attributes(before, keys),
    )
    send_with_ids({"fm-new-0": event(FORGET, 31)})
    wait_until(lambda: rows_of(db, FORGET) == 1 and rows_of(db, KEEP) == 3, what="the new login and km-batch-0")
    wait_until(lambda: scalar(db, "SELECT sum(forgotten) FROM ingest_batches") == 1, what="the late event dropped")
    settle()
    assert scalar(db, "SELECT array_agg(message_id) FROM user_logins WHERE user_id = %s", FORGET) == ["fm-new-0"]
    assert scalar(db, "SELECT array_agg(message_id ORDER BY 1) FROM dead_letters") == ["km-bad-0"]
    assert FORGET not in bodies_in(config.DEAD_LETTER_QUEUE) + bodies_in(BATCH_DLQ)


def test_a_batch_in_flight_commits_before_forget_deletes_and_later_batches_see_the_tombstone(db, database_url) -> None:
    """The erasure lock: a batch that read the tombstones before the erasure holds forget
    until it commits, so its row is deleted too; a batch after it drops the user's event."""
    keys = load_key_ring_checked()
    writer = store.connect_writer(database_url, options="-c role=login_pipeline_writer")
    log, forget = config.STACK_DIR / "forget-in-flight.log", None
    try:
        with writer.cursor() as cur:
            assert erasure.erased_at(cur, keys, [FORGET]) == {}  # the batch's read: no tombstone yet
            store.insert_rows(cur, [store.MaskedRow("in-flight-0", FORGET, "ios", "h1:a", None, None, 1, date.today())])
        forget = spawn([sys.executable, "-m", "tasks", "forget", "--user-id", FORGET, "--reason", "race"], log)
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        wait_until(lambda: scalar(db, waiting) == 1, what="forget waiting for the batch in flight")
        writer.commit()
        assert forget.wait(timeout=60) == 0, log.read_text()
        assert "deleted 1 rows" in log.read_text() and rows_of(db, FORGET) == 0
        with writer.cursor() as cur:  # the next batch sees the tombstone
            assert FORGET in erasure.erased_at(cur, keys, [FORGET, KEEP])
        writer.rollback()
    finally:
        writer.close()
        if forget is not None:
            kill_group(forget)


def test_forget_from_a_file_is_safe_to_run_again_and_refuses_bad_requests(db, tmp_path) -> None:
    requests = tmp_path / "requests.tsv"
    requests.write_text("alpha-31\tticket A\n\nbeta-31\n")
    missing = python_m_tasks("forget", "--from-file", str(requests))
    assert missing.returncode == 2 and "line 3: a reason with visible text is required" in missing.stderr
    for args in (["--user-id", "x", "--reason", "\u200b"], ["--reason", "why"], ["--user-id", "x"]):
        refused = python_m_tasks("forget", *args)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    for _ in range(2):
        result = python_m_tasks("forget", "--from-file", str(requests), "--reason", "batch B")
        assert result.returncode == 0 and "forgot 2 users: deleted 0 rows" in result.stdout, result.stderr
    assert scalar(db, "SELECT count(*) FROM erasure_tombstones") == 2
    assert scalar(db, "SELECT array_agg(reason ORDER BY id) FROM erasure_audit") == ["ticket A", "batch B"] * 2


@pytest.fixture
def logins(database_url: str, db) -> Iterator[dict[str, psycopg2.extensions.connection]]:
    """A login of its own for each role, as an operator would grant them."""
    roles = {"eraser": "login_eraser", "analyst": "login_analyst", "recovery": "login_recovery"}
    with db, db.cursor() as cur:
        for name, role in roles.items():
            cur.execute(f"DROP ROLE IF EXISTS {name}_probe")
            cur.execute(f"CREATE ROLE {name}_probe LOGIN IN ROLE {role}")
    conns = {name: psycopg2.connect(database_url, user=f"{name}_probe") for name in roles}
    try:
        yield conns
    finally:
        for conn in conns.values():
            conn.close()
        with db, db.cursor() as cur:
            for name in roles:
                cur.execute(f"DROP ROLE {name}_probe")


HASH = "1:" + "ab" * 32
RECORD = "SELECT public.record_erasure(%s, %s, 1, 0, 0, 0, 0)"


def test_only_the_eraser_erases_and_no_one_forges_the_audit(logins, db) -> None:
    with db, db.cursor() as cur:
        row = store.MaskedRow("role-1", "victim", "ios", "h1:a", "h1:b", None, 1, date.today())
        store.insert_rows(cur, [row])
        cur.execute("INSERT INTO erasure_tombstones VALUES (%s, now())", (HASH,))
    for name in ("analyst", "recovery"):
        conn = logins[name]
        for sql in (
            "DELETE FROM user_logins WHERE user_id = 'victim'",
            "DELETE FROM dead_letters",
            "SELECT * FROM erasure_tombstones",
            "INSERT INTO erasure_tombstones VALUES ('1:x', now())",
            "DELETE FROM erasure_tombstones",
            "SELECT * FROM erasure_audit",
            "INSERT INTO erasure_audit (subject_hash, reason, rows_deleted, dead_letters_deleted, queued_deleted,"
            " batch_events_removed, unreached) VALUES ('1:x', 'forged', 0, 0, 0, 0, 0)",
        ):
            assert attempt(conn, sql) == "InsufficientPrivilege", (name, sql)
        assert attempt(conn, RECORD, HASH, "forged") == "InsufficientPrivilege", name
    eraser = logins["eraser"]
    # It cannot forge who erased, read the audit or a masked value, nor write a raw id as the subject.
    for sql in (
        "INSERT INTO erasure_audit (subject_hash, reason, erased_by, rows_deleted, dead_letters_deleted,"
        " queued_deleted, batch_events_removed, unreached) VALUES ('1:x', 'r', 'someone', 0, 0, 0, 0, 0)",
        "SELECT * FROM erasure_audit",
        "UPDATE erasure_audit SET reason = 'x'",
        "DELETE FROM erasure_audit",
        "SELECT masked_ip FROM user_logins",
        "UPDATE user_logins SET user_id = 'x'",
    ):
        assert attempt(eraser, sql) == "InsufficientPrivilege", sql
    assert attempt(eraser, RECORD, "victim", "raw id as the subject") == "InvalidParameterValue"
    assert attempt(eraser, RECORD, HASH, "\u200b") == "InvalidParameterValue"
    # What it may do: the erasure itself.
    assert attempt(eraser, "DELETE FROM user_logins WHERE user_id = 'victim'") is None
    assert attempt(eraser, RECORD, HASH, "ticket R-1") is None
    assert scalar(db, "SELECT erased_by FROM erasure_audit") == "eraser_probe"
    assert rows_of(db, "victim") == 0


def as_login(database_url: str, user: str) -> str:
    return f"{database_url}{'&' if '?' in database_url else '?'}user={user}"


def test_forget_runs_as_the_eraser_login_and_is_refused_as_the_analyst(logins, database_url, db) -> None:
    with db, db.cursor() as cur:
        store.insert_rows(cur, [store.MaskedRow("role-2", "victim2", "ios", "h1:a", None, None, 1, date.today())])
    key = {
        "MASKING_KEYS": f"1:{base64.b64encode(b'e' * 32).decode()}"
    }  # a key of its own: the stack's refuses another database login
    analyst = python_m_tasks(
        "forget",
        "--user-id",
        "victim2",
        "--reason",
        "r",
        env={**key, "DATABASE_URL": as_login(database_url, "analyst_probe")},
    )
    assert analyst.returncode != 0 and len(analyst.stderr.strip().splitlines()) == 1, analyst.stderr
    assert "Traceback" not in analyst.stderr and "victim2" not in analyst.stderr
    assert rows_of(db, "victim2") == 1 and scalar(db, "SELECT count(*) FROM erasure_tombstones") == 0
    eraser = python_m_tasks(
        "forget",
        "--user-id",
        "victim2",
        "--reason",
        "r",
        env={**key, "DATABASE_URL": as_login(database_url, "eraser_probe")},
    )
    assert eraser.returncode == 0 and "deleted 1 rows" in eraser.stdout, eraser.stderr
    assert scalar(db, "SELECT erased_by FROM erasure_audit") == "eraser_probe"
