"""Faults injected into real processes: after each, every event sent is one row or one
dead letter with a reason, and the counts add up. Each run's figures go to
FAULTS_RESULTS (default: the stack folder's faults.json); `python -m tasks dev faults
--write-docs` runs this module and writes them into docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pgserver
import pytest

import celeryconfig as config
from devkit import runner, seed, soak
from tasks.pipeline import store
from tests.helpers import (
    SHUTDOWN_BOUND,
    Feeder,
    Outage,
    RefusedConnections,
    Worker,
    free_port,
    kill_group,
    send_with_ids,
    settle,
    spawn,
    tally,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("clean")]
RESULTS: list[dict[str, object]] = []


def events(count: int, seed_value: int) -> tuple[dict[str, str], int]:
    generated = list(seed.generate(count, seed=seed_value))
    messages = {f"{seed_value}-{n}": body for n, (body, _) in enumerate(generated)}
    return messages, sum(valid for _, valid in generated)


def account(fault: str, messages: dict[str, str], valid: int, db) -> None:
    settle()
    counts = tally(messages, db)
    letters = counts.pop("letters")
    RESULTS.append({"fault": fault, **counts})
    assert not counts["lost"] and not counts["doubled"]
    assert counts["rows"] == valid and counts["dead_letters"] == len(messages) - valid
    assert all(letters.values())


def first_rows(db, at_least: int = 1) -> None:
    wait_until(lambda: store.totals(db)["rows"] >= at_least, timeout=60, poll=0.2, what="the first rows")


@pytest.fixture(scope="module", autouse=True)
def fault_results() -> Iterator[None]:
    """Each fault's figures, for `python -m tasks dev faults --write-docs`; never a tracked file."""
    yield
    if RESULTS:
        path = Path(os.environ.get("FAULTS_RESULTS") or config.STACK_DIR / "faults.json")
        path.write_text(json.dumps(RESULTS, indent=2))


def test_worker_killed_mid_batch(db) -> None:
    messages, valid = events(3000, 1)
    worker = Worker("killed", beat=True)
    send_with_ids(messages)
    first_rows(db, 250)
    worker.kill()
    survivor = Worker("survivor", beat=True)
    try:
        account("worker SIGKILLed mid-run", messages, valid, db)
    finally:
        survivor.stop()


def test_sigterm_at_random_moments_of_a_batch_stream_always_ends_the_worker(db) -> None:
    """20 SIGTERMs at random moments (a batch received, running or being acked), with beat
    in its own process as deployed: each worker exits within the bound, nothing is lost
    or doubled."""
    rng = random.Random(12)
    beat = spawn(runner.beat_command(), config.STACK_DIR / "beat.log")
    feeder = Feeder(per_second=190, seed_value=2)  # the load it had before the feeder kept its rate
    current = Worker("sigterm-0")
    workers = [current]
    exits: list[float] = []
    try:
        for n in range(1, 21):
            current.wait_for("tasks.mask_and_insert[", timeout=60)
            workers.append(Worker(f"sigterm-{n}", ready=False))  # starts while the current one works and stops
            time.sleep(rng.uniform(0, 1.5))
            started = time.monotonic()
            assert current.stop(within=SHUTDOWN_BOUND) == 0
            exits.append(time.monotonic() - started)
            current = workers[-1]
            current.ready()
        feeder.stop()
        account("20 SIGTERMs at random moments", feeder.messages, feeder.valid, db)
    finally:
        feeder.stop()
        for worker in workers:
            worker.stop()
        kill_group(beat)
    print(f"warm shutdowns: {len(exits)}, slowest {max(exits):.1f} s, bound {SHUTDOWN_BOUND} s")


def test_postgres_stopped_for_15_seconds(db, database_url) -> None:
    """Batches wait and retry through the outage; a worker told to stop in the middle of
    it stops within the bound, and its successor finishes the work."""
    messages, valid = events(3000, 3)
    worker = Worker("pg-outage", beat=True)
    successor = None
    try:
        send_with_ids(messages)
        first_rows(db, 250)
        db.close()
        pgdata = config.STACK_DIR / "pgdata"
        pgserver.get_server(pgdata, cleanup_mode="stop").cleanup()
        outage_ends = time.monotonic() + 15
        worker.wait_for("Retry in", timeout=15)
        assert worker.stop(within=SHUTDOWN_BOUND) == 0
        successor = Worker("pg-outage-successor", beat=True)
        time.sleep(max(0.0, outage_ends - time.monotonic()))  # the outage lasts 15 s
        pgserver.get_server(pgdata, cleanup_mode=None)
        db = store.connect(database_url)
        account("PostgreSQL stopped for 15 s (SIGTERM during it)", messages, valid, db)
    finally:
        worker.stop()
        if successor:
            successor.stop()
        db.close()


def test_sqs_unreachable_for_10_seconds(db) -> None:
    messages, valid = events(3000, 4)
    proxy_port = free_port()
    outage = Outage(proxy_port, config.LOCALSTACK_PORT)
    worker = Worker("sqs-outage", beat=True, env={"SQS_ENDPOINT_URL": f"http://localhost:{proxy_port}"})
    try:
        send_with_ids(messages)
        first_rows(db, 250)
        outage.cut()
        outage_ends = time.monotonic() + 10
        worker.wait_for("SQS unreachable?", timeout=10)  # the transport saw its receive fail
        assert worker.stop(within=SHUTDOWN_BOUND) == 0  # SIGTERM while SQS is unreachable
        time.sleep(max(0.0, outage_ends - time.monotonic()))  # the outage lasts 10 s
        outage.restore()
        worker = Worker("sqs-outage-successor", beat=True, env={"SQS_ENDPOINT_URL": f"http://localhost:{proxy_port}"})
        account("SQS endpoint unreachable for 10 s (SIGTERM during it)", messages, valid, db)
    finally:
        worker.stop()
        outage.cut()


def test_poison_records_inside_batches_of_good_ones(db, worker) -> None:
    messages, valid = events(1000, 5)
    poison = {
        "5-poison-1": "{oops",
        "5-poison-2": '{"user_id": "u", "app_version": "x.y"}',
        "5-poison-3": '{"user_id": "%s"}' % ("u" * 200),
    }
    send_with_ids({**dict(list(messages.items())[:500]), **poison, **dict(list(messages.items())[500:])})
    account("poison records inside good batches", {**messages, **poison}, valid, db)


def test_the_same_messages_delivered_twice(db, worker) -> None:
    messages, valid = events(1000, 6)
    send_with_ids(messages)
    send_with_ids(messages)
    account("every message delivered twice", messages, valid, db)
    assert store.totals(db)["duplicates"] == 1000


def test_five_thousand_events_with_repeated_logins(db, worker) -> None:
    messages, valid = events(5_000, 7)
    send_with_ids(messages)
    account("5,000 events, 20% repeat logins", messages, valid, db)
    with db.cursor() as cur:
        cur.execute("SELECT count(*) - count(DISTINCT (user_id, masked_ip, masked_device_id)) FROM user_logins")
        assert cur.fetchone()[0] > 500  # genuine repeats are rows of their own
    db.rollback()


def stop_gracefully(process: subprocess.Popen, within: float = 60) -> None:
    """SIGTERM (the runner then stops its children), then its group is killed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=within)
    kill_group(process)


def test_a_batch_held_up_by_a_lock_is_retried_not_dead_lettered(db, database_url) -> None:
    """A lock longer than the statement timeout cancels the batch's insert: a transient
    failure, retried once the lock is gone (as a soft time limit would be)."""
    messages, valid = events(200, 8)
    worker = Worker("locked", beat=True, env={"STATEMENT_TIMEOUT_MS": "2000"})
    locker = store.connect(database_url)
    try:
        with locker.cursor() as cur:
            cur.execute("LOCK TABLE user_logins IN ACCESS EXCLUSIVE MODE")
            send_with_ids(messages)
            worker.wait_for("Retry in", timeout=60)
        locker.rollback()  # the lock is released
        account("a lock held past the statement timeout", messages, valid, db)
        assert "QueryCanceled" in worker.log.read_text()
    finally:
        locker.close()
        worker.stop()


def test_run_drain_rides_out_a_database_and_an_sqs_outage(db, database_url) -> None:
    """`python -m tasks dev run --drain` as a user runs it, through both outages: it says so
    on its progress line, and finishes with every event accounted for."""
    messages, valid = events(3000, 9)
    proxy_port = free_port()
    outage = Outage(proxy_port, config.LOCALSTACK_PORT)
    env = {"LOCALSTACK_PORT": str(proxy_port), "SQS_ENDPOINT_URL": f"http://localhost:{proxy_port}"}
    log = config.STACK_DIR / "run-drain.log"
    run = spawn([sys.executable, "-m", "tasks", "dev", "run", "--drain", "--timeout", "300"], log, env)
    try:
        send_with_ids(messages)
        first_rows(db, 250)
        refused = RefusedConnections(database_url)
        refused.cut()  # no new connections, and every open one cut
        try:
            wait_until(lambda: "database unreachable, retrying" in log.read_text(), timeout=30, what="the run to say")
        finally:
            refused.restore()
        db = store.connect(database_url)
        outage.cut()
        wait_until(lambda: "SQS unreachable, retrying" in log.read_text(), timeout=30, what="the run to say so")
        outage.restore()
        assert run.wait(timeout=300) == 0, log.read_text()[-3000:]
        account("run --drain through a database and an SQS outage", messages, valid, db)
        assert "received" in log.read_text().splitlines()[-1]  # the summary line
    finally:
        if outage.server is None:
            outage.restore()
        stop_gracefully(run)
        outage.cut()
        db.close()


def test_randomized_soak_with_faults_combined(database_url) -> None:
    """Two workers and a separate beat under a steady feed, while workers are SIGKILLed
    and SIGTERMed, beat is killed, the database refuses connections and LocalStack is
    frozen, at moments drawn from a seed, some at once (dev/devkit/soak.py). 75 s here;
    `python -m tasks dev faults --soak MINUTES --seed N` runs it longer (SOAK_SECONDS,
    SOAK_SEED and SOAK_VERDICT are how that command talks to this test)."""
    seconds = float(os.environ.get("SOAK_SECONDS") or soak.SHORT_SECONDS)
    seed_value = int(os.environ.get("SOAK_SEED") or soak.SHORT_SEED)
    outcome = soak.Soak(seed_value, seconds, database_url, say=lambda line: print(line, flush=True)).run()
    if verdict := os.environ.get("SOAK_VERDICT"):
        Path(verdict).write_text(outcome.verdict() + "\n")
    if outcome.counts:
        faults = len(soak.schedule(seed_value, seconds))
        RESULTS.append(
            {"fault": f"randomized soak: {faults} faults in {seconds:.0f} s (seed {seed_value})", **outcome.counts}
        )
    assert not outcome.findings(), outcome.verdict()
