"""`redrive`'s filter (tasks/ops/redrive.py): reason labels over the reasons the pipeline
writes (tasks/pipeline/reasons.py), the time bounds, and the --since/--until values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
import pytest

from tasks.cli.common import MOMENT
from tasks.ops.redrive import Filter
from tasks.pipeline.reasons import SELECTABLE, labels, redrive_class


@pytest.mark.parametrize(
    ("reason", "label", "also"),
    [
        ("gave up after 12 retries: OperationalError", "transient", {"batch_given_up"}),
        ("gave up after 3 retries: ClientError AWS.SimpleQueueService.NonExistentQueue", "transient", set()),
        ("permanent failure: ProgrammingError (SQLSTATE 42P01)", "permanent", {"batch_given_up"}),
        ("body is not JSON", "not_json", {"malformed"}),
        ("user_id is missing", "missing_field", {"malformed"}),
        ("locale is longer than 32 characters", "too_long", {"malformed"}),
        ("app_version is not a dotted number of up to three parts", "invalid_field", {"malformed"}),
        ("record could not be masked: ValueError", "unmaskable", set()),
        ("database refused the record: CheckViolation (SQLSTATE 23514)", "database_refused", set()),
        (None, "moved_by_sqs", set()),
        ("a producer's own words", "other", set()),
    ],
)
def test_each_reason_the_pipeline_writes_has_its_label(reason: str | None, label: str, also: set[str]) -> None:
    assert redrive_class(reason) == label
    assert labels(reason) >= {label, *also}
    assert labels(reason) <= set(SELECTABLE)


def test_transient_picks_what_an_outage_left_and_nothing_a_record_caused() -> None:
    where = Filter(frozenset({"transient"}))
    assert where.matches("gave up after 12 retries: OperationalError", 1)
    for reason in ("permanent failure: Example", "body is not JSON", "user_id is missing", None):
        assert not where.matches(reason, 1)


def test_the_time_bounds_are_inclusive_and_a_letter_without_a_time_matches_none() -> None:
    where = Filter(since_ms=1000, until_ms=2000)
    assert [where.matches("x", t) for t in (999, 1000, 2000, 2001, None)] == [False, True, True, False, False]
    assert Filter().matches(None, None)
    assert str(where) == "--since 1970-01-01T00:00:01Z --until 1970-01-01T00:00:02Z"


def test_a_time_is_iso_in_utc_unless_it_says_otherwise_or_an_age() -> None:
    assert MOMENT.convert("2026-12-07T14:05", None, None) == datetime(2026, 12, 7, 14, 5, tzinfo=UTC)
    assert MOMENT.convert("2026-12-07T14:05:00+01:00", None, None) == datetime(2026, 12, 7, 13, 5, tzinfo=UTC)
    assert MOMENT.convert("2026-12-07", None, None) == datetime(2026, 12, 7, tzinfo=UTC)
    before = datetime.now(UTC)
    moment = MOMENT.convert("2h", None, None)
    assert before - timedelta(hours=2) <= moment <= datetime.now(UTC) - timedelta(hours=2)
    for bad in ("yesterday", "2026-13-01", "2h ago", "-5m", ""):
        with pytest.raises(click.BadParameter):
            MOMENT.convert(bad, None, None)
