"""The store against a real PostgreSQL: schema, idempotency, isolating refused rows."""

from datetime import date

import psycopg2
import pytest

from tasks.pipeline import store

pytestmark = pytest.mark.usefixtures("clean")


def row(message_id: str, locale: str | None = "RU") -> store.MaskedRow:
    return store.MaskedRow(message_id, "u", "ios", "h1:ip", "h1:dev", locale, 2_003_000, date(2026, 1, 2))


def test_a_message_written_twice_is_one_row_and_a_repeat_login_is_another(db) -> None:
    with db.cursor() as cur:
        assert store.insert_rows(cur, [row("a"), row("a"), row("b")]) == 2
        assert store.insert_rows(cur, [row("a")]) == 0
    db.commit()


def test_refused_rows_are_isolated_and_the_rest_inserted(db) -> None:
    with db.cursor() as cur:
        cur.execute("ALTER TABLE user_logins ADD CONSTRAINT no_xx CHECK (locale IS DISTINCT FROM 'XX')")
        try:
            rows = [row(f"m{i}", "XX" if i in (3, 17) else "RU") for i in range(20)]
            inserted, refused = store.insert_isolating(cur, rows)
            assert len(inserted) == 18
            assert [r.message_id for r, _ in refused] == ["m3", "m17"]
            # The reason names the rule and the constraint, never the row's values.
            assert {reason for _, reason in refused} == {"database refused the record: check_violation (no_xx)"}
        finally:
            db.rollback()


def test_init_sql_applies_again_and_over_the_exercise_table(database_url: str) -> None:
    conn = psycopg2.connect(database_url)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE SCHEMA exercise; SET search_path TO exercise")
        cur.execute(
            "CREATE TABLE user_logins(user_id varchar(128), device_type varchar(32), masked_ip varchar(256),"
            " masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date)"
        )
        cur.execute("INSERT INTO user_logins (user_id) VALUES ('old row')")
        cur.execute(store.INIT_SQL.read_text())
        cur.execute(store.INIT_SQL.read_text())
        cur.execute("SELECT count(*), count(message_id) FROM user_logins")
        assert cur.fetchone() == (1, 0)
        conn.rollback()
    conn.close()


def test_totals_never_show_a_committing_batch_as_received_but_not_stored(db, database_url) -> None:
    """Rows and the ledger are read in one snapshot: CI once read 100 received beside 0 rows,
    a batch having committed between two reads."""
    import threading

    stop = threading.Event()

    def commit_batches() -> None:
        writer = store.connect_writer(database_url)
        with writer.cursor() as cur:
            for n in range(300):
                store.insert_rows(cur, [row(f"race-{n}")])
                store.record_batch(cur, None, store.BatchCounts(received=1, inserted=1, duplicates=0, dead_lettered=0))
                writer.commit()
        writer.close()
        stop.set()

    thread = threading.Thread(target=commit_batches)
    thread.start()
    seen = []
    while not stop.is_set():
        totals = store.totals(db)
        seen.append((totals["rows"], totals["received"]))
    thread.join()
    assert all(rows == received for rows, received in seen), [s for s in seen if s[0] != s[1]][:5]
    assert len(seen) > 10 and store.totals(db)["rows"] == 300
