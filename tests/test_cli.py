"""The README's commands, run as a user runs them, against the test stack."""

from __future__ import annotations

import json

import pytest

import celeryconfig as config
from tasks.broker import aws
from tasks.dev import seed
from tasks.pipeline import store
from tests.helpers import dead_letters, python_m_tasks, send_with_ids

pytestmark = pytest.mark.usefixtures("clean")


def drain(*args: str) -> dict[str, float]:
    result = python_m_tasks("dev", "run", "--drain", "--json", "--timeout", "240", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_drain_turns_seeded_events_into_masked_rows_and_dead_letters(db) -> None:
    summary = drain("--seed", "1000")
    assert (summary["received"], summary["inserted"], summary["dead_lettered"], summary["duplicates"]) == (
        1000,
        983,
        17,
        0,
    )
    assert aws.queue_depth(config.SOURCE_QUEUE) == {"visible": 0, "in_flight": 0}
    with db.cursor() as cur:
        cur.execute(
            "SELECT count(*), count(*) FILTER (WHERE masked_ip LIKE 'h1:%' AND masked_device_id LIKE 'h1:%')"
            " FROM user_logins"
        )
        without_ip = sum(ok and json.loads(b)["ip"] is None for b, ok in seed.generate(1000))
        assert cur.fetchone() == (983, 983 - without_ip)
        cur.execute("SELECT masked_ip, masked_device_id FROM user_logins")
        stored = {v for row in cur.fetchall() for v in row if v}
    db.rollback()
    raw = {json.loads(b).get(k) for b, ok in seed.generate(1000) if ok for k in ("ip", "device_id")}
    assert not stored & raw
    letters = dead_letters()
    assert len(letters) == 17 and all(m["MessageAttributes"]["reason"]["StringValue"] for m in letters)


def test_a_second_run_over_redelivered_messages_adds_no_rows(db) -> None:
    messages = {f"m-{n}": body for n, (body, _) in enumerate(seed.generate(500, seed=11))}
    send_with_ids(messages)
    first = drain()
    send_with_ids(messages)
    second = drain()
    assert first["received"] == second["received"] == 500
    assert (second["inserted"], second["dead_lettered"], second["duplicates"]) == (0, 0, 500)
    assert store.totals(db)["rows"] == first["inserted"]


def test_status_reports_json() -> None:
    result = python_m_tasks("status", "--json")
    report = json.loads(result.stdout)
    assert set(report["queues"]) >= {config.SOURCE_QUEUE, config.DEAD_LETTER_QUEUE}
    assert "rows" in report["database"]
