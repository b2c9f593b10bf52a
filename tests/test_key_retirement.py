"""`rekey --retire VERSION`: what used the version is re-masked, duplicates stay visible,
the version leaves the key file and its tokens can no longer be unmasked; and it refuses
while a row, a queued message or a recent tombstone still needs the version."""

from __future__ import annotations

import base64
from datetime import date
from pathlib import Path

import pytest

import celeryconfig as config
from devkit import seed
from tasks.broker import aws
from tasks.ops.recovery import RecoveryRefused
from tasks.ops.retirement import retire
from tasks.pipeline import store
from tasks.pipeline.deadletter import DeadLetterQueue
from tasks.pipeline.keys import MaskingKeyError, load_key_ring, parse_key_ring
from tasks.pipeline.masking import Masker
from tasks.pipeline.records import DeadLetter, SourceMessage
from tests.helpers import python_m_tasks

pytestmark = pytest.mark.usefixtures("clean")
KEY1 = f"1:{base64.b64encode(b'r' * 32).decode()}"
KEY2 = f"2:{base64.b64encode(b'R' * 32).decode()}"


def add(db: store.Connection, rows: list[tuple[str, str | None, str | None]]) -> None:
    with db, db.cursor() as cur:
        store.insert_rows(
            cur, [store.MaskedRow(mid, "u", "ios", ip, dev, None, 1, date(2026, 1, 1)) for mid, ip, dev in rows]
        )


def tokens(db: store.Connection) -> dict[str, tuple[str, str | None]]:
    with db.cursor() as cur:
        cur.execute("SELECT message_id, masked_ip, masked_device_id FROM user_logins")
        found = {mid: (ip, dev) for mid, ip, dev in cur.fetchall()}
    db.rollback()
    return found


def test_a_retired_version_is_gone_and_its_tokens_cannot_be_unmasked(db, tmp_path: Path) -> None:
    old, both = Masker(parse_key_ring(KEY1), "siv"), Masker(parse_key_ring(f"{KEY1},{KEY2}"), "siv")
    same_ip = old.mask_ip("192.0.2.44")[0]
    add(
        db,
        [
            ("r-0", same_ip, old.mask_device_id("d-0")),
            ("r-1", same_ip, None),
            ("r-2", old.mask_ip("192.0.2.45")[0], None),
            ("r-3", both.mask_ip("192.0.2.44")[0], both.mask_device_id("d-0")),  # the same values, newest key
        ],
    )
    keys = tmp_path / "masking.keys"
    keys.write_text(f"{KEY1}\n{KEY2}\n")
    keys.chmod(0o600)
    env = {"MASKING_KEYS": "", "MASKING_KEYS_FILE": str(keys), "MASKING_MODE": "siv"}

    result = python_m_tasks("rekey", "--retire", "1", env=env)
    assert result.returncode == 0, result.stderr
    assert "retired key version 1: re-masked 3 rows" in result.stdout
    assert f"removed version 1 from {keys}" in result.stdout and "Kubernetes secret" in result.stdout

    after = tokens(db)
    assert all(t is None or t.startswith("s2:") for pair in after.values() for t in pair)
    assert after["r-0"][0] == after["r-1"][0] == after["r-3"][0] != after["r-2"][0]  # duplicates stay visible
    assert after["r-0"][1] == after["r-3"][1]
    ring = load_key_ring("", str(keys))
    assert set(ring.keys) == {2} and keys.stat().st_mode & 0o777 == 0o600
    with pytest.raises(MaskingKeyError, match="version 1 is not loaded"):
        Masker(ring, "siv").unmask("ip", same_ip)
    add(db, [("r-4", same_ip, None)])  # an old token put back by hand: still no way to recover it
    unmask = python_m_tasks("unmask", "--field", "ip", "--reason", "after retirement", same_ip, env=env)
    assert unmask.returncode == 2 and unmask.stderr.startswith("refused:") and "192.0.2.44" not in unmask.stdout
    again = python_m_tasks("rekey", "--retire", "1", env=env)
    assert again.returncode == 2 and "key version 1 is not in the key ring" in again.stderr


def empty(queue: str) -> None:
    """Receive and delete every message of a queue (a purge may not be repeated within 60 s)."""
    sqs, url = aws.client("sqs"), aws.queue_url(queue)
    while got := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages"):
        for m in got:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def test_retiring_is_refused_while_anything_needs_the_version(db) -> None:
    ring = parse_key_ring(f"{KEY1},{KEY2}")
    siv, hmac = Masker(ring, "siv"), Masker(ring, "hmac")
    with pytest.raises(RecoveryRefused, match="is the newest"):
        retire(db, siv, 2)
    with pytest.raises(RecoveryRefused, match="not in the key ring"):
        retire(db, siv, 7)
    add(db, [("h-0", Masker(parse_key_ring(KEY1), "hmac").mask_ip("192.0.2.9")[0], None)])
    with pytest.raises(RecoveryRefused, match=r"1 rows still hold tokens of key version 1 \(hmac"):
        retire(db, hmac, 1)
    with db, db.cursor() as cur:
        cur.execute("TRUNCATE user_logins")

    seed.send(config.SOURCE_QUEUE, ["{}"])
    with pytest.raises(RecoveryRefused, match="login-queue is not empty"):
        retire(db, hmac, 1)
    empty(config.SOURCE_QUEUE)

    signed_v1 = DeadLetterQueue(config.DEAD_LETTER_QUEUE, parse_key_ring(KEY1), True)
    signed_v1.send([DeadLetter(SourceMessage("old-signature", 1_700_000_000_000, "{}"), "a reason")])
    with pytest.raises(RecoveryRefused, match="1 dead letters in login-queue-dlq are signed with key version 1"):
        retire(db, hmac, 1)
    empty(config.DEAD_LETTER_QUEUE)

    with db, db.cursor() as cur:
        cur.execute("INSERT INTO erasure_tombstones VALUES (%s, now())", ("1:" + "ab" * 32,))
    with pytest.raises(RecoveryRefused, match="1 tombstones of key version 1 are younger than 14 days"):
        retire(db, hmac, 1)
    with db, db.cursor() as cur:
        cur.execute("UPDATE erasure_tombstones SET erased_at = now() - interval '15 days'")
    done = retire(db, hmac, 1)  # this process's keys come from MASKING_KEYS: no file is touched
    assert done.tombstones_dropped == 1 and done.removed_from is None and "MASKING_KEYS" in str(done.not_removed)
