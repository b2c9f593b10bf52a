"""`run`: worker, beat and Flower as child processes, until Ctrl-C or drained.

In drain mode it seeds events, runs until login-queue and Celery's batch queue stay
empty (or gives up after `timeout` seconds), stops the processes with a warm shutdown
and prints what happened.

Before anything starts, every port it would bind is checked (LocalStack's, Flower's).
When a child exits while the run goes on, the others are stopped and the run fails
with that child's name and its log's last lines (exit 4, tasks/ops/failures.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from botocore.exceptions import BotoCoreError, ClientError

import celeryconfig as config
from tasks.dev import seed, stack
from tasks.ops import status
from tasks.ops.failures import ChildFailed, Exit, Failure, tail

CELERY = [sys.executable, "-m", "celery", "-A", "tasks"]


def worker_command(name: str = "worker1", concurrency: int | None = None) -> list[str]:
    queues = f"{config.FETCH_QUEUE},{config.BATCH_QUEUE}"
    command = [*CELERY, "worker", "-n", f"{name}@%h", "-Q", queues, "--loglevel=INFO"]
    return command + ([f"--concurrency={concurrency}"] if concurrency else [])


def beat_command() -> list[str]:
    return [*CELERY, "beat", "--loglevel=INFO"]


def flower_command() -> list[str]:
    return [*CELERY, "flower", "--conf=flowerconfig.py"]


def log_of(name: str) -> Path:
    return config.STACK_DIR / "logs" / f"{name}.log"


@contextmanager
def processes(commands: dict[str, list[str]]) -> Iterator[dict[str, subprocess.Popen]]:
    """Start each command with its log in STACK_DIR/logs; warm-stop them all at the end."""
    logs = log_of("any").parent
    logs.mkdir(parents=True, exist_ok=True)
    started: dict[str, subprocess.Popen] = {}
    try:
        for name, command in commands.items():
            with open(logs / f"{name}.log", "ab") as log:
                started[name] = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=stack.ROOT,
                    start_new_session=True,
                )
            stack.say(f"{name} started (log: {logs / (name + '.log')})")
        yield started
    finally:
        for process in started.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # Celery's warm shutdown
        for process in started.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@dataclass
class Summary:
    received: int
    inserted: int
    dead_lettered: int
    duplicates: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"received {self.received}, inserted {self.inserted}, dead-lettered "
            f"{self.dead_lettered}, duplicate deliveries skipped {self.duplicates}, "
            f"in {self.seconds:.1f} s"
        )


def summarise(before: dict[str, int], after: dict[str, int], seconds: float) -> Summary:
    delta = {key: after[key] - before[key] for key in after}
    return Summary(delta["received"], delta["inserted"], delta["dead_lettered"], delta["duplicates"], seconds)


def collect_or_say_why() -> dict | None:
    """The status report, or None with the outage said on the progress line: the runner
    rides out a database or SQS outage as the workers do."""
    try:
        return status.collect()
    except psycopg2.Error:
        why = "database unreachable"
    except (BotoCoreError, ClientError):
        why = "SQS unreachable"
    print(f"  {why}, retrying", file=sys.stderr, flush=True)
    return None


def collect_when_reachable(poll: float = 2.0) -> dict:
    while (report := collect_or_say_why()) is None:
        time.sleep(poll)
    return report


def progress() -> dict | None:
    report = collect_or_say_why()
    if report is None:
        return None
    db, queues = report["database"], report["queues"]
    source, batches = queues[config.SOURCE_QUEUE], queues[f"celery:{config.BATCH_QUEUE}"]
    print(
        f"  rows {db['rows']}  dead letters {db['dead_letters']}  login-queue {source['visible']}"
        f"+{source['in_flight']}  batches {batches['visible']}+{batches['in_flight']}",
        file=sys.stderr,
        flush=True,
    )
    return report


class DrainTimeout(Failure):
    def __init__(self, timeout: float) -> None:
        super().__init__(
            f"not drained: login-queue or the batch queue still held messages after {timeout:g} s"
            " (--timeout); see `python -m tasks status` and the logs in STACK_DIR/logs",
            Exit.NEGATIVE,
        )


def check_children(running: dict[str, subprocess.Popen]) -> None:
    """Fail, naming the first child that exited, with its log's last lines."""
    for name, process in running.items():
        if process.poll() is not None:
            raise ChildFailed(
                f"{name} exited with status {process.returncode}; the others were stopped."
                f" The last lines of {log_of(name)}:",
                tail(log_of(name)),
            )


def wait_until_drained(
    timeout: float, poll: float = 1.0, settle: int = 2, running: dict[str, subprocess.Popen] | None = None
) -> None:
    """Until login-queue and the batch queue were empty `settle` polls in a row; a child
    of `running` that exits fails it."""
    quiet, deadline = 0, time.monotonic() + timeout
    while quiet < settle:
        if time.monotonic() > deadline:
            raise DrainTimeout(timeout)
        time.sleep(poll)
        check_children(running or {})
        report = progress()
        quiet = quiet + 1 if report is not None and status.pipeline_idle(report) else 0


def watch(running: dict[str, subprocess.Popen], every: float = 5.0) -> None:
    """Show progress every few seconds until Ctrl-C; a process that exits fails the run."""
    shown = time.monotonic()
    while True:
        check_children(running)
        time.sleep(0.5)
        if time.monotonic() - shown >= every:
            progress()
            shown = time.monotonic()


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop the run, so the children get their warm shutdown (also
    where SIGINT was ignored at start, as for a background job of a script)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def check_ports(with_flower: bool) -> None:
    """Every port the run will bind, before anything starts."""
    stack.check_ports()
    if with_flower:
        stack.require_free("FLOWER_PORT", config.FLOWER_PORT, config.FLOWER_ADDRESS)


def run(drain: bool, seed_count: int, with_flower: bool, as_json: bool = False, timeout: float = 900) -> int:
    _stop_on_signals()
    check_ports(with_flower)
    stack.up()
    if seed_count:
        bodies = [body for body, _ in seed.generate(seed_count)]
        stack.say(f"seeded {seed.send(config.SOURCE_QUEUE, bodies)} events into {config.SOURCE_QUEUE}")
    commands = {"worker": worker_command(), "beat": beat_command()}
    if with_flower:
        commands["flower"] = flower_command()
    before = collect_when_reachable()["database"]
    started = time.monotonic()
    with processes(commands) as running:
        if with_flower:
            auth = "basic auth" if config.FLOWER_BASIC_AUTH else "no auth: loopback only"
            mode = "controls on" if config.FLOWER_ALLOW_CONTROL else "read-only"
            stack.say(f"Flower: http://{config.FLOWER_ADDRESS}:{config.FLOWER_PORT} ({auth}, {mode})")
        try:
            if drain:
                wait_until_drained(timeout, running=running)
            else:
                watch(running)
        except KeyboardInterrupt:
            stack.say("stopping")
    summary = summarise(before, collect_when_reachable()["database"], time.monotonic() - started)
    print(json.dumps(summary.__dict__) if as_json else summary)
    return 0
