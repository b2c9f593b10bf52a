"""The erasure's pure parts: the keyed hash, reading a user id, the cut-off, the request
file, and opening and rewriting a batch task message as kombu's SQS transport sends it."""

from __future__ import annotations

import base64
import json

import pytest

from tasks.ops.erasure import ErasureRefused, Request, TaskMessage, read_requests
from tasks.pipeline import erasure
from tasks.pipeline.keys import parse_key_ring

RING = parse_key_ring(f"1:{base64.b64encode(b'a' * 32).decode()},2:{base64.b64encode(b'b' * 32).decode()}")


def test_the_subject_hash_names_no_id_and_is_matched_under_every_version() -> None:
    hashed = erasure.subject_hash(RING, "alice")
    assert hashed.startswith("2:") and "alice" not in hashed and len(hashed) == 66
    both = erasure.subject_hashes(RING, ["alice", "alice"])
    assert set(both.values()) == {"alice"} and hashed in both and len(both) == 2
    assert erasure.subject_hash(RING, "Cafe\u0301") == erasure.subject_hash(RING, "Caf\u00e9")  # NFC, as stored
    other = parse_key_ring(f"2:{base64.b64encode(b'c' * 32).decode()}")
    assert erasure.subject_hash(other, "alice") != hashed  # keyed: no table of hashes of guessed ids


def test_user_of_reads_leniently_and_is_forgotten_only_before_the_erasure() -> None:
    assert erasure.user_of('{"user_id": "u1", "ip": 5}') == "u1"
    hostile = json.dumps({"user_id": "a" + "\u0301" * 90_000})  # NFC of it would cost seconds
    for body in ("not json", "[1]", '{"user_id": 7}', '{"user_id": ""}', None, "(body withheld)", hostile):
        assert erasure.user_of(body) is None
    erased = {"u1": 1_000}
    assert erasure.is_forgotten("u1", 999, erased) and not erasure.is_forgotten("u1", 1_000, erased)
    assert not erasure.is_forgotten("u2", 1, erased) and not erasure.is_forgotten(None, 1, erased)


def test_a_request_file_needs_a_reason_for_every_line() -> None:
    lines = ["a\tticket 1\n", "\n", "b\n", "c\tticket 3\r\n"]
    assert read_requests(lines, "batch") == [Request("a", "ticket 1"), Request("b", "batch"), Request("c", "ticket 3")]
    with pytest.raises(ErasureRefused, match="line 3"):
        read_requests(lines, None)


def task_body(entries: list) -> str:
    body = base64.b64encode(json.dumps([[entries], {}, {"chain": None}]).encode()).decode()
    envelope = {"body": body, "headers": {"argsrepr": f"batch of {len(entries)} messages", "id": "t"}}
    return base64.b64encode(json.dumps(envelope).encode()).decode()


def test_a_batch_message_is_sent_again_without_the_forgotten_users_events() -> None:
    entries = [["m1", 1, '{"user_id": "gone"}'], ["m2", 2, '{"user_id": "kept"}'], ["m3", 3, "not json"]]
    task = TaskMessage.decode(task_body(entries))
    assert task is not None and task.users() == ["gone", "kept", None]
    rest = TaskMessage.decode(task.without({"gone"}))
    assert rest is not None and rest.entries() == entries[1:] and rest.body[1:] == [{}, {"chain": None}]
    assert rest.envelope["headers"] == {"argsrepr": "batch of 2 messages", "id": "t"}
    assert task.without({"gone", "kept", None}) is None  # type: ignore[arg-type]
    for raw in ("not base64!", base64.b64encode(b"{}").decode(), task_body([])[:-4], None):
        assert TaskMessage.decode(raw) is None
