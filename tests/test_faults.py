"""Faults injected into real processes: after each, every event sent is one row or one
dead letter with a reason, and the counts add up. The figures of each run fill the
table in docs/reliability.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pgserver
import pytest

import celeryconfig as config
from tasks.dev import runner, seed
from tasks.pipeline import store
from tests.helpers import Outage, Worker, free_port, wait_until
from tests.test_pipeline import dead_letter_ids, send_with_ids

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("clean")]
DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
RESULTS: list[dict[str, object]] = []


def events(count: int, seed_value: int) -> tuple[dict[str, str], int]:
    generated = list(seed.generate(count, seed=seed_value))
    messages = {f"{seed_value}-{n}": body for n, (body, _) in enumerate(generated)}
    return messages, sum(valid for _, valid in generated)


def settle(timeout: float = 240) -> None:
    """Until login-queue and the batch queue stayed empty three polls in a row."""
    runner.wait_until_drained(timeout, poll=1, settle=3)


def account(fault: str, messages: dict[str, str], valid: int, db) -> None:
    settle()
    with db.cursor() as cur:
        cur.execute("SELECT message_id FROM user_logins")
        rows = [r[0] for r in cur.fetchall()]
    db.rollback()
    letters = dead_letter_ids()
    duplicates = store.totals(db)["duplicates"]
    lost = set(messages) - set(rows) - set(letters)
    doubled = len(rows) - len(set(rows)) + len(set(rows) & set(letters))
    RESULTS.append(
        {
            "fault": fault,
            "sent": len(messages),
            "rows": len(rows),
            "dead_letters": len(letters),
            "duplicate_deliveries_skipped": duplicates,
            "lost": len(lost),
            "doubled": doubled,
        }
    )
    assert not lost and not doubled
    assert len(rows) == valid and len(letters) == len(messages) - valid
    assert all(letters.values())


def first_rows(db, at_least: int = 1) -> None:
    wait_until(lambda: store.totals(db)["rows"] >= at_least, timeout=60, poll=0.2, what="the first rows")


@pytest.fixture(scope="module", autouse=True)
def reliability_table() -> Iterator[None]:
    yield
    if not RESULTS:
        return
    header = "| fault | events sent | rows written | dead letters | duplicate deliveries skipped | lost | doubled |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [
        f"| {r['fault']} | {r['sent']} | {r['rows']} | {r['dead_letters']} | "
        f"{r['duplicate_deliveries_skipped']} | {r['lost']} | {r['doubled']} |"
        for r in RESULTS
    ]
    text = DOC.read_text()
    begin, end = "<!-- faults:begin -->", "<!-- faults:end -->"
    head, _, rest = text.partition(begin)
    DOC.write_text(head + begin + "\n" + "\n".join(lines) + "\n" + end + rest.partition(end)[2])
    (config.STACK_DIR / "faults.json").write_text(json.dumps(RESULTS, indent=2))


def test_worker_killed_mid_batch(db) -> None:
    messages, valid = events(3000, 1)
    worker = Worker("killed", beat=True)
    send_with_ids(messages)
    first_rows(db, 250)
    worker.kill()
    survivor = Worker("survivor", beat=True)
    try:
        account("worker SIGKILLed mid-run", messages, valid, db)
    finally:
        survivor.stop()


def test_sigterm_during_a_batch(db) -> None:
    messages, valid = events(3000, 2)
    worker = Worker("terminated", beat=True)
    send_with_ids(messages)
    first_rows(db, 250)
    assert worker.stop(15) == 0  # warm shutdown: finishes what it started
    successor = Worker("successor", beat=True)
    try:
        account("SIGTERM (warm shutdown) mid-run", messages, valid, db)
    finally:
        successor.stop()


def test_postgres_stopped_for_30_seconds(db, database_url) -> None:
    messages, valid = events(3000, 3)
    worker = Worker("pg-outage", beat=True)
    try:
        send_with_ids(messages)
        first_rows(db, 250)
        db.close()
        pgdata = config.STACK_DIR / "pgdata"
        pgserver.get_server(pgdata, cleanup_mode="stop").cleanup()
        time.sleep(30)
        pgserver.get_server(pgdata, cleanup_mode=None)
        db = store.connect(database_url)
        account("PostgreSQL stopped for 30 s", messages, valid, db)
        assert "Retry in" in worker.log.read_text()
    finally:
        worker.stop()
        db.close()


def test_sqs_unreachable_for_20_seconds(db) -> None:
    messages, valid = events(3000, 4)
    proxy_port = free_port()
    outage = Outage(proxy_port, config.LOCALSTACK_PORT)
    worker = Worker("sqs-outage", beat=True, env={"SQS_ENDPOINT_URL": f"http://localhost:{proxy_port}"})
    try:
        send_with_ids(messages)
        first_rows(db, 250)
        outage.cut()
        time.sleep(20)
        outage.restore()
        account("SQS endpoint unreachable for 20 s", messages, valid, db)
    finally:
        worker.stop()
        outage.cut()


def test_poison_records_inside_batches_of_good_ones(db, worker) -> None:
    messages, valid = events(1000, 5)
    poison = {
        "5-poison-1": "{oops",
        "5-poison-2": '{"user_id": "u", "app_version": "x.y"}',
        "5-poison-3": '{"user_id": "%s"}' % ("u" * 200),
    }
    send_with_ids({**dict(list(messages.items())[:500]), **poison, **dict(list(messages.items())[500:])})
    account("poison records inside good batches", {**messages, **poison}, valid, db)


def test_the_same_messages_delivered_twice(db, worker) -> None:
    messages, valid = events(1000, 6)
    send_with_ids(messages)
    send_with_ids(messages)
    account("every message delivered twice", messages, valid, db)
    assert store.totals(db)["duplicates"] == 1000


def test_ten_thousand_events_with_repeated_logins(db, worker) -> None:
    messages, valid = events(10_000, 7)
    send_with_ids(messages)
    account("10,000 events, 20% repeat logins", messages, valid, db)
    with db.cursor() as cur:
        cur.execute("SELECT count(*) - count(DISTINCT (user_id, masked_ip, masked_device_id)) FROM user_logins")
        assert cur.fetchone()[0] > 1000  # genuine repeats are rows of their own
    db.rollback()
