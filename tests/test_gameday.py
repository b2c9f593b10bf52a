"""The game day of issue 32, staged: each fault raises the alert that names it, first and
alone, and the runbook's command for the embedded stack, run as written, clears it.

The session's test stack is an embedded stack (`python -m tasks dev stack up` in its own
STACK_DIR). On it run a worker and beat started with docs/runbook.md's own commands
(`celery -A tasks worker …`, `celery -A tasks beat …`) and Flower with basic auth, scraped
by a real Prometheus evaluating the shipped rules with every duration divided by DIVISOR
(dev/devkit/prometheus.py; the shortening is the test's own configuration, the rules file
is unchanged). Each fault, one at a time:

- the worker SIGKILLed (no goodbye): LoginPipelineNoWorkerOnline, never BeatDown;
- beat SIGKILLed: LoginPipelineBeatDown, never FetchSilent or NoWorkerOnline;
- PostgreSQL stopped (pg_ctl's fast mode, as systemctl stops it): LoginPipelineDatabaseDown;
- LocalStack frozen (SIGSTOP): LoginPipelineSqsDown, never MetricsDown or NoWorkerOnline;
  `status` answers within seconds, naming SQS;
- PostgreSQL down under a worker with short retries: LoginPipelineDeadLetterQueueGrowing
  (the given-up records bypass the ledger);
- Flower killed: LoginPipelineMetricsDown (every other alert is blind meanwhile);
- a batch task set aside in login-pipeline-batches-dlq, as SQS does after
  BATCH_QUEUE_MAX_RECEIVES receives: LoginPipelineBatchDeadLetterQueueNotEmpty, cleared by
  the runbook's `redrive --batches`, which writes its events;
- user_logins locked past the statement timeout: LoginPipelineRetryRateHigh, while
  PostgreSQL answers; it clears once the lock holder ends.

Then the Fix paragraph's embedded-stack command runs, the alert clears, and every valid
event sent meanwhile is a row, none twice. Prometheus's alerts are polled throughout:
the first to fire must be the expected one, and none outside the fault's own and its
consequences (Stalled, FallingBehind, the burn alerts) may fire.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import celeryconfig as config
from devkit import prometheus, seed
from devkit import stack as embedded
from tasks.pipeline import store
from tests.helpers import free_port, kill_group, new_log, reset_pipeline, spawn, start_flower, stop_process, wait_until

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "docs" / "runbook.md"
AUTH = ("prometheus", "test-only-scrape-password")
# `for: 1m` is 10 s, `for: 2m` 20 s, the fetch's 120 s 20 s: longer than the seconds a
# heartbeat or an SQS call takes to be missed, so the order of alerts is the rules' own.
DIVISOR = 6
FIRE_WITHIN = 90
CLEAR_WITHIN = 90
STATUS_WITHIN = 15  # seconds: `status` on a frozen SQS (one call's connect and read timeouts, then none)
AFTER_RECOVERY = 8  # seconds watched after the alert cleared: no other alert follows
# Alerts on freshness and backlog: they follow any outage, and may fire (or keep firing,
# the slow burn's windows being long) alongside a fault's own alert.
CONSEQUENCES = {
    "LoginPipelineStalled",
    "LoginPipelineFallingBehind",
    "LoginPipelineFreshnessBudgetBurn",
    "LoginPipelineFreshnessBudgetBurnSlow",
}


def fix_command(alert: str) -> str:
    """The first command of the Fix paragraph that follows "Embedded stack:" in `alert`'s section."""
    section = RUNBOOK.read_text().split(f"## {alert}\n", 1)[1].split("\n## ", 1)[0]
    fix = section.split("**Fix.**", 1)[1]
    found = re.search(r"Embedded stack:\s*`([^`]+)`", fix)
    assert found, f"{alert}: no embedded-stack command in its Fix"
    return found.group(1)


def as_run_here(command: str) -> str:
    """The runbook's command with this checkout's interpreter and the test stack's folder."""
    python = shlex.quote(sys.executable)
    command = re.sub(r"^celery\b", f"{python} -m celery", command)
    command = re.sub(r"^python -m tasks\b", f"{python} -m tasks", command)
    return command.replace(".stack/", f"{config.STACK_DIR}/")


class GameDay:
    """Worker, beat (each by the runbook's command), Flower with basic auth and a Prometheus."""

    def __init__(self) -> None:
        port = free_port()
        self.prometheus = prometheus.Server(config.STACK_DIR / f"prometheus-gameday-{port}", port)
        self.flower_port = free_port()
        self.processes: dict[str, subprocess.Popen] = {}
        self.server: subprocess.Popen | None = None
        self.seen: list[str] = []  # alert names, in the order they were first seen firing

    def start(self) -> None:
        self.run_fix("LoginPipelineNoWorkerOnline", "worker")
        self.run_fix("LoginPipelineBeatDown", "beat")
        self.processes["flower"] = start_flower(self.flower_port, env=self.flower_env(), name="gameday-flower")
        self.prometheus.configure(f"127.0.0.1:{self.flower_port}", AUTH, DIVISOR)
        self.server = spawn(self.prometheus.command(), self.prometheus.folder / "prometheus.log")
        wait_until(self.prometheus.ready, timeout=30, what="Prometheus ready")
        wait_until(lambda: self.prometheus.target_health() == "up", timeout=30, what="Flower scraped")

    def flower_env(self) -> dict[str, str]:
        return {"FLOWER_PORT": str(self.flower_port), "FLOWER_BASIC_AUTH": ":".join(AUTH)}

    def run_fix(self, alert: str, name: str | None = None) -> None:
        """Run `alert`'s embedded-stack command: a long-running process (kept as `name`),
        or a command that must succeed."""
        command = as_run_here(fix_command(alert))
        if name:
            log = config.STACK_DIR / f"gameday-{name}.log"
            # Flower's port and password are the deployment's environment, as in start()
            env = self.flower_env() if name == "flower" else None
            self.processes[name] = spawn(["sh", "-c", f"exec {command}"], log, env)
            return
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=180, cwd=ROOT)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"

    def kill(self, name: str) -> None:
        kill_group(self.processes.pop(name))

    def only_worker(self, name: str, env: dict[str, str]) -> None:
        """Start a worker `name` by the runbook's command with settings of its own, then kill
        the game day's worker: the stage runs on that one alone (`restore_worker` after)."""
        command = as_run_here(fix_command("LoginPipelineNoWorkerOnline")).replace("worker1@", f"{name}@")
        log = new_log(config.STACK_DIR / f"gameday-{name}.log")
        self.processes[name] = spawn(["sh", "-c", f"exec {command}"], log, env)
        wait_until(lambda: "ready." in log.read_text(), timeout=60, what=f"worker {name}")
        self.kill("worker")

    def restore_worker(self, name: str) -> None:
        """The game day's own worker again, for the stages after, in place of worker `name`."""
        self.run_fix("LoginPipelineNoWorkerOnline", "worker")
        self.kill(name)

    def stop(self) -> None:
        if self.server:
            kill_group(self.server)
        for name, process in self.processes.items():
            (stop_process if name == "flower" else kill_group)(process)

    def firing(self) -> set[str]:
        names = set(self.prometheus.alerts())
        self.seen += sorted(names - set(self.seen))
        return names

    def active(self) -> set[str]:
        """Alerts firing or pending, the consequences of any outage aside."""
        return (self.firing() | set(self.prometheus.alerts("pending"))) - CONSEQUENCES

    def settled(self) -> None:
        """Nothing firing or pending but consequences (an earlier fault's alerts cleared)."""
        try:
            wait_until(lambda: not self.active(), timeout=CLEAR_WITHIN, what="no alert firing or pending")
        except AssertionError:
            raise AssertionError(f"still active: {sorted(self.active())}") from None
        self.seen = []

    def first_fires(self, expected: str, within: float = FIRE_WITHIN) -> float:
        """Seconds until `expected` fires; it must be the first alert seen firing."""
        started = time.monotonic()
        wait_until(lambda: expected in self.firing(), timeout=within, poll=0.5, what=f"{expected} firing")
        causes = [name for name in self.seen if name not in CONSEQUENCES]
        assert causes[0] == expected, f"first alert {causes[0]}, expected {expected}: {self.seen}"
        return time.monotonic() - started

    def clears(self, expected: str) -> None:
        wait_until(lambda: expected not in self.firing(), timeout=CLEAR_WITHIN, poll=0.5, what=f"{expected} cleared")

    def wrong(self, allowed: set[str]) -> list[str]:
        return [name for name in self.seen if name not in allowed | CONSEQUENCES]


@pytest.fixture(scope="module")
def day(test_stack: None) -> Iterator[GameDay]:
    reset_pipeline()
    game = GameDay()
    try:
        game.start()
        yield game
    finally:
        game.stop()


def rows() -> int:
    conn = store.connect(config.database_url())
    try:
        return store.totals(conn)["inserted"]
    finally:
        conn.close()


def send(count: int, seed_value: int) -> int:
    """Send `count` valid events; how many rows they make."""
    events = [body for body, valid in seed.generate(count * 2, seed_value) if valid][:count]
    seed.send(config.SOURCE_QUEUE, events)
    return len(events)


# The alerts whose fix starts a process again, and the process it is.
RESTARTS = {
    "LoginPipelineNoWorkerOnline": "worker",
    "LoginPipelineBeatDown": "beat",
    "LoginPipelineMetricsDown": "flower",
}


def staged(
    day: GameDay,
    alert: str,
    fault: Callable[[], int | None],
    allowed: set[str],
    during: int = 0,
    seed_value: int = 0,
) -> float:
    """Stage `fault` (which may return the rows its fix makes), see `alert` fire first, run
    its fix, see it clear and the events land."""
    day.settled()
    before = rows()
    expected = fault() or 0
    expected += send(during, seed_value) if during else 0
    after = day.first_fires(alert)
    day.run_fix(alert, RESTARTS.get(alert))
    day.clears(alert)
    deadline = time.monotonic() + AFTER_RECOVERY
    while time.monotonic() < deadline:  # nothing else fires as the pipeline recovers
        day.firing()
        time.sleep(0.5)
    assert not day.wrong(allowed | {alert}), f"wrong alerts fired: {day.wrong(allowed | {alert})}"
    wait_until(lambda: rows() == before + expected, timeout=120, what="every event sent during the fault written")
    time.sleep(2)  # nothing written twice: still exact a fetch later
    assert rows() == before + expected
    print(f"\n{alert}: fired {after:.0f} s after the fault (durations / {DIVISOR})")
    return after


def test_a_killed_worker_raises_no_worker_online_and_its_runbook_command_clears_it(day: GameDay) -> None:
    staged(day, "LoginPipelineNoWorkerOnline", lambda: day.kill("worker"), set(), during=50, seed_value=3201)


def test_a_killed_beat_raises_beat_down_and_its_runbook_command_clears_it(day: GameDay) -> None:
    staged(day, "LoginPipelineBeatDown", lambda: day.kill("beat"), set(), during=50, seed_value=3202)


def stop_postgres(mode: str = "fast") -> None:
    """The embedded stack's PostgreSQL stopped as an operator or a host's shutdown stops it
    (pg_ctl's fast mode, systemctl's), its URL file left in place. (Immediate mode, a crash,
    cuts a batch's connection mid-statement: psycopg2's bare DatabaseError, retried like
    any lost connection; with short retries the batch gives up to the DLQ,
    DeadLetterQueueGrowing's case below.)"""
    pgserver, pgdata = embedded._pgserver(), embedded._paths()["pgdata"]
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    pgserver.pg_ctl(["-w", "-m", mode, "stop"], pgdata=pgdata, user=server.system_user)


def crash_postgres() -> None:
    stop_postgres("immediate")


def test_postgresql_stopped_raises_database_down_and_its_runbook_command_clears_it(day: GameDay) -> None:
    # Batches retry meanwhile (BATCH_MAX_RETRIES=12 in the suite: none gives up).
    staged(
        day,
        "LoginPipelineDatabaseDown",
        stop_postgres,
        {"LoginPipelineRetryRateHigh"},
        during=50,
        seed_value=3203,
    )


def test_sqs_frozen_raises_sqs_down_first_and_its_runbook_command_clears_it(day: GameDay) -> None:
    pid = int((config.STACK_DIR / "localstack.pid").read_text())

    def freeze() -> None:
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()  # `status`, the runbook's first look, answers within seconds
        status = subprocess.run(
            [sys.executable, "-m", "tasks", "status"], capture_output=True, text=True, timeout=30, cwd=ROOT
        )
        assert time.monotonic() - started < STATUS_WITHIN, status.stdout
        assert status.returncode == 3, status.stdout + status.stderr
        assert "accepted the connection but did not answer" in status.stdout, status.stdout
        assert "stack up`" not in status.stdout.replace("stack down`, then `up", ""), status.stdout
        assert "user_logins rows:" in status.stdout  # the database, reached, says so

    try:
        staged(day, "LoginPipelineSqsDown", freeze, set())
    finally:
        os.kill(pid, signal.SIGCONT)  # never leave the session's stack frozen


def test_database_down_with_short_retries_raises_dead_letter_queue_growing(day: GameDay) -> None:
    """Batches give up while PostgreSQL is down: their records reach login-queue-dlq with no
    row in the ledger. LoginPipelineDeadLetterQueueGrowing fires first; `status` names the
    two counts apart; once PostgreSQL is back, the runbook's redrive of what the outage
    caused (`--reason transient --since` its start) writes every event once."""
    day.settled()
    before = rows()
    day.only_worker("short", {"BATCH_MAX_RETRIES": "1", "RETRY_BACKOFF_MAX": "1"})  # gives up soon
    outage_start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 5))  # UTC, as redrive reads it
    crash_postgres()
    expected = send(50, 3205)
    after = day.first_fires("LoginPipelineDeadLetterQueueGrowing")
    status = subprocess.run([sys.executable, "-m", "tasks", "status"], capture_output=True, text=True, cwd=ROOT)
    assert "database unreachable" in status.stdout and "in login-queue-dlq now" in status.stdout, status.stdout
    day.run_fix("LoginPipelineDatabaseDown")
    status = subprocess.run([sys.executable, "-m", "tasks", "status"], capture_output=True, text=True, cwd=ROOT)
    assert "more than recorded" in status.stdout, status.stdout
    assert not day.wrong({"LoginPipelineDeadLetterQueueGrowing", "LoginPipelineDatabaseDown"}), day.seen
    redrive = subprocess.run(
        [sys.executable, "-m", "tasks", "redrive", "--reason", "transient", "--since", outage_start],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert redrive.returncode == 0, redrive.stdout + redrive.stderr
    wait_until(lambda: rows() == before + expected, timeout=120, what="every given-up event written after the redrive")
    day.restore_worker("short")
    print(f"\nLoginPipelineDeadLetterQueueGrowing: fired {after:.0f} s after the fault (durations / {DIVISOR})")


def test_flower_killed_raises_metrics_down_and_its_runbook_command_clears_it(day: GameDay) -> None:
    staged(day, "LoginPipelineMetricsDown", lambda: day.kill("flower"), set(), during=50, seed_value=3206)


def test_a_batch_set_aside_by_sqs_raises_its_alert_and_the_runbooks_redrive_writes_it(day: GameDay) -> None:
    """A whole batch task in login-pipeline-batches-dlq, put there as SQS puts one after
    BATCH_QUEUE_MAX_RECEIVES receives; the runbook's `redrive --batches` moves it back and
    the worker writes its events."""
    from tasks.batch import mask_and_insert
    from tasks.pipeline.records import SourceMessage

    def set_aside() -> int:
        sent, run = int(time.time() * 1000), time.monotonic_ns()
        events = [body for body, valid in seed.generate(60, 3207) if valid][:30]
        batch = [SourceMessage(f"set-aside-{run}-{i}", sent, body).as_args() for i, body in enumerate(events)]
        mask_and_insert.apply_async((batch,), queue=f"{config.BATCH_QUEUE}-dlq")
        return len(events)

    staged(day, "LoginPipelineBatchDeadLetterQueueNotEmpty", set_aside, set())


def test_a_lock_past_the_statement_timeout_raises_retry_rate_high_alone_and_it_clears(day: GameDay) -> None:
    """A session holds user_logins in SHARE mode (reads go on, inserts wait): each batch's
    insert is cancelled at STATEMENT_TIMEOUT_MS and retried. LoginPipelineRetryRateHigh
    fires first, while PostgreSQL answers (no DatabaseDown); the runbook's fix is to end
    the lock holder, after which the alert clears within its 2-minute window (here 20 s),
    and every event is written once.

    The worker for this stage times statements out after 1 s and backs off at most 1 s
    (with retries enough for the stage), so that retries come every few seconds and the
    rule's 2-minute window (20 s here) never falls empty during its 10-minute `for:`. Two
    batches, not more: the pool keeps slots for fetches (a pool full of stuck batches is
    FetchSilent's case)."""
    day.settled()
    before = rows()
    day.only_worker("dense", {"STATEMENT_TIMEOUT_MS": "1000", "RETRY_BACKOFF_MAX": "1", "BATCH_MAX_RETRIES": "100"})
    holder = store.connect(config.database_url())
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE user_logins IN SHARE MODE")  # held until the rollback below
        expected = send(20, 3208)
        time.sleep(3)  # the load's pacing: a second batch, handed off apart from the first
        expected += send(20, 3209)
        after = day.first_fires("LoginPipelineRetryRateHigh", within=FIRE_WITHIN + 100)  # its `for:` is 10m
        assert not day.wrong({"LoginPipelineRetryRateHigh"}), day.seen
    finally:
        holder.rollback()
        holder.close()
    try:
        wait_until(lambda: rows() == before + expected, timeout=120, what="every held-up event written")
        day.clears("LoginPipelineRetryRateHigh")
        assert not day.wrong({"LoginPipelineRetryRateHigh"}), day.seen
    finally:
        day.restore_worker("dense")
    print(f"\nLoginPipelineRetryRateHigh: fired {after:.0f} s after the lock (durations / {DIVISOR})")
