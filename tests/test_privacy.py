"""Pseudonymisation end to end: roles, recovery with audit, rotation, and no raw PII anywhere."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import psycopg2
import pytest

import celeryconfig as config
from devkit import seed
from tasks.broker import aws
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
        assert store.insert_isolating(cur, [row]) == ([row.message_id], [])
        assert store.record_dead_letters(cur, {"w-2": "body is not JSON"}) == {"w-2"}
        store.record_batch(cur, "t", store.BatchCounts(2, 1, 0, 1), store.BatchTimes(0.1, [0.5]))
        store.record_fetch(cur, 1_700_000_000.0, 1_700_000_000_000)
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


def add_row(db, masker: Masker, ip: str, user_id: str = "u", day: date = date(2026, 1, 1)) -> str:
    """A row of user_logins whose ip token is returned."""
    token = masker.mask_ip(ip)[0]
    with db, db.cursor() as cur:
        store.insert_rows(cur, [store.MaskedRow(f"r-{token}", user_id, "ios", token, None, None, 1, day)])
    return token


def audit_rows(db) -> list[tuple]:
    with db.cursor() as cur:
        cur.execute("SELECT recovered_by, field, token, reason, filter FROM unmask_audit ORDER BY id")
        rows = cur.fetchall()
    db.rollback()
    return rows


@pytest.fixture
def recovery_login(database_url: str, db) -> Iterator[psycopg2.extensions.connection]:
    """A login of its own, granted login_recovery, as an operator's would be."""
    with db, db.cursor() as cur:
        cur.execute("TRUNCATE unmask_audit")
        cur.execute("DROP ROLE IF EXISTS recovery_probe")
        cur.execute("CREATE ROLE recovery_probe LOGIN IN ROLE login_recovery")
    conn = psycopg2.connect(database_url, user="recovery_probe")
    try:
        yield conn
    finally:
        conn.close()
        with db, db.cursor() as cur:
            cur.execute("DROP ROLE recovery_probe")


def attempt(conn, sql: str, *args: object) -> str | None:
    """The error class of one statement in its own transaction (None: it ran), rolled back if it failed."""
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            if cur.description:
                cur.fetchall()
    except psycopg2.Error as exc:
        return type(exc).__name__
    return None


def test_the_recovery_login_cannot_forge_or_touch_the_audit(recovery_login, db) -> None:
    conn = recovery_login
    token = add_row(db, Masker(parse_key_ring(KEY1), "siv"), "10.9.8.7", user_id="alice")
    for sql in (
        "INSERT INTO unmask_audit (recovered_by, recovered_at, field, token, reason)"
        " VALUES ('alice', '2020-01-01', 'ip', 't', 'r')",
        "SELECT * FROM unmask_audit",
        "DELETE FROM unmask_audit",
        "UPDATE unmask_audit SET reason = 'x'",
    ):
        assert attempt(conn, sql) == "InsufficientPrivilege", sql
    # The forged entry: the old function is gone.
    forged = "SELECT public.record_unmask('ip', ARRAY['s1:FAKE'], 'forged entry', 'user_id=alice since=2020-01-01')"
    assert attempt(conn, forged) == "UndefinedFunction"
    recover = "SELECT * FROM public.recover_tokens(%s, %s, %s, %s, %s, %s)"
    refused = [
        ("ip", "forged entry", None, None, None, ["s1:FAKE"]),  # a token not in user_logins
        ("ip", "forged entry", None, None, None, [token, "s1:FAKE"]),  # one of them not: none recovered
        ("device_id", "forged entry", None, None, None, [token]),  # an ip token is not a device_id token
        ("ip", "\u200b", "alice", None, None, None),  # a zero-width space
        ("ip", " \t\u00a0\u2060\ufeff\u202e ", "alice", None, None, None),  # white space, joiner, BOM, bidi
        ("ip", "", "alice", None, None, None),
        ("ip", None, "alice", None, None, None),
        ("ip", "why", None, None, None, None),  # neither tokens nor a filter
        ("ip", "why", "alice", None, None, [token]),  # both
        ("ssn", "why", "alice", None, None, None),
    ]
    for args in refused:
        assert attempt(conn, recover, *args) == "InvalidParameterValue", args
    assert audit_rows(db) == []
    # What it can do: recover what the filter selects; the database writes who and what.
    with conn, conn.cursor() as cur:
        cur.execute(recover, ("ip", "ticket SEC-7", "alice", date(2020, 1, 1), None, None))
        assert cur.fetchall() == [(token,)]
    assert audit_rows(db) == [("recovery_probe", "ip", token, "ticket SEC-7", "user_id=alice since=2020-01-01")]


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
    token = add_row(db, masker, "010.001.002.003")
    assert recovery.unmask(db, masker, "ip", "ticket SEC-1", tokens=[token]) == [(token, "10.1.2.3")]
    with db.cursor() as cur:
        cur.execute("SELECT field, token, reason, filter FROM unmask_audit ORDER BY id DESC LIMIT 1")
        assert cur.fetchone() == ("ip", token, "ticket SEC-1", "tokens given")
    db.rollback()


def test_unmask_is_refused_without_the_key_in_hmac_mode_or_without_a_reason(db) -> None:
    with db, db.cursor() as cur:
        cur.execute("TRUNCATE unmask_audit")
    token = add_row(db, Masker(parse_key_ring(KEY1), "siv"), "192.0.2.44")
    with pytest.raises(TokenError):  # the database chose it and audited it; the rollback takes the row back
        recovery.unmask(db, Masker(parse_key_ring(KEY2.replace("2:", "1:")), "siv"), "ip", "x", tokens=[token])
    with pytest.raises(recovery.RecoveryRefused):
        recovery.unmask(db, Masker(parse_key_ring(KEY1), "hmac"), "ip", "x", tokens=[token])
    for reason in (" ", "\u200b", "\u200d\u2060", "\u0301"):
        with pytest.raises(recovery.RecoveryRefused, match="visible text"):
            recovery.unmask(db, Masker(parse_key_ring(KEY1), "siv"), "ip", reason, tokens=[token])
    with pytest.raises(recovery.RecoveryRefused, match="not ip tokens of user_logins"):
        recovery.unmask(db, Masker(parse_key_ring(KEY1), "siv"), "ip", "x", tokens=["s1:FAKE"])
    assert audit_rows(db) == []


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


def test_rekey_ends_on_every_mix_of_modes_and_versions(db) -> None:
    """hmac tokens of the newest and an older version, siv tokens of both, both kinds in
    one row, and NULLs: the real command re-keys the old siv tokens, keeps every hmac
    token, says how many rows keep one, and ends (it once updated the same rows forever)."""
    ring1, ring2 = parse_key_ring(KEY1), parse_key_ring(f"{KEY1},{KEY2}")
    hmac1, hmac2, siv1, siv2 = Masker(ring1, "hmac"), Masker(ring2, "hmac"), Masker(ring1, "siv"), Masker(ring2, "siv")
    kinds = [
        (hmac2.mask_ip("10.9.0.1")[0], hmac2.mask_device_id("d-1")),  # hmac, the newest version
        (hmac1.mask_ip("10.9.0.2")[0], None),  # hmac, an older version
        (siv1.mask_ip("10.9.0.3")[0], hmac2.mask_device_id("d-3")),  # old siv beside hmac
        (hmac2.mask_ip("10.9.0.4")[0], siv1.mask_device_id("d-4")),
        (siv2.mask_ip("10.9.0.5")[0], siv2.mask_device_id("d-5")),  # already the newest
        (None, siv1.mask_device_id("d-6")),
    ]
    rows = [
        store.MaskedRow(f"mix-{n}-{i}", "u", "ios", ip, dev, None, 1, date(2026, 1, 1))
        for n in range(4)
        for i, (ip, dev) in enumerate(kinds)
    ]
    with db, db.cursor() as cur:
        store.insert_rows(cur, rows)
    before = {row.message_id: (row.masked_ip, row.masked_device_id) for row in rows}
    env = {"MASKING_MODE": "siv", "MASKING_KEYS": f"{KEY1},{KEY2}"}
    result = python_m_tasks("rekey", "--batch", "3", env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "re-keyed 12 rows",
        "16 rows keep hmac tokens: one-way, they cannot be re-keyed (docs/privacy.md)",
    ]
    with db.cursor() as cur:
        cur.execute("SELECT message_id, masked_ip, masked_device_id FROM user_logins WHERE message_id LIKE 'mix-%'")
        after = {mid: (ip, dev) for mid, ip, dev in cur.fetchall()}
    db.rollback()
    for mid, tokens in after.items():
        for field, old, new in zip(("ip", "device_id"), before[mid], tokens, strict=True):
            if old is None or old.startswith(("h", "s2:")):
                assert new == old, (mid, field)
            else:
                assert new.startswith("s2:") and siv2.unmask(field, new) == siv1.unmask(field, old), (mid, field)
    again = python_m_tasks("rekey", env=env, timeout=60)
    assert again.returncode == 0 and again.stdout.startswith("re-keyed 0 rows"), again.stdout + again.stderr


# What a hostile producer sends to make an error message echo its values.
HOSTILE_BODIES = [
    json.dumps({"user_id": "h1", "ip": "198.51.100.7\u00b2", "device_id": "dev-\u00b2-777"}),
    json.dumps({"user_id": "h2", "ip": "fe80::1%eth0", "device_id": 12345678}),
    json.dumps({"user_id": "h3", "ip": "203.0.113.9", "device_id": "d" * 200}),
    json.dumps({"user_id": "h4", "ip": "203.0.113.10", "device_id": "dev-h4-5150", "app_version": 2.30}),
]


def test_no_raw_ip_or_device_id_in_logs_flower_rows_or_dead_letters(db) -> None:
    # Small batches, shared by two workers: one logs text, the other JSON (LOG_FORMAT=json), like Flower.
    env = {"DEAD_LETTER_KEEP_BODY": "false", "MASKING_MODE": "siv", "BATCH_SIZE": "40"}
    worker = Worker("pii-scan", beat=True, env=env, args=["--loglevel=DEBUG"])
    json_worker = Worker("pii-scan-json", env={**env, "LOG_FORMAT": "json"}, args=["--loglevel=DEBUG"])
    port, auth = free_port(), ("privacy", "test-only-password")  # Flower's API answers under auth only
    flower = start_flower(port, env={"FLOWER_BASIC_AUTH": ":".join(auth), "LOG_FORMAT": "json"})
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
        json_worker.stop()
    json_lines = [json.loads(line) for line in json_worker.log.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("task_id") and line.get("batch_size") for line in json_lines), "no JSON batch line"
    forgot = python_m_tasks("forget", "--user-id", "h4", "--reason", "PII scan")  # fills the erasure tables
    assert forgot.returncode == 0 and "forgot 1 users" in forgot.stdout, forgot.stderr
    with db.cursor() as cur:
        cur.execute("SELECT row_to_json(a)::text FROM erasure_audit a UNION ALL"
                    " SELECT row_to_json(t)::text FROM erasure_tombstones t")  # fmt: skip
        erasure_tables = "\n".join(r[0] for r in cur.fetchall())
        cur.execute(
            "SELECT row_to_json(t)::text FROM (SELECT * FROM user_logins) t"
            " UNION ALL SELECT row_to_json(d)::text FROM dead_letters d"
            " UNION ALL SELECT row_to_json(b)::text FROM ingest_batches b"
            " UNION ALL SELECT row_to_json(a)::text FROM erasure_audit a"
            " UNION ALL SELECT row_to_json(t)::text FROM erasure_tombstones t"
        )
        tables = "\n".join(r[0] for r in cur.fetchall())
    db.rollback()
    sqs, url = aws.client("sqs"), aws.queue_url(config.DEAD_LETTER_QUEUE)
    letters = json.dumps(sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]))
    assert "mask_and_insert" in flower_tasks and "s1:" in tables and "reason" in letters
    for place, text in {
        "worker log": worker.log.read_text(),
        "JSON worker log": json_worker.log.read_text(),
        "Flower's JSON log": (config.STACK_DIR / f"flower-{port}.log").read_text(),
        "Flower": flower_tasks,
        "tables": tables,
        "dead letters": letters,
    }.items():
        leaked = [value for value in raw if value in text]
        assert not leaked, f"{len(leaked)} raw values in {place}"
    assert "PII scan" in erasure_tables and "h4" not in erasure_tables  # the user id: a keyed hash only


@pytest.mark.parametrize("keys", ["development", "none", "copied-fingerprint-database", "copied-fingerprint-aws"])
def test_the_worker_refuses_to_start_outside_the_embedded_stack_without_a_real_key(
    tmp_path, database_url: str, keys: str
) -> None:
    """`copied-fingerprint-*`: the issue's recipe. The development key and its fingerprint
    copied into a folder of one's own (STACK_DIR), then a database named by DATABASE_URL,
    or real SQS: refused all the same."""
    from tasks.pipeline.keys import create_development_key

    key_file = tmp_path / "masking.keys"
    env = {**os.environ, "MASKING_KEYS": "", "MASKING_KEYS_FILE": str(key_file)}
    if keys == "development":
        create_development_key(key_file, tmp_path / "elsewhere")
    elif keys.startswith("copied-fingerprint"):
        create_development_key(key_file, tmp_path / "fake-stack")
        env["STACK_DIR"] = str(tmp_path / "fake-stack")
        if keys.endswith("database"):
            env["DATABASE_URL"] = database_url
        else:
            env.update(SQS_ENDPOINT_URL="", AWS_ACCESS_KEY_ID="AKIAEXAMPLEEXAMPLE", AWS_SECRET_ACCESS_KEY="x" * 40)
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
    why = {"copied-fingerprint-database": "DATABASE_URL", "copied-fingerprint-aws": "SQS_ENDPOINT_URL"}.get(keys, "")
    assert why in result.stderr, result.stderr[-2000:]
    for command in (
        ["unmask", "--field", "ip", "--reason", "x", "s1:AAAA"],
        ["rekey"],
        ["dev", "bench", "--events", "1"],
    ):
        refused = python_m_tasks(*command, env={**env, "MASKING_MODE": "siv"})
        assert refused.returncode == 2 and refused.stderr.startswith("refused:"), command
        assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_the_unmask_command_recovers_with_the_key_and_refuses_without(db) -> None:
    token = add_row(db, Masker(parse_key_ring(os.environ["MASKING_KEYS"]), "siv"), "199.172.111.135")
    ok = python_m_tasks("unmask", "--field", "ip", "--reason", "ticket SEC-9", token, env={"MASKING_MODE": "siv"})
    assert ok.returncode == 0 and ok.stdout.strip() == f"{token}\t199.172.111.135"
    other_key = python_m_tasks(
        "unmask", "--field", "ip", "--reason", "x", token, env={"MASKING_MODE": "siv", "MASKING_KEYS": KEY1}
    )
    assert other_key.returncode == 2 and other_key.stderr.startswith("refused:")
    assert "199.172.111.135" not in other_key.stdout + other_key.stderr
    one_way = python_m_tasks("unmask", "--field", "ip", "--reason", "x", token, env={"MASKING_MODE": "hmac"})
    assert one_way.returncode == 2 and "one-way" in one_way.stderr
    for reason, tokens in (("\u200b", [token]), ("ticket SEC-9", ["s1:FAKE"])):
        refused = python_m_tasks("unmask", "--field", "ip", "--reason", reason, *tokens, env={"MASKING_MODE": "siv"})
        assert refused.returncode == 2 and refused.stderr.startswith("refused:"), refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM unmask_audit WHERE token = %s", (token,))
        assert cur.fetchone()[0] == 1  # only the recovery that succeeded
    db.rollback()


# What a terminal obeys: C0 but newline and tab, DEL, C1 (a command's own layout keeps \n and \t).
TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_unmask_prints_a_stored_values_control_characters_escaped(db) -> None:
    """Rows stored before masked fields refused control characters: a device id that
    forges a line, an ip that sends OSC 52 (the clipboard). One escaped line each."""
    masker = Masker(parse_key_ring(os.environ["MASKING_KEYS"]), "siv")
    device_id, ip = "dev-1\n[2026-12-07 05:00:00] INFO forged line", "10.0.0.1\x1b]52;c;cm0gLXJmIH4=\x07\x9b2J"
    ip_token, device_token = masker.token("ip", ip), masker.token("device_id", device_id)
    with db, db.cursor() as cur:
        store.insert_rows(
            cur, [store.MaskedRow("legacy-1", "u", "ios", ip_token, device_token, None, 1, date(2026, 1, 1))]
        )
    for field, token, shown in (
        ("device_id", device_token, "dev-1\\n[2026-12-07 05:00:00] INFO forged line"),
        ("ip", ip_token, "10.0.0.1\\x1b]52;c;cm0gLXJmIH4=\\x07\\x9b2J"),
    ):
        result = python_m_tasks(
            "unmask", "--field", field, "--reason", "ticket SEC-27", token, env={"MASKING_MODE": "siv"}
        )
        assert result.returncode == 0, result.stderr
        assert not TERMINAL_CONTROLS.search(result.stdout + result.stderr), repr(result.stdout + result.stderr)
        assert result.stdout.splitlines() == [f"{token}\t{shown}"]


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


def test_no_secret_setting_in_inspect_conf_flower_or_the_log(database_url: str) -> None:
    """A worker given every kind of secret: `celery inspect conf`, Flower's worker view
    (its Config tab's data) and the worker's log show none of them."""
    secrets = {
        "FLOWER_BASIC_AUTH": "admin:s3cret-flower-pw",
        "DATABASE_URL": f"{database_url}{'&' if '?' in database_url else '?'}password=s3cret-db-pw",
        "AWS_SECRET_ACCESS_KEY": "s3cret-aws-key",
        "MASKING_KEYS": os.environ["MASKING_KEYS"],
    }
    hidden = ["s3cret-flower-pw", "s3cret-db-pw", "s3cret-aws-key", os.environ["MASKING_KEYS"].partition(":")[2]]
    worker = Worker(f"secrets-{os.getpid()}", env=secrets, args=["--loglevel=DEBUG"])
    port, auth = free_port(), ("privacy", "test-only-password")
    flower = start_flower(port, env={"FLOWER_BASIC_AUTH": ":".join(auth)})
    try:
        inspected = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tasks", "inspect", "conf", "-d", worker.node, "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            start_new_session=True,
        )
        conf = json.loads(inspected.stdout)[worker.node]
        shown = wait_until(
            lambda: (
                (found := flower_api(port, f"/api/workers?refresh=1&workername={worker.node}", auth))
                and found.get(worker.node, {}).get("conf")
                and json.dumps(found)
            ),
            timeout=60,
            what="Flower to show the worker's configuration",
        )
    finally:
        stop_process(flower)
        worker.stop()
    assert all(conf[name] == "********" for name in ("FLOWER_BASIC_AUTH", "DATABASE_URL", "MASKING_KEYS", "broker_url"))
    assert '"FLOWER_BASIC_AUTH": "********"' in shown
    settings = python_m_tasks("config", env=secrets)
    assert settings.returncode == 0 and "FLOWER_BASIC_AUTH" in settings.stdout
    places = {
        "inspect conf": inspected.stdout,
        "Flower": shown,
        "worker log": worker.log.read_text(),
        "python -m tasks config": settings.stdout + settings.stderr,
    }
    for place, text in places.items():
        leaked = [secret for secret in hidden if secret in text]
        assert not leaked, f"{len(leaked)} secrets in {place}"
