"""The dead-letter path when the database cannot take a batch at all.

In a module of its own: no other worker may be running, or it would write the events.
"""

from __future__ import annotations

import pytest

import celeryconfig as config
from devkit import seed
from tests.helpers import Worker, dead_letter_ids, wait_until

pytestmark = pytest.mark.usefixtures("clean")


def test_a_permanent_failure_sends_the_whole_batch_to_the_dead_letter_path(db, database_url) -> None:
    db.autocommit = True
    with db.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS no_schema")
        cur.execute("CREATE DATABASE no_schema")
    db.autocommit = False
    broken = database_url.replace("/postgres?", "/no_schema?")
    worker = Worker("no-schema", beat=True, env={"DATABASE_URL": broken})
    try:
        seed.send(config.SOURCE_QUEUE, seed.sample_bodies()[:20])
        letters: dict[str, str] = {}

        def all_dead_lettered() -> bool:
            letters.update(dead_letter_ids())  # each seen once: they stay hidden after receipt
            return len(letters) >= 20

        wait_until(all_dead_lettered, timeout=60, what="20 dead letters")
    finally:
        worker.stop()
    assert len(letters) == 20
    assert all(reason.startswith("permanent failure: UndefinedTable") for reason in letters.values())
    assert "Retry in" not in worker.log.read_text()  # a permanent failure is not retried


def test_redrive_batches_replays_a_batch_that_sqs_set_aside(db) -> None:
    """A batch task message in login-pipeline-batches-dlq goes back to the batch queue as
    the very message it was, and its records become rows."""
    from tasks.batch import mask_and_insert
    from tasks.broker import aws
    from tasks.pipeline.records import SourceMessage
    from tests.helpers import drained, python_m_tasks

    records = [SourceMessage(f"set-aside-{n}", 1_700_000_000_000, f'{{"user_id": "u{n}"}}') for n in range(2)]
    mask_and_insert.apply_async(([r.as_args() for r in records],))
    sqs, prefix = aws.client("sqs"), config.CELERY_QUEUE_PREFIX
    batches, dlq = aws.queue_url(f"{prefix}batches"), aws.queue_url(f"{prefix}batches-dlq")
    [task] = wait_until(lambda: sqs.receive_message(QueueUrl=batches).get("Messages"), what="the task message")
    sqs.send_message(QueueUrl=dlq, MessageBody=task["Body"])  # as SQS's redrive policy would
    sqs.delete_message(QueueUrl=batches, ReceiptHandle=task["ReceiptHandle"])

    result = python_m_tasks("redrive", "--batches")
    assert result.returncode == 0 and "moved 1 messages" in result.stdout, result.stderr
    worker = Worker("replay", beat=False)
    try:
        assert drained(db, 2)["rows"] == 2
    finally:
        worker.stop()
