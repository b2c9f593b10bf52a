"""Cutting the source stream into batches, with a fake source queue: by count, by the
bytes kombu will send, and apart for a message too large for any batch."""

from __future__ import annotations

import json
import time

from tasks.pipeline.batching import RECEIVE_RESERVE, Batch, cut_batch, held_bytes, receive_batches, wire_size
from tasks.pipeline.records import SourceMessage
from tasks.pipeline.source import Received


def received(n: int, body: str = '{"user_id": "u"}') -> Received:
    return Received(SourceMessage(f"m-{n}", 1_700_000_000_000, body), f"r-{n}")


class FakeSource:
    """Hands out its messages `per_call` at a time, as ReceiveMessage would."""

    def __init__(self, messages: list[Received], per_call: int = 10, delay: float = 0.0) -> None:
        self.messages, self.per_call, self.waits, self.delay = list(messages), per_call, [], delay
        self.arrivals: dict[int, list[Received]] = {}  # call number -> messages that arrive then
        self.counts: list[int] = []

    def receive_up_to(self, count: int, wait: int = 0) -> list[Received]:
        self.messages += self.arrivals.pop(len(self.waits), [])
        self.waits.append(wait)
        self.counts.append(count)
        if wait and not self.messages:
            time.sleep(0.1)  # a long poll, shortened
        time.sleep(self.delay)
        got, self.messages = self.messages[: min(count, self.per_call)], self.messages[min(count, self.per_call) :]
        return got


def test_wire_size_counts_json_escaping_of_non_ascii() -> None:
    assert wire_size(received(1, "é" * 100)) > 600  # each é is \\u00e9 on the wire
    assert wire_size(received(1, "e" * 100)) < 200


def test_a_batch_is_cut_by_count() -> None:
    batch, rest = cut_batch([received(n) for n in range(12)], size=5, max_bytes=10**6)
    assert [r.message.message_id for r in batch.messages] == [f"m-{n}" for n in range(5)] and len(rest) == 7


def test_a_batch_is_cut_by_the_bytes_kombu_sends() -> None:
    body = json.dumps({"user_id": "é" * 1000})
    pending = [received(n, body) for n in range(10)]
    batch, rest = cut_batch(pending, size=500, max_bytes=3 * wire_size(pending[0]))
    assert len(batch.messages) == 3 and len(rest) == 7 and not batch.set_apart


def test_a_message_too_large_for_any_batch_is_set_apart_and_its_neighbours_go_on() -> None:
    pending = [received(0), received(1, "é" * 200_000), received(2)]
    batch, rest = cut_batch(pending, size=500, max_bytes=600_000)
    assert [r.message.message_id for r in batch.messages] == ["m-0", "m-2"]
    assert [(r.message.message_id, r.reason) for r in batch.set_apart] == [("m-1", "too large")] and rest == []


def test_a_message_the_source_set_apart_keeps_its_reason_and_its_neighbours_go_on() -> None:
    unusable = Received(SourceMessage("m-1", 0, ""), "r-1", "message body is not text")
    batch, rest = cut_batch([received(0), unusable, received(2)], size=500, max_bytes=600_000)
    assert [r.message.message_id for r in batch.messages] == ["m-0", "m-2"]
    assert batch.set_apart == [unusable] and rest == []


def test_receive_batches_drains_a_source_in_batches_and_long_polls_only_while_quiet() -> None:
    source = FakeSource([received(n) for n in range(23)])
    now = time.monotonic()
    batches = list(receive_batches(source, size=10, max_bytes=10**6, deadline=now + 60, idle_until=now, idle_wait=1))  # type: ignore[arg-type]
    assert [len(b.messages) for b in batches] == [10, 10, 3]
    # one long poll to start, none while messages come (the next fetch has started by then)
    assert source.waits[0] == 1 and set(source.waits[1:]) == {0}


def test_a_quiet_fetch_keeps_long_polling_until_the_next_fetch_starts() -> None:
    source = FakeSource([])
    started = time.monotonic()
    assert list(receive_batches(source, 10, 10**6, started + 60, idle_until=started + 0.3, idle_wait=1)) == []  # type: ignore[arg-type]
    assert time.monotonic() - started >= 0.3 and set(source.waits) == {1} and len(source.waits) >= 2


def test_a_message_that_arrives_during_a_long_poll_is_handed_off_within_max_wait() -> None:
    source = FakeSource([], per_call=1)
    started = time.monotonic()
    source.arrivals = {3: [received(0)]}  # arrives with the fourth quiet poll
    batches = list(receive_batches(source, 500, 10**6, started + 60, idle_until=started + 0.5, max_wait=0.1))  # type: ignore[arg-type]
    assert [[r.message.message_id for r in b.messages] for b in batches] == [["m-0"]]


def test_a_lingering_batch_asks_with_one_call_while_the_queue_is_empty() -> None:
    source = FakeSource([received(n) for n in range(30)])
    now = time.monotonic()
    batches = list(receive_batches(source, 500, 10**6, now + 60, idle_until=now, max_wait=0.2, max_held=10**12))  # type: ignore[arg-type]
    assert [len(b.messages) for b in batches] == [30]
    # the long poll, two rounds that find messages, one that does not, then single calls of ten
    # until the batch goes, and a last round after it
    assert (
        source.counts[:3] == [10, 490, 480]
        and set(source.counts[4:-1]) == {10}
        and len(source.counts) <= 5 + 0.2 / 0.02 + 2
    )


def test_a_quiet_long_poll_ends_about_when_the_next_fetch_starts() -> None:
    source = FakeSource([])
    now = time.monotonic()
    list(receive_batches(source, 10, 10**6, now + 60, idle_until=now + 1.5, idle_wait=20))  # type: ignore[arg-type]
    assert source.waits and max(source.waits) <= 2


def test_a_batch_is_handed_off_when_its_oldest_message_has_waited_max_wait() -> None:
    source = FakeSource([received(n) for n in range(1000)], per_call=1, delay=0.001)
    batches = receive_batches(source, 500, 10**6, time.monotonic() + 60, max_wait=0.05)  # type: ignore[arg-type]
    started = time.monotonic()
    first = next(batches)
    assert 0.05 <= time.monotonic() - started < 0.5 and 0 < len(first.messages) < 500


def test_receive_batches_stops_receiving_after_the_deadline_and_hands_out_what_it_holds() -> None:
    source = FakeSource([received(n) for n in range(100)], per_call=4, delay=0.01)
    batches = receive_batches(source, size=10, max_bytes=10**6, deadline=time.monotonic() + 0.2, max_wait=60)  # type: ignore[arg-type]
    sizes = [len(b.messages) for b in batches]
    assert sum(sizes) + len(source.messages) == 100 and len(source.messages) > 0


def test_an_empty_source_gives_no_batch() -> None:
    now = time.monotonic()
    assert list(receive_batches(FakeSource([]), 10, 10**6, now + 60, idle_until=now)) == []  # type: ignore[arg-type]
    assert list(receive_batches(FakeSource([]), 10, 10**6, now + 60, idle_wait=0)) == []  # type: ignore[arg-type]
    assert Batch().messages == [] and Batch().set_apart == []


def test_a_full_batch_fits_sqs_after_kombus_two_base64_layers() -> None:
    """The task message as kombu's SQS transport sends it: JSON args, base64 body inside a
    JSON envelope, the envelope in base64 again."""
    import base64

    from kombu.utils.json import dumps

    from tasks.pipeline.batching import MAX_BATCH_BYTES, SQS_MAX_MESSAGE_BYTES

    body = json.dumps({"user_id": "\u00e9" * 1000})
    pending = [received(n, body) for n in range(500)]
    batch, _ = cut_batch(pending, size=500, max_bytes=10**9)  # whatever the setting says
    args = dumps([[[r.message.as_args() for r in batch.messages]], {}, {"callbacks": None}])
    headers = {"argsrepr": f"batch of {len(batch.messages)} messages", "id": "x" * 36, "task": "tasks.mask_and_insert"}
    envelope = dumps({"body": base64.b64encode(args.encode()).decode(), "headers": headers, "properties": {}})
    assert sum(wire_size(r) for r in batch.messages) <= MAX_BATCH_BYTES
    assert len(base64.b64encode(envelope.encode())) < SQS_MAX_MESSAGE_BYTES


def test_a_fetch_holds_at_most_its_bytes_asking_for_less_as_it_holds_more() -> None:
    """A flood of 1 MiB bodies: what it holds plus 1 MiB for each message asked for stays
    within max_held, and every message still goes."""
    source = FakeSource([received(n, "x" * (RECEIVE_RESERVE - 100)) for n in range(40)])
    out: list[Received] = []
    asked: list[int] = []  # messages asked for plus those held, at each call
    got = [0]
    original = source.receive_up_to

    def receive_up_to(count: int, wait: int = 0) -> list[Received]:
        asked.append(count + got[0] - len(out))
        messages = original(count, wait)
        got[0] += len(messages)
        return messages

    source.receive_up_to = receive_up_to  # type: ignore[method-assign]
    now = time.monotonic()
    for batch in receive_batches(
        source, 500, 10**6, now + 60, idle_until=now, max_wait=5, max_held=12 * RECEIVE_RESERVE
    ):  # type: ignore[arg-type]
        out += batch.messages + batch.set_apart
    assert len(out) == 40 and max(asked) <= 12 and min(source.counts) >= 1


def test_the_budget_counts_bodies_in_memory() -> None:
    assert held_bytes([received(0, "x" * 1000), received(1, "\U0001f600" * 1000)]) >= 1000 + 4000
