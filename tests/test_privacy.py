"""Pseudonymisation end to end: roles, recovery with audit, rotation, and no raw PII anywhere."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import psycopg2
import pytest

import celeryconfig as config
from tasks.broker import aws
from tasks.dev import seed
from tasks.ops import recovery
from tasks.pipeline import store
from tasks.pipeline.keys import parse_key_ring
from tasks.pipeline.masking import Masker, TokenError
from tests.helpers import (
    ROOT,
    Worker,
    flower_api,
    free_port,
    python_m_tasks,
    raw_values,
    settle,
    start_flower,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("clean")
KEY1 = f"1:{base64.b64encode(b'k' * 32).decode()}"
KEY2 = f"2:{base64.b64encode(b'K' * 32).decode()}"


def denied(conn, sql: str) -> bool:
    with conn.cursor() as cur:
        try:
            cur.execute("SAVEPOINT probe")
            cur.execute(sql)
        except psycopg2.errors.InsufficientPrivilege:
            cur.execute("ROLLBACK TO SAVEPOINT probe")
            return True
        cur.execute("ROLLBACK TO SAVEPOINT probe")
    return False


def as_role(conn, role: str) -> None:
    with conn.cursor() as cur:
        cur.execute(f"SET ROLE {role}")


@pytest.fixture
def writer(database_url: str):
    """A session that is the writer role from its start, as a worker's login would be."""
    conn = store.connect_writer(database_url, options="-c role=login_pipeline_writer")
    yield conn
    conn.close()


def test_the_writer_role_can_write_a_batch_and_nothing_more(writer) -> None:
    db = writer
    with db.cursor() as cur:
        row = store.MaskedRow("w-1", "u", "ios", "h1:a", "h1:b", None, 1, date(2026, 1, 1))
        assert store.insert_isolating(cur, [row]) == (1, [])
        assert store.record_dead_letters(cur, {"w-2": "body is not JSON"}) == {"w-2"}
        store.record_batch(cur, "t", store.BatchCounts(2, 1, 0, 1), 0.1)
    assert denied(db, "SELECT * FROM user_logins")
    assert denied(db, "DELETE FROM user_logins")
    assert denied(db, "SELECT reason FROM dead_letters")
    assert denied(db, "INSERT INTO unmask_audit (field, token, reason) VALUES ('ip', 't', 'r')")
    db.rollback()


def test_the_analyst_reads_user_logins_only(db) -> None:
    as_role(db, "login_analyst")
    assert not denied(db, "SELECT * FROM user_logins")
    for sql in (
        "SELECT * FROM dead_letters",
        "SELECT * FROM unmask_audit",
        "SELECT * FROM ingest_batches",
        "INSERT INTO user_logins (user_id) VALUES ('x')",
        "UPDATE user_logins SET locale = 'x'",
    ):
        assert denied(db, sql), sql
    db.rollback()


def test_the_recovery_role_can_only_append_to_the_audit(db) -> None:
    as_role(db, "login_recovery")
    forged = "INSERT INTO unmask_audit (recovered_by, recovered_at, field, token, reason)"
    for sql in (
        f"{forged} VALUES ('alice', '2020-01-01', 'ip', 't', 'r')",
        "SELECT * FROM unmask_audit",
        "DELETE FROM unmask_audit",
        "UPDATE unmask_audit SET reason = 'x'",
    ):
        assert denied(db, sql), sql
    with db.cursor() as cur:  # the one way in: the database sets who and when
        cur.execute("SELECT record_unmask('ip', ARRAY['t-forge'], 'r', 'f')")
        cur.execute("RESET ROLE")
        cur.execute("SELECT recovered_by = session_user, recovered_at = now() FROM unmask_audit")
        assert cur.fetchall() == [(True, True)]
    db.rollback()


def test_unmask_takes_filters_not_sql_and_a_hostile_filter_writes_nothing(db) -> None:
    with db, db.cursor() as cur:
        cur.execute("TRUNCATE unmask_audit")
    siv = {"MASKING_MODE": "siv"}
    query = python_m_tasks(
        "unmask", "--field", "ip", "--reason", "x", "--query", "commit; delete from unmask_audit", env=siv
    )
    assert query.returncode == 2 and "No such option '--query'" in query.stderr
    hostile = "x'; commit; insert into unmask_audit (field, token, reason) values ('ip', 'forged', 'forged'); --"
    result = python_m_tasks("unmask", "--field", "ip", "--reason", "audit test", "--user-id", hostile, env=siv)
    assert result.returncode == 0, result.stderr
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM unmask_audit")
        assert cur.fetchone()[0] == 0
    db.rollback()


def test_unmask_recovers_in_siv_mode_with_an_audit_row(db) -> None:
    masker = Masker(parse_key_ring(KEY1), "siv")
    token = masker.mask_ip("010.001.002.003")[0]
    assert recovery.unmask(db, masker, "ip", [token], "ticket SEC-1") == ["10.1.2.3"]
    with db.cursor() as cur:
        cur.execute("SELECT field, token, reason FROM unmask_audit ORDER BY id DESC LIMIT 1")
        assert cur.fetchone() == ("ip", token, "ticket SEC-1")
    db.rollback()


def test_unmask_is_refused_without_the_key_in_hmac_mode_or_without_a_reason(db) -> None:
    token = Masker(parse_key_ring(KEY1), "siv").mask_device_id("593-47-5928")
    with pytest.raises(TokenError):
        recovery.unmask(db, Masker(parse_key_ring(KEY2.replace("2:", "1:")), "siv"), "device_id", [token], "x")
    with pytest.raises(recovery.RecoveryRefused):
        recovery.unmask(db, Masker(parse_key_ring(KEY1), "hmac"), "device_id", [token], "x")
    with pytest.raises(recovery.RecoveryRefused):
        recovery.unmask(db, Masker(parse_key_ring(KEY1), "siv"), "device_id", [token], " ")


def test_rekey_moves_every_row_to_the_newest_key(db) -> None:
    old, new = Masker(parse_key_ring(KEY1), "siv"), Masker(parse_key_ring(f"{KEY1},{KEY2}"), "siv")
    rows = [
        store.MaskedRow(
            f"r-{i}", "u", "ios", old.mask_ip(f"10.0.0.{i}")[0], old.mask_device_id(f"d-{i}"), None, 1, date(2026, 1, 1)
        )
        for i in range(25)
    ]
    with db, db.cursor() as cur:
        store.insert_rows(cur, rows)
    assert recovery.rekey(db, new, batch=10) == 25
    assert recovery.rekey(db, new, batch=10) == 0  # resumable: nothing left
    with db.cursor() as cur:
        cur.execute("SELECT masked_ip, masked_device_id FROM user_logins ORDER BY message_id")
        tokens = cur.fetchall()
    db.rollback()
    assert all(ip.startswith("s2:") and dev.startswith("s2:") for ip, dev in tokens)
    assert sorted(new.unmask("ip", ip) for ip, _ in tokens) == sorted(f"10.0.0.{i}" for i in range(25))


# What a hostile producer sends to make an error message echo its values.
HOSTILE_BODIES = [
    json.dumps({"user_id": "h1", "ip": "198.51.100.7\u00b2", "device_id": "dev-\u00b2-777"}),
    json.dumps({"user_id": "h2", "ip": "fe80::1%eth0", "device_id": 12345678}),
    json.dumps({"user_id": "h3", "ip": "203.0.113.9", "device_id": "d" * 200}),
    json.dumps({"user_id": "h4", "ip": "203.0.113.10", "device_id": "dev-h4-5150", "app_version": 2.30}),
]


def test_no_raw_ip_or_device_id_in_logs_flower_rows_or_dead_letters(db) -> None:
    env = {"DEAD_LETTER_KEEP_BODY": "false", "MASKING_MODE": "siv"}
    worker = Worker("pii-scan", beat=True, env=env, args=["--loglevel=DEBUG"])
    port, auth = free_port(), ("privacy", "test-only-password")  # Flower's API answers under auth only
    flower = start_flower(port, env={"FLOWER_BASIC_AUTH": ":".join(auth)})
    try:
        bodies = seed.sample_bodies() + [b for b, _ in seed.generate(400, seed=3)] + HOSTILE_BODIES
        raw = raw_values(bodies)
        wait_until(lambda: flower_api(port, "/api/tasks", auth), timeout=60, what="Flower to see task events")
        seed.send(config.SOURCE_QUEUE, bodies)
        settle()
        flower_tasks = json.dumps(flower_api(port, "/api/tasks", auth))
    finally:
        stop_process(flower)
        worker.stop()
    with db.cursor() as cur:
        cur.execute(
            "SELECT row_to_json(t)::text FROM (SELECT * FROM user_logins) t"
            " UNION ALL SELECT row_to_json(d)::text FROM dead_letters d"
            " UNION ALL SELECT row_to_json(b)::text FROM ingest_batches b"
        )
        tables = "\n".join(r[0] for r in cur.fetchall())
    db.rollback()
    sqs, url = aws.client("sqs"), aws.queue_url(config.DEAD_LETTER_QUEUE)
    letters = json.dumps(sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]))
    assert "mask_and_insert" in flower_tasks and "s1:" in tables and "reason" in letters
    for place, text in {
        "worker log": worker.log.read_text(),
        "Flower": flower_tasks,
        "tables": tables,
        "dead letters": letters,
    }.items():
        leaked = [value for value in raw if value in text]
        assert not leaked, f"{len(leaked)} raw values in {place}"


@pytest.mark.parametrize("keys", ["development", "none"])
def test_the_worker_refuses_to_start_outside_the_embedded_stack_without_a_real_key(tmp_path, keys: str) -> None:
    from tasks.pipeline.keys import create_development_key

    key_file = tmp_path / "masking.keys"
    if keys == "development":
        create_development_key(key_file, tmp_path / "elsewhere")
    env = {**os.environ, "MASKING_KEYS": "", "MASKING_KEYS_FILE": str(key_file)}
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--without-mingle"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "worker refused to start" in result.stdout + result.stderr
    for command in (
        ["unmask", "--field", "ip", "--reason", "x", "s1:AAAA"],
        ["rekey"],
        ["dev", "bench", "--events", "1"],
    ):
        refused = python_m_tasks(*command, env={**env, "MASKING_MODE": "siv"})
        assert refused.returncode == 2 and refused.stderr.startswith("refused:"), command
        assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_the_unmask_command_recovers_with_the_key_and_refuses_without(db) -> None:
    from tests.helpers import python_m_tasks

    token = Masker(parse_key_ring(os.environ["MASKING_KEYS"]), "siv").mask_ip("199.172.111.135")[0]
    ok = python_m_tasks("unmask", "--field", "ip", "--reason", "ticket SEC-9", token, env={"MASKING_MODE": "siv"})
    assert ok.returncode == 0 and ok.stdout.strip() == f"{token}\t199.172.111.135"
    other_key = python_m_tasks(
        "unmask", "--field", "ip", "--reason", "x", token, env={"MASKING_MODE": "siv", "MASKING_KEYS": KEY1}
    )
    assert other_key.returncode == 2 and other_key.stderr.startswith("refused:")
    assert "199.172.111.135" not in other_key.stdout + other_key.stderr
    one_way = python_m_tasks("unmask", "--field", "ip", "--reason", "x", token, env={"MASKING_MODE": "hmac"})
    assert one_way.returncode == 2 and "one-way" in one_way.stderr
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM unmask_audit WHERE token = %s", (token,))
        assert cur.fetchone()[0] == 1  # only the recovery that succeeded
    db.rollback()


def test_the_embedded_localstack_listens_on_the_loopback_only() -> None:
    """An attacker on the network cannot read the DLQ or inject events."""
    port = f"{config.LOCALSTACK_PORT:04X}"
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and local.endswith(f":{port}"):  # 0A: LISTEN
                listening.append(local.split(":")[0])
    assert listening and set(listening) <= {"0100007F", "00000000000000000000000001000000"}, listening


def test_a_producer_cannot_choose_the_idempotency_key(db, worker) -> None:
    """An unsigned or badly signed source_message_id is ignored: the event is a row of its
    own under its SQS MessageId, and cannot suppress a genuine event's row."""
    from tasks.pipeline.records import SourceMessage
    from tasks.pipeline.service import load_key_ring_checked
    from tasks.pipeline.source import redrive_attributes

    sqs, url = aws.client("sqs"), aws.queue_url(config.SOURCE_QUEUE)
    genuine = SourceMessage("victim-2", 1_700_000_000_000, json.dumps({"user_id": "victim"}))
    forgeries = [
        {"source_message_id": {"DataType": "String", "StringValue": "victim-1"}},
        {
            "source_message_id": {"DataType": "String", "StringValue": "victim-1"},
            "source_sent_timestamp": {"DataType": "Number", "StringValue": "1700000000000"},
            "source_message_signature": {"DataType": "String", "StringValue": "1:" + "0" * 64},
        },
        redrive_attributes(genuine, load_key_ring_checked()),  # a real signature, seen in a DLQ, on another body
    ]
    for n, attributes in enumerate(forgeries):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"user_id": f"forger-{n}"}), MessageAttributes=attributes)
    settle()
    with db.cursor() as cur:
        cur.execute("SELECT message_id, create_date FROM user_logins WHERE user_id LIKE 'forger-%'")
        rows = cur.fetchall()
    db.rollback()
    assert len(rows) == 3 and not {"victim-1", "victim-2"} & {r[0] for r in rows}
    assert all(r[1] != date(2023, 11, 14) for r in rows)  # nor the genuine event's date
