"""Retention: rows of user_logins older than RETENTION_DAYS (by create_date) are deleted.

Through init.sql's expire_logins() only (the writer role may call it, and may delete
nothing else), a batch of rows per call, each call its own short transaction, so no
long lock is held and the pipeline's inserts go on. A run stops when nothing old is left
or its time is up; the next beat-scheduled run goes on from there. If retention falls
behind, /metrics shows it (`login_pipeline_oldest_row_age_seconds`), and so does the alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic

from tasks.pipeline import store


@dataclass(frozen=True)
class Expiry:
    deleted: int
    finished: bool  # nothing older than the limit is left


def expire(conn: store.Connection, days: int, rows: int, max_seconds: float) -> Expiry:
    """Delete rows created more than `days` days ago, `rows` per transaction."""
    deadline = monotonic() + max_seconds
    deleted = 0
    while True:
        with conn.cursor() as cur:
            cur.execute("SELECT public.expire_logins(%s, %s)", (days, rows))
            done = int(store.one_row(cur)[0])
        conn.commit()
        deleted += done
        if done < rows:
            return Expiry(deleted, True)
        if monotonic() >= deadline:
            return Expiry(deleted, False)
