"""Dead letters go in SendMessageBatch calls that SQS will take: ten at most, under 1 MiB."""

from __future__ import annotations

from tasks.pipeline.deadletter import CALL_BUDGET, TOO_LARGE_BODY, DeadLetterQueue, _entry, _size, calls
from tasks.pipeline.keys import parse_key_ring
from tasks.pipeline.records import DeadLetter, SourceMessage

KEYS = parse_key_ring("1:" + "A" * 44)


def letter(n: int, body: str) -> dict:
    return _entry(n, DeadLetter(SourceMessage(f"m-{n}", 1, body), "too large"), True, KEYS)


def test_small_letters_go_ten_to_a_call() -> None:
    assert [len(c) for c in calls([letter(n, "{}") for n in range(23)])] == [10, 10, 3]


def test_large_letters_are_grouped_by_bytes() -> None:
    groups = calls([letter(n, "\u00e9" * 200_000) for n in range(5)])  # 400 kB each
    assert [len(g) for g in groups] == [2, 2, 1]
    assert all(sum(_size(e) for e in g) <= CALL_BUDGET for g in groups)


def test_a_body_near_sqss_limit_is_kept_whole_in_a_call_of_its_own() -> None:
    entry = letter(1, "x" * 1_040_000)
    assert entry["MessageBody"] == "x" * 1_040_000 and TOO_LARGE_BODY not in entry["MessageBody"]
    assert [len(g) for g in calls([letter(0, "{}"), entry, letter(2, "x" * 1_040_000)])] == [2, 1]


def test_a_letter_sqs_would_refuse_does_not_fit() -> None:
    class Queue(DeadLetterQueue):
        def __init__(self) -> None:
            self.keys, self.keep_body = KEYS, True

    queue = Queue()
    assert queue.fits(DeadLetter(SourceMessage("m", 1, "x" * 1_040_000), "user_id is missing"))
    assert not queue.fits(DeadLetter(SourceMessage("m", 1, "x" * (CALL_BUDGET - 100)), "user_id is missing"))
