"""`conformance`: Celery's and kombu's own integration suites on SQS, run on stock kombu
SQS and on this project's transport, and the table of both in docs/transport.md.

The suites come from the sdists of the installed Celery and kombu, downloaded with pip
and unpacked under the stack folder: used in place, never copied into the repository.
They run against a private embedded LocalStack (its own folder and free port) with a
private Redis as Celery's result backend, each target once in one pytest session per
file and once in one session per test, with the plugin dev/devkit/conformance_plugin.py
choosing the transport and counting worker deaths. Each session's result is kept in
.stack/conformance/results.json as it finishes, so an interrupted run resumes (`--fresh`
starts over); a change to the transport or to either version makes old results void.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "transport.md"
TRANSPORT = ROOT / "tasks" / "broker" / "transport.py"
BEGIN, END = "<!-- conformance:begin -->", "<!-- conformance:end -->"
VARIANTS = ("stock", "ours")
TEST_TIMEOUT = 200  # seconds one test may take (pytest-timeout), so that its report is written
SESSION_TIMEOUT = TEST_TIMEOUT + 60  # and a one-test session, before it is killed
FILE_TIMEOUT = 1800  # and a whole-file session
# Chain, group, chord, result set and link_error: the canvas that rides on the broker.
# Six of each of the first three (the basic forms, the parent ids, an error path) and
# every non-eager and eager test of the last two: 32 tests, short enough to run one
# session per test.
CANVAS_SUBSET = tuple(
    f"{group}::{test}"
    for group, tests in {
        "test_chain": "simple_chain single_chain complex_chain group_results_in_chain chain_on_error parent_ids",
        "test_group": "parent_ids nested_group large_group group_lone callback_called_by_group "
        "errback_called_by_group_fail_first",
        "test_chord": "chord_order single_task_header empty_header_chord nested_chord chord_on_error parallel_chords",
        "test_result_set": "result_set result_set_error result_set_built_via_add result_set_add_after_ready "
        "join_exhausted_timeout join_native_timeout_zero_gives_up_on_pending_results "
        "join_native_timeout_zero_returns_results_that_are_ready",
        "test_link_error": "mutable_errback_with_stored_arguments link_error_eager link_error "
        "link_error_callback_error_callback_retries_eager link_error_callback_retries "
        "link_error_using_signature_eager link_error_using_signature",
    }.items()
    for test in (f"test_{name}" for name in tests.split())
)


@dataclass(frozen=True)
class Target:
    project: str  # celery or kombu: whose sdist
    path: str
    tests: tuple[str, ...] = ()  # a named subset (class::test), or the whole file

    @property
    def label(self) -> str:
        if not self.tests:
            return Path(self.path).name
        return f"{Path(self.path).name} ({len(self.tests)} tests of chain, group, chord, result set, link_error)"

    @property
    def ids(self) -> list[str]:
        """What one session for the whole target runs."""
        return [f"{self.path}::{test}" for test in self.tests] or [self.path]


TARGETS = (
    Target("celery", "t/integration/test_inspect.py"),
    Target("celery", "t/integration/test_tasks.py"),
    Target("celery", "t/integration/test_canvas.py", CANVAS_SUBSET),
    Target("kombu", "t/integration/test_sqs.py"),
)


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    deaths: int = 0
    failing: set[str] = field(default_factory=set)

    def add(self, other: Tally) -> None:
        self.outcomes.update(other.outcomes)
        self.sessions += other.sessions
        self.deaths += other.deaths
        self.failing |= other.failing

    def cell(self) -> str:
        o = self.outcomes
        text = f"{o['passed']} passed, {o['failed']} failed, {o['skipped']} skipped"
        return text + f"; {self.deaths} of {self.sessions} sessions with a worker death"


def digest(items: list[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:12]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sources(work: Path) -> dict[str, Path]:
    """The unpacked sdists of the installed celery and kombu."""
    found = {}
    for project in ("celery", "kombu"):
        name = f"{project}-{version(project)}"
        tree = work / "src" / name
        if not tree.exists():
            sdists = work / "sdists"
            pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
            subprocess.run([*pip, "-d", str(sdists), f"{project}=={version(project)}"], check=True)
            with tarfile.open(sdists / f"{name}.tar.gz") as archive:
                archive.extractall(work / "src", filter="data")
        found[project] = tree
    return found


@dataclass
class Endpoints:
    """Where a session finds SQS (a LocalStack) and Redis (Celery's result backend)."""

    sqs_port: int
    redis_port: int
    env: dict[str, str]

    def session_env(self, variant: str, deaths: Path) -> dict[str, str]:
        return {
            **self.env,
            "TEST_BROKER": f"sqs://test:test@localhost:{self.sqs_port}",
            "TEST_BACKEND": f"redis://127.0.0.1:{self.redis_port}/0",
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(self.redis_port),
            "SQS_HOST": "localhost",
            "SQS_PORT": str(self.sqs_port),
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "CONFORMANCE_TRANSPORT": variant,
            "CONFORMANCE_DEATHS": str(deaths),
            "PYTHONPATH": str(ROOT),
        }


def redis_command(port: int) -> list[str]:
    redis = shutil.which("redis-server")
    if not redis:
        raise SystemExit("conformance needs redis-server (Celery's result backend): apt-get install redis-server")
    return [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


class Services(Endpoints):
    """A private LocalStack (the embedded stack in its own folder) and a private Redis."""

    def __init__(self, work: Path) -> None:
        sqs_port = free_port()
        env = {
            **os.environ,
            "STACK_DIR": str(work / "stack"),
            "LOCALSTACK_PORT": str(sqs_port),
            "LOCALSTACK_VENV": str(ROOT / ".stack" / "localstack-venv"),
            "SQS_ENDPOINT_URL": f"http://localhost:{sqs_port}",
        }
        super().__init__(sqs_port, free_port(), env)
        self.redis: subprocess.Popen | None = None

    def __enter__(self) -> Services:
        self.redis = subprocess.Popen(redis_command(self.redis_port), stdout=subprocess.DEVNULL, start_new_session=True)
        subprocess.run([sys.executable, "-m", "tasks", "dev", "stack", "up"], env=self.env, check=True, cwd=ROOT)
        return self

    def __exit__(self, *_: object) -> None:
        subprocess.run([sys.executable, "-m", "tasks", "dev", "stack", "down"], env=self.env, check=False, cwd=ROOT)
        if self.redis:
            self.redis.terminate()
            self.redis.wait(timeout=30)


def celery_overrides(tree: Path, prefix: str) -> None:
    """Celery's suite reads integration-tests-config.json from its own root."""
    options = {
        "region": "us-east-1",
        "is_secure": False,
        "queue_name_prefix": prefix,
        "supports_fanout": True,
        "wait_time_seconds": 1,
        "polling_interval": 0.1,
        "visibility_timeout": 60,
    }
    (tree / "integration-tests-config.json").write_text(json.dumps({"broker_transport_options": options}))


def pytest_command(
    target: Target, tree: Path, ids: list[str], report: Path, deselect: tuple[str, ...] = ()
) -> list[str]:
    """One session; reruns off, so that a test counts once, as it first came out."""
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:rerunfailures"]
    command += ["-p", "devkit.conformance_plugin"]
    if target.project == "celery":
        command += ["-p", "celery.contrib.pytest"]  # its fixtures (celery_parameters, ...)
    command += ["-q", "-o", "addopts=", f"--rootdir={tree}", f"--junitxml={report}", f"--timeout={TEST_TIMEOUT}"]
    command += [f"--deselect={test_id}" for test_id in deselect]
    return [*command, *ids]


def collect(tree: Path, target: Target, env: dict[str, str]) -> list[str]:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--collect-only", "-o", "addopts="]
    command += ["-p", "celery.contrib.pytest"] if target.project == "celery" else []
    command += target.ids
    out = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False).stdout
    found = [line.strip() for line in out.splitlines() if "::" in line]
    if not found:
        raise SystemExit(f"pytest collected nothing of {target.path} in {tree}")
    return found


def outcomes(report: Path, ids: list[str]) -> tuple[Counter[str], set[str]]:
    counts: Counter[str] = Counter()
    failing: set[str] = set()
    if not report.exists():
        counts["failed"] += 1
        return counts, {f"(session crashed or timed out: {' '.join(ids)[:200]})"}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        name = f"{case.get('classname')}::{case.get('name')}"
        if kinds & {"failure", "error"}:
            counts["failed"] += 1
            failing.add(name)
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts, failing


def run_session(
    tree: Path,
    ids: list[str],
    target: Target,
    services: Endpoints,
    variant: str,
    work: Path,
    deselect: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Tally:
    n = time.monotonic_ns()
    report, deaths = work / "reports" / f"{n}.xml", work / "reports" / f"{n}.deaths"
    report.parent.mkdir(parents=True, exist_ok=True)
    celery_overrides(tree, f"conf{n % 10**8}-")
    whole_file = ids == target.ids
    command = pytest_command(target, tree, ids, report, deselect)
    log = work / "reports" / f"{n}.log"
    with open(log, "w") as out:
        session = subprocess.Popen(
            command,
            cwd=tree,
            env={**services.session_env(variant, deaths), **(env or {})},
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        try:
            session.wait(timeout=FILE_TIMEOUT if whole_file else SESSION_TIMEOUT)
        except subprocess.TimeoutExpired:
            out.write("\n(conformance: session timed out and was killed)\n")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(session.pid, signal.SIGKILL)
            session.wait()
    counts, failing = outcomes(report, ids)
    died = deaths.exists() and bool(deaths.read_text().strip())
    return Tally(counts, 1, int(died), failing)


class Ledger:
    """Each finished session's result, kept in the stack folder as it comes, so that an
    interrupted run resumes where it stopped. A result counts only for the transport
    code and the celery and kombu versions it was measured with."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        self.stamp = "|".join(
            [version("celery"), version("kombu"), hashlib.sha256(TRANSPORT.read_bytes()).hexdigest()[:16]]
        )
        known = {}
        if path.exists() and not fresh:
            with contextlib.suppress(ValueError):  # a ledger cut short: measure again
                known = json.loads(path.read_text())
        self.sessions: dict[str, dict] = {k: v for k, v in known.items() if v.get("stamp") == self.stamp}

    def key(self, target: Target, variant: str, session: str) -> str:
        return f"{target.label}|{variant}|{session}"

    def get(self, target: Target, variant: str, session: str) -> Tally | None:
        entry = self.sessions.get(self.key(target, variant, session))
        if entry is None:
            return None
        return Tally(Counter(entry["outcomes"]), 1, entry["deaths"], set(entry["failing"]))

    def put(self, target: Target, variant: str, session: str, tally: Tally) -> None:
        entry = {"stamp": self.stamp, "outcomes": dict(tally.outcomes), "deaths": tally.deaths}
        self.sessions[self.key(target, variant, session)] = {**entry, "failing": sorted(tally.failing)}
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.sessions, indent=1))
        os.replace(partial, self.path)  # never half written


def measured(ledger: Ledger, tree: Path, ids: list[str], target: Target, services: Endpoints, variant: str) -> Tally:
    session = ids[0] if ids != target.ids else "file" if not target.tests else f"subset {digest(target.ids)}"
    tally = ledger.get(target, variant, session)
    if tally is None:
        tally = run_session(tree, ids, target, services, variant, ledger.path.parent)
        ledger.put(target, variant, session, tally)
    return tally


def run(per_test: bool = True, only: str | None = None, write: bool = False, fresh: bool = False) -> int:
    work = ROOT / ".stack" / "conformance"
    trees = sources(work)
    ledger = Ledger(work / "results.json", fresh)
    results: dict[tuple[str, str, str], Tally] = {}
    targets = [t for t in TARGETS if only is None or only in t.path]
    modes = ("file", "test") if per_test else ("file",)
    with Services(work) as services:
        for mode in modes:  # every file first: the most telling figures come soonest
            for target in targets:
                tree = trees[target.project]
                sessions = [target.ids]
                if mode == "test":
                    found = collect(tree, target, services.session_env("stock", work / "none"))
                    sessions = [[test_id] for test_id in found]
                for variant in VARIANTS:
                    tally = Tally()
                    for ids in sessions:
                        tally.add(measured(ledger, tree, ids, target, services, variant))
                    results[(target.label, variant, mode)] = tally
                    print(f"{target.label} {variant} one session per {mode}: {tally.cell()}", flush=True)
    text = table(results, targets, per_test)
    print(text)
    if write:
        write_docs(text)
    return 0


def target_of(test_id: str) -> Target:
    for target in TARGETS:
        if test_id.startswith(f"{target.path}::"):
            return target
    raise SystemExit(f"{test_id} is not a test of {', '.join(t.path for t in TARGETS)} (give path::class::test)")


def repeat(test_id: str, runs: int) -> int:
    """Run one test `runs` times on this transport, one session each, and print its pass
    count: how often a test that fails now and then passes (not kept in the ledger)."""
    work = ROOT / ".stack" / "conformance"
    target = target_of(test_id)
    tree = sources(work)[target.project]
    passed = 0
    with Services(work) as services:
        for run_number in range(1, runs + 1):
            tally = run_session(tree, [test_id], target, services, "ours", work)
            passed += tally.outcomes["passed"]
            print(f"run {run_number}: {dict(tally.outcomes)}; {passed} of {run_number} passed so far", flush=True)
    print(f"{test_id} on this transport: {passed} of {runs} one-test sessions passed")
    return 0


def probe(tries: int) -> int:
    """Time an ETA task's trip and the `inspect` broadcast sent after it, `tries` times, in
    Celery's suite on this transport (dev/devkit/order_probe.py), and print the figures."""
    work = ROOT / ".stack" / "conformance"
    tree = sources(work)["celery"]
    probe_file = tree / "t" / "integration" / "test_zz_order_probe.py"
    out = work / "reports" / f"probe-{time.monotonic_ns()}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(__file__).with_name("order_probe.py"), probe_file)
    try:
        with Services(work) as services:
            env = {"CONFORMANCE_PROBE_OUT": str(out), "CONFORMANCE_PROBE_TRIES": str(tries)}
            run_session(tree, [str(probe_file.relative_to(tree))], TARGETS[0], services, "ours", work, env=env)
    finally:
        probe_file.unlink()
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    print(probe_summary(rows))
    return 0 if rows else 1


def probe_summary(rows: list[dict]) -> str:
    def spread(key: str) -> str:
        values = sorted(r[key] for r in rows if r[key] is not None)
        if not values:
            return "none measured"
        median, p90 = values[len(values) // 2], values[min(len(values) - 1, int(len(values) * 0.9))]
        return f"median {median:.3f} s, p90 {p90:.3f} s, max {values[-1]:.3f} s (of {len(values)})"

    return "\n".join(
        [
            f"tries: {len(rows)}",
            f"task, publish to worker's receipt: {spread('task_s')}",
            f"broadcast, publish to worker's handler: {spread('broadcast_s')}",
            f"task received before the broadcast: {sum(r['task_first'] for r in rows)} of {len(rows)}",
            f"task listed by inspect.scheduled(): {sum(r['listed'] for r in rows)} of {len(rows)}",
        ]
    )


def table(results: dict[tuple[str, str, str], Tally], targets: list[Target], per_test: bool) -> str:
    modes = ("file", "test") if per_test else ("file",)
    lines = ["| tests | sessions | A: stock kombu SQS | B: this transport |", "|---|---|---|---|"]
    for target in targets:
        for mode in modes:
            stock, ours = results[(target.label, "stock", mode)], results[(target.label, "ours", mode)]
            lines.append(f"| `{target.label}` | one per {mode} | {stock.cell()} | {ours.cell()} |")
    lines += ["", "Tests that fail on this transport:", ""]
    for target in targets:
        for mode in modes:
            ours, stock = results[(target.label, "ours", mode)], results[(target.label, "stock", mode)]
            for name in sorted(ours.failing):
                also = " (fails on stock too)" if name in stock.failing else " (passes on stock)"
                lines.append(f"- one per {mode}: `{name}`{also}")
    return "\n".join(lines)


def write_docs(text: str) -> None:
    head, found, rest = DOC.read_text().partition(BEGIN)
    if not found:
        raise SystemExit(f"{DOC} has no {BEGIN} marker")
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.partition(END)[2]}")
