"""Which id and time a received message is written under: its own, unless it carries
originals whose signature holds for this very body."""

from __future__ import annotations

import json

from tasks.pipeline.keys import parse_key_ring
from tasks.pipeline.records import SourceMessage
from tasks.pipeline.source import identity, redrive_attributes

KEYS = parse_key_ring("1:" + "A" * 44)
ORIGINAL = SourceMessage("original-id", 1_700_000_000_000, json.dumps({"user_id": "u"}))


def received(body: str, attributes: dict | None = None) -> dict:
    raw = {"MessageId": "sqs-id", "Attributes": {"SentTimestamp": "1800000000000"}, "Body": body}
    return {**raw, "MessageAttributes": attributes} if attributes is not None else raw


def test_a_message_without_originals_keeps_its_own_id_and_time() -> None:
    assert identity(received(ORIGINAL.body), KEYS) == ("sqs-id", 1_800_000_000_000)


def test_signed_originals_are_trusted_for_their_own_body() -> None:
    raw = received(ORIGINAL.body, redrive_attributes(ORIGINAL, KEYS))
    assert identity(raw, KEYS) == ("original-id", 1_700_000_000_000)


def test_a_genuine_signature_on_another_body_is_not_trusted() -> None:
    raw = received(json.dumps({"user_id": "forger"}), redrive_attributes(ORIGINAL, KEYS))
    assert identity(raw, KEYS) == ("sqs-id", 1_800_000_000_000)


def test_an_unsigned_or_altered_original_is_not_trusted() -> None:
    attributes = redrive_attributes(ORIGINAL, KEYS)
    unsigned = {k: v for k, v in attributes.items() if k != "source_message_signature"}
    other_id = {**attributes, "source_message_id": {"DataType": "String", "StringValue": "victim"}}
    other_time = {**attributes, "source_sent_timestamp": {"DataType": "Number", "StringValue": "1"}}
    non_ascii = {**attributes, "source_message_signature": {"DataType": "String", "StringValue": "\u0661:00"}}
    for forged in (unsigned, other_id, other_time, non_ascii):
        assert identity(received(ORIGINAL.body, forged), KEYS) == ("sqs-id", 1_800_000_000_000)


def test_a_signature_of_another_key_is_not_trusted() -> None:
    other = parse_key_ring("1:" + "B" * 44)
    raw = received(ORIGINAL.body, redrive_attributes(ORIGINAL, other))
    assert identity(raw, KEYS)[0] == "sqs-id"
