"""`run`: worker, beat and Flower as child processes, until Ctrl-C or drained.

In drain mode it seeds events, runs until login-queue and Celery's batch queue stay
empty (or gives up after `timeout` seconds), stops the processes with a warm shutdown
and prints what happened.

Before anything starts, every port it would bind is checked (LocalStack's, Flower's).
When a child exits while the run goes on, the others are stopped and the run fails
with that child's name and its log's last lines (exit 4, tasks/ops/failures.py).

However the run ends (Ctrl-C, SIGTERM, a child's exit, drained, --timeout), its children
stop: SIGTERM, then SIGKILL past `stop_bound`, said in one line; a second signal kills
what is left at once; then nothing carrying the run's mark may be left
(dev/devkit/children.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from botocore.exceptions import BotoCoreError, ClientError

import celeryconfig as config
from devkit import children, seed, stack
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


def stop_bound(name: str) -> float:
    """Seconds a child gets from SIGTERM to exit before it is killed: the worker its warm
    shutdown's bound (the hard time limit plus 10 s, docs/reliability.md), the others 10 s
    (Flower stops within 6 s of SIGTERM in any state, tasks/ops/stopping.py)."""
    return config.task_time_limit + 10.0 if name == "worker" else 10.0


@contextmanager
def processes(
    commands: dict[str, list[str]], overrides: dict[str, str] | None = None
) -> Iterator[dict[str, subprocess.Popen]]:
    """Start each command with its log in STACK_DIR/logs, with this environment and
    `overrides` (the bench's settings for the children: a proxied endpoint, a pool size);
    at the end, however it comes, stop them all (warm: SIGTERM; SIGKILL past
    `stop_bound`), then make sure that nothing carrying this run's mark is left
    (dev/devkit/children.py)."""
    logs = log_of("any").parent
    logs.mkdir(parents=True, exist_ok=True)
    mark = f"{os.getpid()}-{uuid.uuid4().hex}"
    environment = {**os.environ, **(overrides or {}), children.MARK: mark}
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
                    env=environment,
                    start_new_session=True,
                    preexec_fn=children.dies_with_parent(),
                )
            stack.say(f"{name} started (log: {logs / (name + '.log')})")
        yield started
    finally:
        with children.SIGNALS.stopping() as hurry:
            children.stop({name: process.pid for name, process in started.items()}, stop_bound, hurry)
            for process in started.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)  # reaped: each has exited or was killed
            left = children.kill_left(children.marked(mark), "this run")
        if left:
            raise ChildFailed(f"processes of this run still running after SIGKILL: {left}; see `ps -p` for them")


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


def check_ports(with_flower: bool) -> None:
    """Every port the run will bind, before anything starts."""
    stack.check_ports()
    if with_flower:
        stack.require_free("FLOWER_PORT", config.FLOWER_PORT, config.FLOWER_ADDRESS)


def run(drain: bool, seed_count: int, with_flower: bool, as_json: bool = False, timeout: float = 900) -> int:
    children.SIGNALS.install()  # Ctrl-C and SIGTERM end the run; its children are stopped
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
