"""A large body travels as its event's fields alone (tasks/pipeline/oversize.py): the same
event, so the same row; an invalid one keeps its whole body and the record's reason."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.pipeline.keys import parse_key_ring
from tasks.pipeline.oversize import COMPACT_ABOVE, compact
from tasks.pipeline.records import Invalid, SourceMessage, parse_event
from tasks.pipeline.source import received_messages

KEYS = parse_key_ring("1:" + "A" * 44)
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "60"))
PAD = "x" * 1_040_000


def message(body: str) -> SourceMessage:
    return SourceMessage("m-1", 1_700_000_000_000, body)


text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)
field_values = {
    "user_id": st.one_of(text.filter(str.strip), st.integers(0, 10**30)),
    "app_version": st.sampled_from(["2.3.0", "0.96", "1", None]),
    "device_type": st.one_of(text, st.none()),
    "ip": st.one_of(st.ip_addresses().map(str), st.none()),
    "locale": st.one_of(text, st.none()),
    "device_id": st.one_of(text, st.integers(-(10**20), 10**20), st.none()),
}


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.fixed_dictionaries({}, optional=field_values), st.dictionaries(st.text(max_size=5), text, max_size=3))
def test_a_compacted_event_is_the_same_event(fields: dict, extra: dict) -> None:
    record = {**{f"x-{k}": v for k, v in extra.items()}, **fields, "pad": PAD}
    original = message(json.dumps(record, ensure_ascii=False))
    try:
        event = parse_event(original)
    except Invalid as exc:
        with pytest.raises(Invalid, match=str(exc)):
            compact(original)
        return
    compacted = compact(original)
    assert len(compacted.body) < COMPACT_ABOVE and "pad" not in compacted.body
    assert parse_event(compacted) == event


def test_numbers_travel_as_written() -> None:
    body = '{"user_id": 00, "device_id": -0, "pad": "' + PAD + '"}'
    with pytest.raises(Invalid):  # not JSON: a leading zero
        compact(message(body))
    body = '{"user_id": 12345678901234567890123, "device_id": -0, "pad": 1e999, "other": "' + PAD + '"}'
    assert parse_event(compact(message(body))) == parse_event(message(body))


def test_small_bodies_travel_as_they_are() -> None:
    small = message(json.dumps({"user_id": "u", "pad": "x" * 100}))
    assert compact(small) is small


def raw(body: str) -> dict:
    return {"MessageId": "m-1", "ReceiptHandle": "r", "Body": body, "Attributes": {"SentTimestamp": "1700000000000"}}


def test_the_fetch_keeps_a_large_valid_events_fields_and_a_large_invalid_ones_body() -> None:
    valid = json.dumps({"user_id": "alice", "ip": "10.0.0.1", "pad": PAD})
    invalid = json.dumps({"ip": "10.0.0.1", "pad": PAD})
    dup = '{"user_id": "a", "pad": "' + PAD + '", "pad": 1}'
    got = received_messages({"Messages": [raw(valid), raw(invalid), raw(dup)]}, KEYS)
    assert got[0].reason is None and json.loads(got[0].message.body) == {"user_id": "alice", "ip": "10.0.0.1"}
    assert (got[1].reason, got[1].message.body) == ("user_id is missing", invalid)
    assert (got[2].reason, got[2].message.body) == ("body has a key twice", dup)
