"""The metrics an operator alerts on, seen to move on a running pipeline, and beat's probe.

`python -m tasks metrics` (the server for when Flower is not running) is scraped as
Prometheus would, with basic auth, before and while a real worker with embedded beat
drains events sent to the test stack's LocalStack, poison events among them. Flower's
/metrics serves the same collectors (tests/test_monitoring.py checks the names there).
"""

from __future__ import annotations

import base64
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

import celeryconfig as config
from devkit import runner, seed
from tasks.ops.metrics import SPECS
from tests.helpers import Worker, free_port, kill_group, python_m_tasks, spawn, stop_process, wait_until

pytestmark = pytest.mark.usefixtures("test_stack")
AUTH = "prometheus:test-only-password"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, auth: str | None = AUTH) -> Samples:
    """Every sample on /metrics, keyed by (name, sorted labels); HTTPError if refused."""
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=20) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def queue(samples: Samples, name: str, state: str = "visible") -> float:
    return value(samples, "login_pipeline_queue_messages", queue=name, state=state)


def scrape_until(port: int, condition: Callable[[Samples], bool], timeout: float, what: str) -> Samples:
    def scraped() -> Samples | None:
        samples = scrape(port)
        return samples if condition(samples) else None

    return wait_until(scraped, timeout=timeout, what=what)


@pytest.fixture
def metrics_server():
    port = free_port()
    process = spawn(
        [sys.executable, "-m", "tasks", "metrics", "--port", str(port)],
        config.STACK_DIR / f"metrics-{port}.log",
        {"METRICS_BASIC_AUTH": AUTH, "LOG_FORMAT": "json"},
    )
    try:
        wait_until(lambda: _healthy(port), timeout=30, what="the metrics server")
        yield port
    finally:
        stop_process(process)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=5) as response:
            return response.read() == b"OK"
    except OSError:
        return False


POISON = ["not json at all", "[1, 2]", json.dumps({"ip": "203.0.113.77", "device_id": "no-user"})]


def test_each_metric_moves_on_a_running_pipeline(clean, metrics_server) -> None:
    port = metrics_server
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(port, auth=None)
    assert refused.value.code == 401
    # The queue gauges come from a background round of SQS calls: on a loaded machine the
    # first may take longer than the first scrape waits for it (sqs_up 0 until it answers).
    before = scrape_until(port, lambda s: value(s, "login_pipeline_sqs_up") == 1, 30, "SQS's first answer")
    assert value(before, "login_pipeline_database_up") == 1
    assert value(before, "login_pipeline_freshness_seconds_count") == 0
    names = {name for name, _ in before}
    # The oldest age needs the ledger read first; workers alive are Flower's /metrics only.
    absent = {"login_pipeline_oldest_message_age_seconds", "login_pipeline_workers_alive"}
    assert {spec.name for spec in SPECS if spec.name not in absent} <= {
        n.removesuffix("_total").removesuffix("_count") for n in names
    }

    bodies = seed.sample_bodies()[:60] + POISON
    seed.send(config.SOURCE_QUEUE, bodies)
    backlog = scrape_until(port, lambda s: queue(s, config.SOURCE_QUEUE) > 0, 30, "a backlog")
    assert ("login_pipeline_oldest_message_age_seconds", (("queue", config.SOURCE_QUEUE),)) in backlog

    started = time.time()
    worker = Worker(f"metrics-{free_port()}", beat=True)
    try:
        counted = len(bodies)
        # beat's tick is a fetch's start, noted when that fetch ends (it long-polls for a while)
        after = scrape_until(
            port,
            lambda s: (
                value(s, "login_pipeline_received_total") >= counted
                and value(s, "login_pipeline_last_fetch_timestamp_seconds") >= started
            ),
            120,
            "the events and a tick",
        )
    finally:
        worker.stop()
    # The queue gauges are a background round's (every few seconds): the DLQ's depth may
    # trail the ledger's count by one round.
    after = scrape_until(port, lambda s: queue(s, config.DEAD_LETTER_QUEUE) >= len(POISON), 30, "the DLQ's depth")

    inserted = value(after, "login_pipeline_rows_inserted_total")
    lettered = value(after, "login_pipeline_dead_lettered_total")
    assert inserted + lettered == len(bodies) and lettered >= len(POISON)  # the sample has an anomaly of its own
    assert value(after, "login_pipeline_freshness_seconds_count") == inserted
    assert value(after, "login_pipeline_freshness_seconds_bucket", le="+Inf") == inserted
    assert 0 < value(after, "login_pipeline_freshness_seconds_sum") / inserted < 120
    assert value(after, "login_pipeline_batch_duration_seconds_count") == value(after, "login_pipeline_batches_total")
    assert value(after, "login_pipeline_last_commit_timestamp_seconds") >= started
    assert value(after, "login_pipeline_last_fetch_timestamp_seconds") >= started
    by_reason = {dict(k[1])["reason"]: v for k, v in after.items() if k[0] == "login_pipeline_dead_letters_total"}
    assert sum(by_reason.values()) == lettered and by_reason["other"] == 0
    assert by_reason["not_json"] >= 1 and by_reason["not_object"] >= 1 and by_reason["missing_field"] >= 1
    assert all(v >= 0 for v in after.values())
    text = json.dumps([list(k) for k in after])
    assert "203.0.113.77" not in text and "no-user" not in text  # no value of a record in any label


def test_the_metrics_server_refuses_to_listen_beyond_the_loopback_without_auth() -> None:
    result = python_m_tasks(
        "metrics", "--address", "0.0.0.0", env={"METRICS_BASIC_AUTH": "", "FLOWER_BASIC_AUTH": ""}, timeout=60
    )
    assert result.returncode == 2 and result.stderr.startswith("metrics refused to start: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_beat_probe_fails_once_beat_is_killed(tmp_path) -> None:
    env = {"BEAT_HEALTH_FILE": str(tmp_path / "beat.alive")}
    beat = spawn(
        [*runner.beat_command(), "--schedule", str(tmp_path / "schedule")], config.STACK_DIR / "beat-probe.log", env
    )
    try:
        alive = wait_until(
            lambda: (r := python_m_tasks("health", "--beat", "--max-age", "5", env=env)).returncode == 0 and r,
            timeout=60,
            what="beat's probe to pass",
        )
        assert alive.stdout.startswith("beat alive: heartbeat of beat's scheduler")
    finally:
        kill_group(beat)
    dead = wait_until(
        lambda: (r := python_m_tasks("health", "--beat", "--max-age", "3", env=env)).returncode == 1 and r,
        timeout=30,
        what="beat's probe to fail",
    )
    assert dead.stderr.startswith("beat not alive: heartbeat of beat's scheduler") and "s ago" in dead.stderr
    assert len(dead.stderr.strip().splitlines()) == 1 and "Traceback" not in dead.stderr
