"""The randomized soak: events keep flowing through two workers and a separate beat
while faults strike, alone and together, at moments drawn from a seeded RNG; then the
pipeline drains and the soak checks how every event ended.

This module owns the fault schedule (`schedule`: the same seed and length give the same
schedule, so a failure can be replayed), running it against the test stack (`Soak`),
and the one-line verdict. The faults: a worker SIGKILLed or SIGTERMed and restarted,
beat SIGKILLed and restarted, the database refusing connections for a few seconds, and
LocalStack frozen (its process group SIGSTOPped, then SIGCONTed) for a few seconds.
The checks: every event sent is exactly one row or one dead letter (with a reason),
every valid event is a row, no raw ip or device_id is stored in any table, and every
SIGTERMed worker exited, with status 0, within the shutdown bound.

It runs where tests/conftest.py made a test stack: `python -m tasks dev faults --soak
MINUTES --seed N` runs `tests/test_faults.py::test_randomized_soak` on a fresh one, and
`make test` runs that test for 75 s on the session's stack.
"""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg2 import sql

import celeryconfig as config
from devkit import runner
from tasks.pipeline import store

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("worker SIGKILL", "worker SIGTERM", "beat SIGKILL", "database refuses", "LocalStack frozen")
# Seconds a fault lasts: the outages, and how long beat stays down.
LASTS = {"beat SIGKILL": (0.0, 5.0), "database refuses": (2.0, 8.0), "LocalStack frozen": (2.0, 6.0)}
GAP = (4.0, 16.0)  # seconds between two faults' starts: shorter than an outage, so some overlap
QUIET = 5.0  # seconds without faults at the start and the end of the feed
RATE = 50  # events a second: modest, so that the faults, not the load, are the test
WORKERS = 2
SHORT_SECONDS, SHORT_SEED = 75.0, 3  # `make test`'s soak: every kind, and a SIGTERM while LocalStack is frozen


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the feed started
    kind: str
    worker: int  # the worker slot (0 or 1) a worker fault hits; 0 otherwise
    lasts: float  # seconds of an outage, or of beat's absence; 0 for worker faults

    @property
    def what(self) -> str:
        what = f"{self.kind} (worker {self.worker})" if self.kind.startswith("worker") else self.kind
        return what + (f" for {self.lasts:.1f} s" if self.lasts else "")

    def __str__(self) -> str:
        return f"t+{self.at:6.1f} s  {self.what}"


def schedule(seed: int, seconds: float) -> list[Fault]:
    """The faults of a soak of `seconds`, from `seed` alone: each kind at least once when
    there is room for five, the rest drawn at random."""
    rng = random.Random(seed)
    times, at = [], QUIET
    while (at := at + rng.uniform(*GAP)) < seconds - QUIET:
        times.append(round(at, 1))
    kinds = list(KINDS)[: len(times)] + [rng.choice(KINDS) for _ in range(len(times) - len(KINDS))]
    rng.shuffle(kinds)
    faults = []
    for at, kind in zip(times, kinds, strict=True):
        worker = rng.randrange(WORKERS) if kind.startswith("worker") else 0
        faults.append(Fault(at, kind, worker, round(rng.uniform(*LASTS[kind]), 1) if kind in LASTS else 0.0))
    return faults


@dataclass
class Exit:
    worker: str
    seconds: float
    code: int | None
    error: str = ""


@dataclass
class Outcome:
    seed: int
    seconds: float
    bound: float
    counts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    valid: int = 0
    leaked: int = 0
    exits: list[Exit] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def findings(self) -> list[str]:
        """What broke a promise: empty when the soak passed."""
        found = list(self.problems)
        c = self.counts
        if c:
            if c["lost"] or c["doubled"]:
                found.append(f"{c['lost']} lost and {c['doubled']} doubled of {c['sent']} events")
            if c["rows"] != self.valid or c["dead_letters"] != c["sent"] - self.valid:
                found.append(
                    f"{c['rows']} rows and {c['dead_letters']} dead letters for {self.valid} valid events of"
                    f" {c['sent']} (dead letters by reason: {self.reasons})"
                )
            if self.reasons.get("", 0):
                found.append(f"{self.reasons['']} dead letters without a reason")
        if self.leaked:
            found.append(f"{self.leaked} raw ip/device_id values stored in the database")
        for e in self.exits:
            if e.code != 0 or e.seconds > self.bound:
                found.append(f"{e.worker} took {e.seconds:.1f} s to stop on SIGTERM, status {e.code} {e.error}".strip())
        return found

    def verdict(self) -> str:
        replay = f"python -m tasks dev faults --soak {self.seconds / 60:g} --seed {self.seed}"
        if found := self.findings():
            return f"soak FAILED (seed {self.seed}, {self.seconds:.0f} s): " + "; ".join(found) + f" (replay: {replay})"
        c, slowest = self.counts, max((e.seconds for e in self.exits), default=0.0)
        return (
            f"soak passed (seed {self.seed}, {self.seconds:.0f} s): {c['sent']} events, {c['rows']} rows,"
            f" {c['dead_letters']} dead letters, {c['duplicate_deliveries_skipped']} duplicate deliveries"
            f" skipped, 0 lost, 0 doubled, no raw value stored; {len(self.exits)} SIGTERMs, slowest exit"
            f" {slowest:.1f} s (bound {self.bound:.0f} s)"
        )


@dataclass
class Action:
    at: float
    name: str
    step: Callable[[], bool]  # True once done; False to be tried again at the next tick


class Soak:
    """Runs a schedule against the test stack's processes; `run` returns the outcome and
    leaves nothing behind: LocalStack running, the database accepting, every process it
    started killed."""

    def __init__(self, seed: int, seconds: float, database_url: str, say: Callable[[str], None] = print) -> None:
        from tests import helpers

        self.h = helpers
        self.seed, self.seconds, self.database_url, self.say = seed, seconds, database_url, say
        self.faults = schedule(seed, seconds)
        self.outcome = Outcome(seed, seconds, helpers.SHUTDOWN_BOUND)
        self.workers: list[Any] = []
        self.incarnations = [0] * WORKERS
        self.beat: subprocess.Popen | None = None
        self.stopping: list[threading.Thread] = []
        pid = int((config.STACK_DIR / "localstack.pid").read_text())  # the test stack's own LocalStack
        self.outages: dict[str, Any] = {
            "database refuses": helpers.RefusedConnections(database_url),
            "LocalStack frozen": helpers.Frozen(pid),
        }
        self.until: dict[str, float] = {}  # an outage in force, and when it ends
        self.pending: list[Action] = []
        self.started = 0.0

    # --- the processes -------------------------------------------------------------
    def _worker(self, slot: int) -> Any:
        name = f"soak-w{slot}-{self.incarnations[slot]}"
        self.incarnations[slot] += 1
        return self.h.Worker(name, ready=False)

    def _start_beat(self) -> bool:
        self.beat = self.h.spawn(runner.beat_command(), config.STACK_DIR / "soak-beat.log")
        return True

    def _stop(self, worker: Any) -> None:
        """SIGTERM, and the time to exit held to the bound (a thread per worker)."""
        started = time.monotonic()
        try:
            code: int | None = worker.stop(signal.SIGTERM, within=self.outcome.bound)
            error = ""
        except AssertionError as exc:
            code, error = None, str(exc).splitlines()[0]
            self.say(str(exc))
        exit_ = Exit(worker.name, time.monotonic() - started, code, error)
        self.outcome.exits.append(exit_)
        self.say(f"t+{self.clock():6.1f} s  {exit_.worker} exited {exit_.code} in {exit_.seconds:.1f} s")

    # --- the faults ----------------------------------------------------------------
    def clock(self) -> float:
        return time.monotonic() - self.started

    def _begin(self, fault: Fault) -> Callable[[], bool]:
        def step() -> bool:
            if fault.kind == "worker SIGKILL":
                self.workers[fault.worker].kill()
                self.workers[fault.worker] = self._worker(fault.worker)
            elif fault.kind == "worker SIGTERM":
                target = self.workers[fault.worker]
                if not target.is_ready() and target.process.poll() is None:
                    return False  # SIGTERM a worker that runs, not one still starting
                thread = threading.Thread(target=self._stop, args=(target,), daemon=True)
                thread.start()
                self.stopping.append(thread)
                self.workers[fault.worker] = self._worker(fault.worker)  # starts while the other stops
            elif fault.kind == "beat SIGKILL":
                assert self.beat is not None
                self.h.kill_group(self.beat)
                self.pending.append(Action(self.clock() + fault.lasts, "beat restarted", self._start_beat))
            else:
                in_force = fault.kind in self.until
                self.until[fault.kind] = max(self.until.get(fault.kind, 0.0), self.clock() + fault.lasts)
                if not in_force:  # noted first, so that whatever happens next restores it
                    self.pending.append(Action(fault.at + fault.lasts, f"{fault.kind}: over", self._end(fault.kind)))
                    self.outages[fault.kind].cut()
            return True

        return step

    def _end(self, kind: str) -> Callable[[], bool]:
        def step() -> bool:
            if self.clock() < self.until[kind]:
                return False  # a later fault of the same kind extended it
            self.outages[kind].restore()
            del self.until[kind]
            return True

        return step

    def _feed_over(self) -> bool:
        if self.until:
            return False  # after the outages: a frozen SQS would hold the feeder's last send
        self.feeder.stop()
        return True

    def _play(self) -> None:
        self.pending = [Action(f.at, f.what, self._begin(f)) for f in self.faults]
        self.pending.append(Action(self.seconds, "feed stopped", self._feed_over))
        while self.pending:
            for action in sorted((a for a in self.pending if a.at <= self.clock()), key=lambda a: a.at):
                if action.step():
                    self.pending.remove(action)
                    self.say(f"t+{self.clock():6.1f} s  {action.name}")
            time.sleep(0.1)

    def _restore_all(self) -> None:
        """Whatever happens: LocalStack running and the database accepting again."""
        for kind in list(self.until):
            self.outages[kind].restore()
            del self.until[kind]

    # --- the run -------------------------------------------------------------------
    def run(self) -> Outcome:
        self.say(f"soak: seed {self.seed}, {self.seconds:.0f} s, {RATE} events/s, {WORKERS} workers and a beat")
        self.say(f"shutdown bound on SIGTERM: {self.outcome.bound:.0f} s; schedule ({len(self.faults)} faults):")
        for fault in self.faults:
            self.say(f"  {fault}")
        try:
            self._start_beat()
            self.workers = [self._worker(slot) for slot in range(WORKERS)]
            for worker in self.workers:
                worker.ready()
            self.feeder = self.h.Feeder(RATE, self.seed, prefix=f"soak{self.seed}")
            self.started = time.monotonic()
            self._play()
            self._restore_all()
            for thread in self.stopping:
                thread.join()
            self._check()
        except Exception as exc:  # the verdict names what broke the soak itself
            self.say(f"{type(exc).__name__}: {exc}")
            self.outcome.problems.append(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
        finally:
            self._restore_all()
            if hasattr(self, "feeder"):
                self.feeder.stopped.set()
            for thread in self.stopping:
                thread.join()
            for worker in self.workers:
                worker.kill()
            if self.beat is not None:
                self.h.kill_group(self.beat)
        self.say(self.outcome.verdict())
        return self.outcome

    def _check(self) -> None:
        for worker in self.workers:
            worker.ready()  # the last replacements came up
        assert self.beat is not None and self.beat.poll() is None, "beat exited by itself; see soak-beat.log"
        drain_started = time.monotonic()
        try:
            runner.wait_until_drained(600, poll=1, settle=3)
        except runner.DrainTimeout as exc:
            raise AssertionError(f"not drained: {exc}") from None
        self.say(f"drained {time.monotonic() - drain_started:.0f} s after the feed stopped")
        db = store.connect(self.database_url)
        try:
            counts = self.h.tally(self.feeder.messages, db)
            letters = counts.pop("letters")
            self.outcome.counts = counts
            self.outcome.reasons = dict(collections.Counter(letters.values()))
            self.outcome.valid = self.feeder.valid
            self.outcome.leaked = len(stored(db, self.h.raw_values(list(self.feeder.messages.values()))))
        finally:
            db.close()


RUN = re.compile(r"[0-9.\-]+")


def stored(db: store.Connection, raw: set[str]) -> set[str]:
    """Which of the raw values appear in any table of the database, as a whole value or
    inside a longer one (every row of every table, as JSON text)."""
    with db.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = [r[0] for r in cur.fetchall()]
        texts = []
        for table in tables:
            cur.execute(sql.SQL("SELECT row_to_json(t)::text FROM {} t").format(sql.Identifier(table)))
            texts += [r[0] for r in cur.fetchall()]
    db.rollback()
    return found_in(raw, texts)


def found_in(raw: set[str], texts: Iterable[str]) -> set[str]:
    """The raw values that occur in the texts. Values made of digits, dots and hyphens
    (the seed's ips and device ids) are looked up among the substrings of each such run
    of characters, which is exact and fast; any other value by a plain search."""
    shaped = {v for v in raw if RUN.fullmatch(v)}
    others, lengths = raw - shaped, {len(v) for v in shaped}
    found = set()
    for text in texts:
        found |= {v for v in others if v in text}
        for run in RUN.findall(text):
            found |= {run[i : i + n] for n in lengths for i in range(len(run) - n + 1)} & shaped
    return found


# --- `python -m tasks dev faults --soak MINUTES --seed N` --------------------------------------
def run(minutes: float, seed: int) -> int:
    """Run the soak on a fresh test stack (pytest makes it and removes it), print its
    schedule and progress as it goes, and its verdict last. Exit 0 if it passed."""
    with tempfile.TemporaryDirectory(prefix="login-pipeline-soak-") as folder:
        verdict_file = Path(folder) / "verdict"
        env = {
            **os.environ,
            "SOAK_SECONDS": str(minutes * 60),
            "SOAK_SEED": str(seed),
            "SOAK_VERDICT": str(verdict_file),
        }
        test = "tests/test_faults.py::test_randomized_soak_with_faults_combined"
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s", test]
        outcome = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
        verdict = verdict_file.read_text().strip() if verdict_file.exists() else ""
    print(verdict or f"soak FAILED (seed {seed}): it did not finish; see the output above")
    return 0 if outcome == 0 and verdict.startswith("soak passed") else 1
