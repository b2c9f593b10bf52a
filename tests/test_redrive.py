"""`redrive` with filters (issue 32), through a real worker: after an outage the DLQ
holds poison beside the letters the outage caused; only those go back, and a run never
reads back what it moved, whatever the running pipeline dead-letters meanwhile."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import pytest

import celeryconfig as config
from devkit import seed
from tasks.broker import aws
from tests.helpers import dead_letter_ids, dead_letters, drained, python_m_tasks

pytestmark = pytest.mark.usefixtures("clean")

# What a batch whose retries ran out while PostgreSQL was down is dead-lettered with (tasks/batch.py).
OUTAGE = "gave up after 12 retries: OperationalError"


def send_dead_letters(bodies: dict[str, str], reason: str) -> None:
    """Dead letters as the pipeline writes them: signed with their original ids, straight
    to the queue, as tasks.pipeline.service.give_up does when the ledger cannot be written."""
    from tasks.pipeline.deadletter import DeadLetterQueue
    from tasks.pipeline.records import DeadLetter, SourceMessage
    from tasks.pipeline.service import load_key_ring_checked

    sent = int(time.time() * 1000)
    queue = DeadLetterQueue(config.DEAD_LETTER_QUEUE, load_key_ring_checked())
    queue.send(DeadLetter(SourceMessage(mid, sent, body), reason) for mid, body in bodies.items())


def by_reason(count: int, label: str, reason: str) -> str:
    return f"  {count:>6}  {label:<16}  {reason}"


def test_redrive_by_reason_moves_what_the_outage_left_and_the_poison_stays(worker, db) -> None:
    seed.send(config.SOURCE_QUEUE, ["{not json"] * 8 + ['{"foo": "bar"}'] * 7)  # poison, through the worker
    drained(db, 15)
    since = datetime.now(UTC).isoformat()
    outage = {f"outage-{n}": body for n, (body, valid) in enumerate(seed.generate(60)) if valid}
    send_dead_letters(outage, OUTAGE)
    total = len(outage) + 15

    everything = python_m_tasks("redrive", "--dry-run")
    assert everything.returncode == 0, everything.stderr
    lines = everything.stdout.splitlines()
    assert lines[0].startswith(f"would move {total} messages from {config.DEAD_LETTER_QUEUE}"), lines
    assert by_reason(len(outage), "transient", OUTAGE) in lines, lines
    assert by_reason(8, "not_json", "body is not JSON") in lines, lines
    assert by_reason(7, "missing_field", "user_id is missing") in lines, lines

    recent = python_m_tasks("redrive", "--dry-run", "--since", since)
    assert recent.stdout.startswith(f"would move {len(outage)} messages"), recent.stdout
    assert "would leave 15 not matching --since " in recent.stdout, recent.stdout
    assert aws.queue_depth(config.DEAD_LETTER_QUEUE)["visible"] == total  # dry runs moved nothing

    moved = python_m_tasks("redrive", "--reason", "transient")
    assert moved.returncode == 0 and "Traceback" not in moved.stderr, moved.stderr
    assert moved.stdout.startswith(f"moved {len(outage)} messages"), moved.stdout
    assert "left 15 not matching --reason transient:" in moved.stdout, moved.stdout
    assert aws.queue_depth(config.DEAD_LETTER_QUEUE)["visible"] == 15  # the poison, visible at once

    totals = drained(db, total)
    assert (totals["rows"], totals["dead_letters"]) == (len(outage), 15)
    with db.cursor() as cur:
        cur.execute("SELECT message_id FROM user_logins")
        assert {r[0] for r in cur.fetchall()} == set(outage)
    db.rollback()
    reasons = Counter(m["MessageAttributes"]["reason"]["StringValue"] for m in dead_letters())
    assert reasons == {"body is not JSON": 8, "user_id is missing": 7}


def test_a_redrive_beside_a_running_pipeline_moves_each_letter_once(worker, db) -> None:
    """The issue's redrive moved 457 from a 417-message queue: it read back the poison the
    running pipeline had just dead-lettered again. Each letter here is poison, so each one
    moved comes straight back while the run goes on; and fresh poison keeps arriving, which
    must not keep the run going either."""
    poison = {f"poison-{n}": "{not json" for n in range(400)}
    send_dead_letters(poison, "body is not JSON")
    stop, fed = threading.Event(), []

    def feed() -> None:
        while not stop.wait(0.2):
            seed.send(config.SOURCE_QUEUE, ["{fresh poison"])
            fed.append(1)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        result = python_m_tasks("redrive", timeout=120)
    finally:
        stop.set()
        feeder.join(timeout=30)
    assert result.returncode == 0, result.stderr
    # Fresh poison dead-lettered before the run began is moved too, once; reading back
    # what it moved would count the 400 again.
    moved = int(re.match(r"moved (\d+) messages", result.stdout)[1])  # type: ignore[index]
    assert len(poison) <= moved <= len(poison) + len(fed), result.stdout
    assert re.search(r"^left [1-9]\d* dead-lettered since this run began", result.stdout, re.M), result.stdout

    drained(db, len(poison) + len(fed))
    letters = dead_letter_ids()
    assert {i: r for i, r in letters.items() if i in poison} == dict.fromkeys(poison, "body is not JSON")
    assert len(letters) == len(poison) + len(fed)
