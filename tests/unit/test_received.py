"""Whatever a ReceiveMessage response holds, each message costs itself alone: reading it
(identity, attributes, size), batching it, carrying it in a task's arguments and
preparing its row never raise, and every message ends as a row or a dead letter.

The property test runs PROPERTY_EXAMPLES examples (default 60, about a second);
`PROPERTY_EXAMPLES=10000 .venv/bin/python -m pytest tests/unit/test_received.py` runs
it long.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.pipeline.batching import TOO_LARGE, cut_batch
from tasks.pipeline.keys import parse_key_ring
from tasks.pipeline.masking import Masker
from tasks.pipeline.records import SourceMessage
from tasks.pipeline.service import prepare, read_args
from tasks.pipeline.source import (
    ORIGINAL_ATTRIBUTES,
    Received,
    identity,
    received_messages,
    redrive_attributes,
)

KEYS = parse_key_ring("1:" + "A" * 44)
MASKER = Masker(KEYS, "hmac")
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "60"))
GOOD_BODY = json.dumps({"user_id": "u", "ip": "1.2.3.4", "device_id": "d-1", "app_version": "2.3.0"})
SOURCE_REASONS = {
    "message has no usable SentTimestamp",
    "message body is not text",
    TOO_LARGE,
}


def raw(message_id: str = "sqs-id", body: Any = GOOD_BODY, attributes: Any = None, sent: Any = "1800000000000") -> dict:
    message = {"MessageId": message_id, "ReceiptHandle": f"r-{message_id}", "Body": body}
    if sent is not None:
        message["Attributes"] = {"SentTimestamp": sent}
    if attributes is not None:
        message["MessageAttributes"] = attributes
    return message


def strings(**values: str) -> dict[str, dict[str, str]]:
    return {name: {"DataType": "String", "StringValue": value} for name, value in values.items()}


# The crafted messages: each used to raise out of identity and stop the fetch.
CRAFTED = {
    "non-ascii signature": strings(source_message_id="x", source_sent_timestamp="1", source_message_signature="1:é"),
    "5,000-digit time": strings(
        source_message_id="x", source_sent_timestamp="9" * 5000, source_message_signature="1:" + "0" * 64
    ),
    "5,000-digit key version": strings(
        source_message_id="x", source_sent_timestamp="1", source_message_signature="9" * 5000 + ":" + "0" * 64
    ),
    "arabic-indic digits": strings(
        source_message_id="x", source_sent_timestamp="\u0661", source_message_signature="\u0661:" + "0" * 64
    ),
    "binary attributes": {name: {"DataType": "Binary", "BinaryValue": b"\xff"} for name in ORIGINAL_ATTRIBUTES},
    "a surrogate in the id": strings(
        source_message_id="\ud800", source_sent_timestamp="1", source_message_signature="1:" + "a" * 64
    ),
}


def test_each_crafted_original_is_ignored_and_the_message_keeps_its_own_id_and_time() -> None:
    for name, attributes in CRAFTED.items():
        assert identity(raw(attributes=attributes), KEYS) == ("sqs-id", 1_800_000_000_000), name


def test_a_signature_out_of_sign_s_format_is_false_not_an_error() -> None:
    text, signature = "t", KEYS.sign("t", "p")
    assert KEYS.verify(text, signature, "p")
    for forged in (signature.upper(), signature + "\n", " " + signature, "01" + signature[1:], signature[:-1], 7, None):
        assert not KEYS.verify(text, forged, "p"), forged


def test_crafted_messages_among_good_ones_cost_nothing_to_their_batchmates() -> None:
    crafted = raw("crafted", attributes=CRAFTED["non-ascii signature"])
    response = {"Messages": [raw(f"good-{i}") for i in range(9)] + [crafted]}
    got = received_messages(response, KEYS)
    assert [r.message.message_id for r in got] == [*(f"good-{i}" for i in range(9)), "crafted"]
    assert all(r.reason is None for r in got)


def test_a_message_with_unusable_own_fields_is_set_apart_with_a_reason_quoting_no_value() -> None:
    no_time, bad_time = raw("a", sent=None), raw("b", sent="12e3")
    not_text = raw("c", body={"user_id": "u"})
    got = received_messages({"Messages": [no_time, bad_time, not_text, raw("d")]}, KEYS)
    assert [(r.message.message_id, r.reason) for r in got] == [
        ("a", "message has no usable SentTimestamp"),
        ("b", "message has no usable SentTimestamp"),
        ("c", "message body is not text"),
        ("d", None),
    ]


def test_a_message_that_cannot_be_named_or_deleted_is_left_to_the_redrive_policy() -> None:
    nameless = {"ReceiptHandle": "r", "Body": GOOD_BODY}
    handleless = {"MessageId": "m", "Body": GOOD_BODY}
    response = {"Messages": [nameless, handleless, "junk", raw("ok")]}
    assert [r.message.message_id for r in received_messages(response, KEYS)] == ["ok"]


def test_a_task_argument_that_is_no_message_is_a_dead_letter_and_its_batchmates_go_on() -> None:
    good = SourceMessage("m-1", 1, GOOD_BODY).as_args()
    messages, refused = read_args([good, ["m-2", "1", "{}"], ["m-3", 1], None, ["m-4", True, "{}"]], "task-1")
    assert [m.message_id for m in messages] == ["m-1"]
    assert [(d.message.message_id, d.reason) for d in refused] == [
        (f"entry {i} of task task-1", "batch entry is not [message_id, sent_at_ms, body]") for i in (1, 2, 3, 4)
    ]


# Anything a hostile producer, or a broken SQS, could put in a ReceiveMessage response.
any_text = st.text(max_size=50) | st.text(alphabet="0123456789", min_size=1, max_size=6000)
near_signatures = st.builds(
    lambda version, mac: f"{version}:{mac}",
    st.sampled_from(["1", "2", "01", "", "\u0661", "9" * 5000]) | st.text(alphabet="0123456789", max_size=12),
    st.text(alphabet="0123456789abcdefABCDEF\u00e9\n", min_size=62, max_size=66) | st.text(max_size=70),
)
attribute_values = st.fixed_dictionaries(
    {"DataType": st.sampled_from(["String", "Number", "Binary", "String.custom"]) | st.text(max_size=10)},
    optional={
        "StringValue": any_text | near_signatures | st.integers() | st.none(),
        "BinaryValue": st.binary(max_size=20),
    },
)
attribute_maps = st.dictionaries(
    st.sampled_from(ORIGINAL_ATTRIBUTES) | st.text(max_size=10), attribute_values | st.text(max_size=5) | st.none()
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
records = st.dictionaries(
    st.sampled_from(["user_id", "ip", "device_id", "app_version", "locale", "device_type"]) | st.text(max_size=8),
    json_values,
)
bodies = records.map(json.dumps) | st.text(max_size=200) | st.none() | st.integers() | st.binary(max_size=20)
times = st.none() | any_text | st.integers()


@st.composite
def raw_messages(draw: st.DrawFn, index: int = 0) -> dict:
    message: dict[str, Any] = {"MessageId": f"m-{index}", "ReceiptHandle": f"r-{index}", "Body": draw(bodies)}
    message["Attributes"] = {"SentTimestamp": "1800000000000"}
    if draw(st.integers(0, 3)) == 0:  # mostly what SQS sends, sometimes anything
        message["MessageId"] = draw(st.text(max_size=130) | st.none() | st.integers())
        message["ReceiptHandle"] = draw(st.text(max_size=5) | st.none())
        message["Attributes"] = draw(st.dictionaries(st.just("SentTimestamp"), times) | st.none() | st.integers())
    if draw(st.booleans()) and isinstance(message["Body"], str):  # genuine originals, each perhaps altered
        signed = redrive_attributes(SourceMessage(draw(st.text(min_size=1, max_size=20)), 1, message["Body"]), KEYS)
        for name in ORIGINAL_ATTRIBUTES:
            change = draw(st.sampled_from(["keep", "value", "attribute", "drop"]))
            if change == "value":
                signed[name] = {**signed[name], "StringValue": draw(any_text | near_signatures)}
            elif change == "attribute":
                signed[name] = draw(attribute_values)
            elif change == "drop":
                del signed[name]
        message["MessageAttributes"] = signed
    else:
        message["MessageAttributes"] = draw(attribute_maps | st.none() | st.text(max_size=5))
    return message


def _usable(message: object) -> bool:
    """Whether the fetch can name and delete a message, so it must become a row or a dead letter."""
    if not isinstance(message, dict):
        return False
    message_id, receipt = message.get("MessageId"), message.get("ReceiptHandle")
    return isinstance(message_id, str) and 0 < len(message_id) <= 128 and isinstance(receipt, str) and bool(receipt)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw_messages() | st.none() | st.text(max_size=5), max_size=12), st.integers(1, 12))
def test_no_message_escapes_its_own_handling_from_receive_to_prepare(messages: list[Any], size: int) -> None:
    received = received_messages({"Messages": messages}, KEYS)
    assert len(received) == sum(_usable(m) for m in messages)

    handed: list[Received] = []
    set_apart: list[Received] = []
    pending = received
    while pending:
        batch, pending = cut_batch(pending, size, max_bytes=2_000)
        handed += batch.messages
        set_apart += batch.set_apart
    assert len(handed) + len(set_apart) == len(received)
    # Not even the catch-all: every message is read by a rule that foresaw it.
    assert {r.reason for r in set_apart} <= SOURCE_REASONS

    args = json.loads(json.dumps([r.message.as_args() for r in handed]))  # as the task message carries them
    batch_messages, refused = read_args(args, "task")
    assert refused == [] and len(batch_messages) == len(handed)
    ready, letters = prepare(batch_messages, MASKER)
    assert len(ready) + len(letters) == len(handed)


def test_redrive_reads_each_dead_letter_under_its_own_handling() -> None:
    from tasks.ops.redrive import RedriveReport, _originals

    letters = [raw(f"crafted-{name}", attributes=attributes) for name, attributes in CRAFTED.items()]
    letters += [raw("not-text", body=None), raw("no-time", sent="9" * 5000)]
    report = RedriveReport("login-queue-dlq", "login-queue")
    originals = _originals(letters, KEYS, report)
    assert [o.message_id for _, o in originals] == [f"crafted-{name}" for name in CRAFTED]
    assert report.problems == ["message body is not text", "message has no usable SentTimestamp"]
    assert str(report).splitlines()[-2:] == [
        "not moved: message body is not text",
        "not moved: message has no usable SentTimestamp",
    ]
