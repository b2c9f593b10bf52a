"""Retention through the real processes: beat schedules the retention task, a worker runs
it as the writer's login, old rows go in short batches, the metrics show the oldest row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from tasks.ops import metrics
from tasks.pipeline import store
from tests.helpers import Worker, wait_until

pytestmark = pytest.mark.usefixtures("clean")
DAYS = 30


def add_rows(db: store.Connection, days_old: list[int]) -> None:
    today = datetime.now(UTC).date()
    rows = [
        store.MaskedRow(f"ret-{n}", f"u{n}", "ios", "h1:a", "h1:b", None, 1, today - timedelta(days=age))
        for n, age in enumerate(days_old)
    ]
    with db, db.cursor() as cur:
        store.insert_rows(cur, rows)


def ages(db: store.Connection) -> list[int]:
    with db.cursor() as cur:
        cur.execute("SELECT (now() AT TIME ZONE 'UTC')::date - create_date FROM user_logins ORDER BY 1")
        found = [row[0] for row in cur.fetchall()]
    db.rollback()
    return found


def test_the_retention_task_deletes_old_rows_in_batches_and_the_metric_follows(db, database_url) -> None:
    add_rows(db, [0, 1, DAYS, DAYS + 1, DAYS + 2, 400, 400, 900])
    assert oldest_row_age(database_url) > 900 * 86400
    env = {"RETENTION_DAYS": str(DAYS), "RETENTION_INTERVAL": "1", "RETENTION_BATCH_ROWS": "2"}
    worker = Worker("retention", beat=True, env=env)
    try:
        wait_until(lambda: ages(db) == [0, 1, DAYS], timeout=60, what="rows past the limit deleted")
    finally:
        worker.stop()
    log = worker.log.read_text()
    assert "retention: deleted" in log
    assert DAYS * 86400 <= oldest_row_age(database_url) < (DAYS + 1) * 86400


def oldest_row_age(database_url: str) -> float:
    """login_pipeline_oldest_row_age_seconds as a scrape reads it."""
    collector = metrics.PipelineCollector(lambda: database_url)
    try:
        [age] = [m.samples[0].value for m in collector.collect() if m.name == metrics.OLDEST_ROW_AGE.name]
    finally:
        collector.close()
    return age


def test_only_expire_logins_deletes_and_only_past_a_positive_limit(database_url, db) -> None:
    add_rows(db, [500])
    writer = store.connect(database_url, options="-c role=login_pipeline_writer")
    try:
        with writer.cursor() as cur:
            for bad in ((0, 10), (-1, 10), (1, 0)):
                cur.execute("SAVEPOINT p")
                with pytest.raises(psycopg2.errors.InvalidParameterValue):
                    cur.execute("SELECT public.expire_logins(%s, %s)", bad)
                cur.execute("ROLLBACK TO SAVEPOINT p")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("DELETE FROM user_logins")
        writer.rollback()
        with db.cursor() as cur:
            cur.execute("SET ROLE login_analyst")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("SELECT public.expire_logins(1, 10)")
        db.rollback()
    finally:
        writer.close()
    assert ages(db) == [500]
