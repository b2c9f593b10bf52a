"""The pure parts of monitoring: histogram buckets, reason classes, the oldest-age
estimate, the health line, the metrics server's auth rules and the JSON log line."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import threading
import time

import pytest

from tasks.ops import exporter, health, logs, metrics
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


LONG = "prom:a-long-enough-password"


@pytest.mark.parametrize(
    ("address", "auth", "refused"),
    [
        ("127.0.0.1", [], False),
        ("::1", [], False),
        ("127.0.0.1", ["prom:short"], False),  # on the loopback a short password is allowed, as Flower's
        ("0.0.0.0", [], True),
        ("", [], True),
        ("0.0.0.0", [LONG], False),
        ("0.0.0.0", ["prom:short"], True),
        ("0.0.0.0", [" : "], True),
        ("127.0.0.1", [" : "], True),  # an empty entry is never auth
        ("0.0.0.0", [LONG, ":" + "x" * 20], True),
        ("0.0.0.0", ["no-colon"], True),
    ],
)
def test_the_metrics_server_follows_flowers_rules(address: str, auth: list[str], refused: bool) -> None:
    assert (exporter.refusal(address, auth) is not None) is refused


def basic(credential: str) -> str:
    return "Basic " + base64.b64encode(credential.encode()).decode()


def test_the_metrics_server_checks_basic_auth() -> None:
    assert exporter.authorized(basic("prom:secret"), ["prom:secret"])
    assert exporter.authorized(None, [])  # no auth configured (loopback only)
    for header in (None, "", "Basic !!!", "Bearer x", basic("prom:wrong"), basic("prom:secret,other:pw")):
        assert not exporter.authorized(header, ["prom:secret"])
    both = ["prom:secret", "other:password"]
    assert exporter.authorized(basic("prom:secret"), both) and exporter.authorized(basic("other:password"), both)
    assert not exporter.authorized(basic("prom:secret,other:password"), both)


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


def test_a_worker_is_alive_while_its_heartbeats_arrive_and_dead_two_intervals_after() -> None:
    from celery.events.state import State

    from tasks.ops import workers

    state = State()
    now = 1_000_000.0
    for name, last in (("a@h", now - 1), ("b@h", now - 2 * 2.0 - workers.DELIVERY_SLACK - 1)):
        state.get_or_create_worker(name, freq=2.0)[0].heartbeats.append(last)
    state.get_or_create_worker("c@h", freq=2.0)  # never heard a heartbeat from
    assert workers.alive(state, now) == 1  # b's last heartbeat is past 2 intervals and the slack: killed
    assert workers.alive(state, now + 60) == 0  # no goodbye needed


def test_the_queue_gauges_come_from_a_cache_a_scrape_never_waits_on() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    calls: list[str] = []
    release = threading.Event()

    def hanging(name: str) -> dict[str, int]:
        calls.append(name)
        if len(calls) > 1:
            release.wait(60)  # SQS frozen after the first round's first call: the thread waits, not the scrape
        raise OSError("frozen")

    cache = metrics.QueueCache(queues=lambda: ["login-queue"], read=hanging, every=0.05)
    registry = CollectorRegistry()
    registry.register(metrics.QueueCollector(metrics.PipelineCollector(lambda: "postgresql://nowhere"), cache))
    started = time.monotonic()
    text = generate_latest(registry).decode()
    assert time.monotonic() - started < metrics.FIRST_WAIT + 1
    assert "login_pipeline_sqs_up 0.0" in text and "login_pipeline_queue_cache_age_seconds -1.0" in text
    cache.depths = metrics.Depths({"login-queue": {"visible": 3, "in_flight": 1}}, time.monotonic())
    cache.failed, cache.round_started = False, None  # a round answered
    text = generate_latest(registry).decode()
    assert "login_pipeline_sqs_up 1.0" in text
    assert 'login_pipeline_queue_messages{queue="login-queue",state="visible"} 3.0' in text
    cache.round_started = time.monotonic() - metrics.HUNG_SECONDS - 1  # a call that hangs
    text = generate_latest(registry).decode()
    assert "login_pipeline_sqs_up 0.0" in text and "login_pipeline_queue_messages{" not in text
    cache.round_started = None
    cache.depths = metrics.Depths(cache.depths.queues, time.monotonic() - metrics.STALE_SECONDS - 1)
    text = generate_latest(registry).decode()
    assert "login_pipeline_sqs_up 0.0" in text and "login_pipeline_queue_messages{" not in text
    cache.stop()
    release.set()


def test_status_names_the_ledgers_dead_letters_and_the_queues_apart() -> None:
    from tasks.ops import status

    report = {
        "queues": {"login-queue-dlq": {"visible": 417, "in_flight": 0}},
        "database": {"rows": 5, "dead_letters": 37, "duplicates": 0, "batches": 3},
    }
    line = status.dead_letters_line(report)
    assert line.startswith("dead letters: 37 recorded in the ledger (ever); 417 in login-queue-dlq now")
    assert "more than recorded" in line
    report["queues"]["login-queue-dlq"] = {"unreachable": "SQS, as above"}
    assert "unreachable" not in status.dead_letters_line(report)  # its own line says so, once
