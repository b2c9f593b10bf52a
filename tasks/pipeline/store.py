"""PostgreSQL: the schema, the connection, and writing one masked batch.

A batch is written in one transaction: its rows go by COPY into a temporary table,
then one INSERT ... ON CONFLICT (message_id) DO NOTHING moves them into user_logins,
so a message delivered twice never makes two rows. Rejected records are noted in
dead_letters (id and reason only) and the batch's counts in ingest_batches, in the
same transaction. Rows the database itself refuses (a value it will not take) are
isolated by splitting the batch, each half under a savepoint, and come back as
rejections with the database's reason.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from datetime import date
from itertools import zip_longest
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import errorcodes

from tasks.pipeline import histogram
from tasks.pipeline.reasons import reason_class

INIT_SQL = Path(__file__).with_name("init.sql")  # the top-level init.sql (a link to it here: package data)
COLUMNS = (
    "message_id",
    "user_id",
    "device_type",
    "masked_ip",
    "masked_device_id",
    "locale",
    "app_version",
    "create_date",
)
_COLUMN_LIST = ", ".join(COLUMNS)
# Spelled out, not LIKE user_logins: the writer role may not read user_logins.
INCOMING_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS incoming_logins (
    message_id varchar(128), user_id varchar(128), device_type varchar(32), masked_ip varchar(256),
    masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date
) ON COMMIT DELETE ROWS
"""
# Errors tied to the values of some rows, as opposed to the server or the schema.
ROW_ERRORS = (psycopg2.DataError, psycopg2.IntegrityError)

Connection = psycopg2.extensions.connection
Cursor = psycopg2.extensions.cursor


@dataclass(frozen=True)
class MaskedRow:
    message_id: str
    user_id: str
    device_type: str | None
    masked_ip: str | None
    masked_device_id: str | None
    locale: str | None
    app_version: int | None
    create_date: date

    def copy_line(self) -> str:
        """The row as one line of COPY's text format."""
        return "\t".join([_copy_text(getattr(self, name)) for name in ROW_FIELDS]) + "\n"


ROW_FIELDS = tuple(column.name for column in fields(MaskedRow))


@dataclass(frozen=True)
class BatchCounts:
    received: int
    inserted: int
    duplicates: int
    dead_lettered: int
    non_address_ips: int = 0
    forgotten: int = 0  # events of a forgotten user sent before the erasure, dropped


def connect(url: str, **options: str) -> Connection:
    settings: dict[str, Any] = {"connect_timeout": 5, "application_name": "login-pipeline", **options}
    return psycopg2.connect(url, **settings)


def one_row(cur: Cursor) -> tuple:
    """The row an aggregate query always returns."""
    row = cur.fetchone()
    assert row is not None, "an aggregate query returned no row"
    return row


def connect_writer(url: str, statement_timeout_ms: int = 0, **options: str) -> Connection:
    """A connection that writes batches: it has its temporary table, once, and a
    statement timeout (0: none), so that a batch held up by a lock fails and is retried."""
    conn = connect(url, **options)
    with conn.cursor() as cur:
        cur.execute("SELECT set_config('statement_timeout', %s, false)", (str(statement_timeout_ms),))
        cur.execute(INCOMING_TABLE)
    conn.commit()
    return conn


def apply_schema(url: str) -> None:
    with psycopg2.connect(url, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute(INIT_SQL.read_text())
    conn.close()


COPY_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
NEEDS_ESCAPE = re.compile("[\\\\\t\n\r]")


def _copy_text(value: object) -> str:
    if value is None:
        return r"\N"
    text = str(value)
    return NEEDS_ESCAPE.sub(lambda found: COPY_ESCAPES[found.group()], text)


def insert_new(cur: Cursor, rows: Sequence[MaskedRow]) -> list[str]:
    """COPY rows into the temporary table and move the new ones; returns their message ids."""
    buffer = io.StringIO("".join(row.copy_line() for row in rows))
    cur.execute("TRUNCATE incoming_logins")
    cur.copy_expert(f"COPY incoming_logins ({_COLUMN_LIST}) FROM STDIN", buffer)
    cur.execute(
        f"INSERT INTO user_logins ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM incoming_logins"
        " ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
    )
    return [row[0] for row in cur.fetchall()]


def insert_rows(cur: Cursor, rows: Sequence[MaskedRow]) -> int:
    """COPY rows into the temporary table and move the new ones; returns how many."""
    return len(insert_new(cur, rows))


def _error_name(pgcode: str) -> str:
    try:
        return errorcodes.lookup(pgcode).lower()
    except KeyError:  # a code newer than psycopg2's table
        return f"SQLSTATE {pgcode}"


def database_reason(exc: psycopg2.Error) -> str:
    """What the server refused, by its error code and the column or constraint it names;
    never its message, which can quote the value ('invalid input syntax ...: "x"')."""
    what = _error_name(exc.pgcode) if exc.pgcode else type(exc).__name__
    diag = exc.diag
    where = diag.column_name or diag.constraint_name
    return f"database refused the record: {what}" + (f" ({where})" if where else "")


def insert_isolating(cur: Cursor, rows: Sequence[MaskedRow]) -> tuple[list[str], list[tuple[MaskedRow, str]]]:
    """Insert rows; returns the ids inserted, and those the database refuses with its reason."""
    if not rows:
        return [], []
    cur.execute("SAVEPOINT batch_part")
    try:
        inserted = insert_new(cur, rows)
    except ROW_ERRORS as exc:
        cur.execute("ROLLBACK TO SAVEPOINT batch_part")
        if len(rows) == 1:
            return [], [(rows[0], database_reason(exc))]
        middle = len(rows) // 2
        left, left_bad = insert_isolating(cur, rows[:middle])
        right, right_bad = insert_isolating(cur, rows[middle:])
        return left + right, left_bad + right_bad
    cur.execute("RELEASE SAVEPOINT batch_part")
    return inserted, []


def record_dead_letters(cur: Cursor, reasons: dict[str, str]) -> set[str]:
    """Note dead letters with their reason classes; returns the ids not noted before (to send to the DLQ)."""
    if not reasons:
        return set()
    cur.execute(
        "INSERT INTO dead_letters (message_id, reason, reason_class)"
        " SELECT * FROM unnest(%s::varchar[], %s::text[], %s::text[])"
        " ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
        (list(reasons), list(reasons.values()), [reason_class(r) for r in reasons.values()]),
    )
    return {row[0] for row in cur.fetchall()}


@dataclass(frozen=True)
class BatchTimes:
    """A batch's duration and its inserted rows' freshness (SentTimestamp to commit), seconds."""

    seconds: float = 0.0
    freshness: Sequence[float] = ()


def record_batch(cur: Cursor, task_id: str | None, counts: BatchCounts, times: BatchTimes = BatchTimes()) -> None:
    """The batch's row in the ledger, with its histogram bucket counts (init.sql rolls it up)."""
    cur.execute(
        "INSERT INTO ingest_batches (task_id, received, inserted, duplicates, dead_lettered, non_address_ips,"
        " forgotten, seconds, freshness_counts, freshness_sum, duration_counts)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            task_id,
            *astuple(counts),
            times.seconds,
            histogram.counts(times.freshness, histogram.FRESHNESS_BOUNDS),
            float(sum(times.freshness)),
            histogram.counts([times.seconds], histogram.DURATION_BOUNDS),
        ),
    )


def record_fetch(cur: Cursor, started: float, newest_sent_ms: int | None) -> None:
    """Mark a fetch's start (unix seconds) and the newest SentTimestamp it received
    (None: it received nothing); an older fetch finishing late changes nothing."""
    cur.execute(
        "INSERT INTO heartbeats AS h (name, at, newest_sent_at)"
        " VALUES ('fetch', to_timestamp(%s), to_timestamp(%s::double precision / 1000))"
        " ON CONFLICT (name) DO UPDATE SET at = EXCLUDED.at, newest_sent_at = EXCLUDED.newest_sent_at"
        " WHERE h.at <= EXCLUDED.at",
        (started, newest_sent_ms),
    )


@dataclass(frozen=True)
class Ledger:
    """The ledger's totals as /metrics shows them."""

    totals: dict[str, float]
    freshness_counts: list[int]
    freshness_sum: float
    duration_counts: list[int]
    last_commit: float | None  # unix seconds
    dead_letters: dict[str, int]  # by reason class
    last_fetch: float | None  # unix seconds
    newest_fetched_sent: float | None
    oldest_row: float | None = None  # unix seconds of the oldest row's create_date (None: no row)


LEDGER_KEYS = (
    "received",
    "inserted",
    "duplicates",
    "dead_lettered",
    "non_address_ips",
    "batches",
    "seconds",
    "forgotten",
)


def _sum_arrays(arrays: list[list[int] | None]) -> list[int]:
    return [sum(column) for column in zip_longest(*(a or [] for a in arrays), fillvalue=0)]


LEDGER_SUMS = (
    "SELECT coalesce(sum(received), 0), coalesce(sum(inserted), 0), coalesce(sum(duplicates), 0),"
    " coalesce(sum(dead_lettered), 0), coalesce(sum(non_address_ips), 0), coalesce(sum(batches), 0),"
    " coalesce(sum(seconds), 0), coalesce(sum(forgotten), 0) FROM ledger_rollup"
)


def _totals(cur: Cursor) -> dict[str, float]:
    cur.execute(LEDGER_SUMS)
    return dict(zip(LEDGER_KEYS, map(float, one_row(cur)), strict=True))


def ledger_totals(conn: Connection) -> dict[str, float]:
    """Sums over ingest_batches, read from its rollup (a few rows, however long the ledger)."""
    with conn.cursor() as cur:
        totals = _totals(cur)
    conn.rollback()
    return totals


def ledger(conn: Connection) -> Ledger:
    """Everything /metrics reads from PostgreSQL, in one read-only snapshot (so a batch
    committing meanwhile is in every figure or in none)."""
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        totals = _totals(cur)
        cur.execute(
            "SELECT freshness_counts, freshness_sum, duration_counts, extract(epoch FROM last_commit)"
            " FROM ledger_rollup"
        )
        shards = cur.fetchall()
        cur.execute("SELECT reason_class, sum(letters) FROM dead_letter_rollup GROUP BY 1")
        letters = {name: int(n) for name, n in cur.fetchall()}
        cur.execute(
            "SELECT extract(epoch FROM at), extract(epoch FROM newest_sent_at) FROM heartbeats WHERE name = 'fetch'"
        )
        fetch = cur.fetchone()
        cur.execute("SELECT extract(epoch FROM public.oldest_login_date()::timestamp AT TIME ZONE 'UTC')")
        oldest = one_row(cur)[0]
    conn.rollback()
    commits = [float(s[3]) for s in shards if s[3] is not None]
    return Ledger(
        totals=totals,
        freshness_counts=_sum_arrays([s[0] for s in shards]),
        freshness_sum=sum(float(s[1]) for s in shards),
        duration_counts=_sum_arrays([s[2] for s in shards]),
        last_commit=max(commits) if commits else None,
        dead_letters=letters,
        last_fetch=float(fetch[0]) if fetch else None,
        newest_fetched_sent=float(fetch[1]) if fetch and fetch[1] is not None else None,
        oldest_row=float(oldest) if oldest is not None else None,
    )


def totals(conn: Connection) -> dict[str, int]:
    """Pipeline totals: rows and dead letters as stored, and the ledger's counts.

    One statement, so one snapshot: read apart, a batch committing between the reads showed
    its events as received but not yet as rows (CI saw 100 received beside 0 rows)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM user_logins), (SELECT count(*) FROM dead_letters), sums.*"
            f" FROM ({LEDGER_SUMS}) AS sums"
        )
        rows, dead_letters, *sums = one_row(cur)
    conn.rollback()
    ledger = dict(zip(LEDGER_KEYS, sums, strict=True))
    counts = {key: int(ledger[key]) for key in ("received", "inserted", "duplicates", "dead_lettered", "batches")}
    return {"rows": int(rows), "dead_letters": int(dead_letters), **counts}
