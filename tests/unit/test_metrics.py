"""The pure parts of monitoring: histogram buckets, reason classes, the oldest-age
estimate, the health line, the metrics server's auth rules and the JSON log line."""

from __future__ import annotations

import base64
import io
import json
import logging
import os

import pytest

from tasks.ops import exporter, health, logs
from tasks.ops.metrics import SPECS, metrics_table, oldest_age
from tasks.pipeline import histogram, store
from tasks.pipeline.reasons import CLASSES, reason_class


def test_bucket_counts_are_per_bucket_and_cumulative_for_prometheus() -> None:
    bounds = (0.1, 1.0, 10.0)
    assert histogram.counts([0.05, 0.1, 0.5, 3, 11, 99], bounds) == [2, 1, 1, 2]  # le 0.1 includes 0.1
    assert histogram.cumulative([2, 1, 1, 2], bounds) == [("0.1", 2), ("1.0", 3), ("10.0", 4), ("+Inf", 6)]
    assert histogram.cumulative([], bounds)[-1] == ("+Inf", 0)  # no batch yet


def test_the_ledger_sums_bucket_arrays_of_any_length() -> None:
    assert store._sum_arrays([[1, 2], None, [0, 1, 5]]) == [1, 3, 5]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("body is not JSON", "not_json"),
        ("body is not a JSON object", "not_object"),
        ("user_id is missing", "missing_field"),
        ("ip is not a string", "invalid_field"),
        ("app_version is a number with a fraction; send it as text", "invalid_field"),
        ("device_id contains a NUL byte", "invalid_field"),
        ("locale is not valid Unicode text", "invalid_field"),
        ("app_version has a part out of range", "invalid_field"),
        ("app_version is not a dotted number of up to three parts", "invalid_field"),
        ("device_type is longer than 32 characters", "too_long"),
        ("ip is longer than 200 bytes once normalised", "too_long"),
        ("too large", "too_large"),
        ("record could not be masked: UnicodeError", "unmaskable"),
        ("database refused the record: check_violation (no_xx)", "database_refused"),
        ("permanent failure: ProgrammingError (SQLSTATE 42P01)", "batch_given_up"),
        ("gave up after 8 retries: OperationalError", "batch_given_up"),
        ("app_version is a number in exponent notation; send it as text", "invalid_field"),
        ("user_id is not a finite number", "invalid_field"),
        ("locale contains a control or bidirectional formatting character", "invalid_field"),
        ("body has the key ip twice", "invalid_field"),
        ("body has a key twice", "invalid_field"),
        ("message has no usable SentTimestamp", "unusable_message"),
        ("message body is not text", "unusable_message"),
        ("batch entry is not [message_id, sent_at_ms, body]", "unusable_message"),
        ("198.51.100.7 is whatever a future rule says", "other"),
    ],
)
def test_every_reason_falls_in_a_bounded_class(reason: str, expected: str) -> None:
    assert reason_class(reason) == expected and expected in CLASSES


def ledger(last_fetch: float | None, newest: float | None) -> store.Ledger:
    return store.Ledger({}, [], 0.0, [], None, {}, last_fetch, newest)


def test_the_oldest_age_estimate() -> None:
    now = 1_000.0
    assert oldest_age(0, ledger(990, 900), now) == 0  # nothing waits
    assert oldest_age(5, ledger(990, 900), now) == 100  # the newest event the last fetch took
    assert oldest_age(5, ledger(990, None), now) == 10  # that fetch took nothing: since it started
    assert oldest_age(5, ledger(None, None), now) == 0  # no fetch yet: unknown
    assert oldest_age(5, ledger(400, None), now) == 600  # no fetch for 10 minutes: it grows


def test_the_metric_names_follow_prometheus_conventions() -> None:
    for spec in SPECS:
        assert spec.name.startswith("login_pipeline_") and not spec.name.endswith("_total")
        assert not spec.bounds or spec.name.endswith("_seconds")  # base units in the name
    assert "login_pipeline_dead_letters_total" in metrics_table()


def test_health_says_what_it_checked_and_how_old(tmp_path, monkeypatch) -> None:
    beat = tmp_path / "beat.alive"
    monkeypatch.setattr(health.config, "BEAT_HEALTH_FILE", str(beat))
    missing = health.check("beat", 60)
    assert not missing.alive and "no heartbeat file" in missing.line and "BEAT_HEALTH_FILE" in missing.line
    beat.touch()
    os.utime(beat, (1000, 1000))
    fresh, stale = health.check("beat", 60, now=1012.5), health.check("beat", 10, now=1012.5)
    assert fresh.alive and fresh.line.startswith("beat alive: heartbeat of beat's scheduler 12.5 s ago (limit 60 s")
    assert not stale.alive and stale.line.startswith("beat not alive: heartbeat of beat's scheduler 12.5 s ago")


@pytest.mark.parametrize(
    ("address", "auth", "refused"),
    [
        ("127.0.0.1", "", False),
        ("::1", "", False),
        ("0.0.0.0", "", True),
        ("", "", True),
        ("0.0.0.0", "prom:secret", False),
        ("0.0.0.0", "no-colon", True),
    ],
)
def test_the_metrics_server_follows_flowers_rules(address: str, auth: str, refused: bool) -> None:
    assert (exporter.refusal(address, auth) is not None) is refused


def test_the_metrics_server_checks_basic_auth() -> None:
    good = "Basic " + base64.b64encode(b"prom:secret").decode()
    assert exporter.authorized(good, "prom:secret")
    assert exporter.authorized(None, "")  # no auth configured (loopback only)
    for header in (None, "", "Basic !!!", "Bearer x", "Basic " + base64.b64encode(b"prom:wrong").decode()):
        assert not exporter.authorized(header, "prom:secret")


def test_json_logs_carry_fields_and_no_escaped_text(monkeypatch) -> None:
    monkeypatch.setattr(logs.config, "LOG_FORMAT", "json")
    stream = io.StringIO()
    logger = logging.getLogger("test.json")
    logger.handlers, logger.propagate = [logging.StreamHandler(stream)], False
    logger.setLevel(logging.INFO)
    logs.use_configured_format(logger)
    logger.info("batch committed: %d received", 3, extra={"batch_size": 3, "duration_seconds": 0.25})
    line = json.loads(stream.getvalue())
    assert line["message"] == "batch committed: 3 received" and line["level"] == "INFO"
    assert line["batch_size"] == 3 and line["duration_seconds"] == 0.25 and line["logger"] == "test.json"
    logger.info("ünïcode stays as written")
    assert "ünïcode" in stream.getvalue()  # not \\u escapes, which a PII scan would miss
