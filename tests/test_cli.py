"""The commands of docs/commands.md, run as a user runs them.

The first tests need no stack: each points a command at a closed port, a taken port or
a bad value, and checks its exit code and its one line (issue 20). The later ones run
against the test stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import pytest

import celeryconfig as config
from devkit import seed
from tasks.broker import aws
from tasks.pipeline import store
from tests.helpers import (
    command,
    dead_letters,
    flower_request,
    free_port,
    kill_group,
    own_stack_dir,
    processes_of,
    python_m_tasks,
    send_with_ids,
    spawn,
    wait_until,
)
from tests.unit.test_commands import every_command

KEY = "1:" + "A" * 43 + "="


@pytest.fixture
def nothing_there(tmp_path: Path) -> dict[str, str]:
    """SQS and PostgreSQL on closed ports, and a stack folder of its own."""
    closed = free_port()
    return {
        "STACK_DIR": str(tmp_path),
        "SQS_ENDPOINT_URL": f"http://127.0.0.1:{closed}",
        "LOCALSTACK_PORT": str(closed),
        "DATABASE_URL": f"postgresql://pipeline:not-this-password@127.0.0.1:{closed}/logins",
    }


def one_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The command failed with `code` and said so in one line holding `words`."""
    said = result.stderr.strip()
    assert result.returncode == code, (result.returncode, said, result.stdout)
    assert "Traceback" not in said + result.stdout
    assert len(said.splitlines()) == 1, said
    for word in words:
        assert word in said
    return said


@contextlib.contextmanager
def listening() -> Iterator[int]:
    """A port that something else already listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


@pytest.mark.parametrize(
    "command",
    [["init"], ["sweep"], ["redrive", "--batches"], ["dev", "seed"], ["dev", "seed", "--count", "5"]],
    ids=" ".join,
)
def test_a_command_meeting_sqs_down_names_it_in_one_line(command: list[str], nothing_there) -> None:
    said = one_line(python_m_tasks(*command, env=nothing_there), 3, "SQS unreachable at 127.0.0.1:")
    assert nothing_there["LOCALSTACK_PORT"] in said


@pytest.mark.parametrize("command", [["unmask", "--field", "ip", "--reason", "r", "s1:AAAA"], ["rekey"]], ids=" ".join)
def test_a_command_meeting_postgresql_down_names_it_in_one_line(command: list[str], nothing_there) -> None:
    env = {**nothing_there, "MASKING_MODE": "siv", "MASKING_KEYS": KEY}
    said = one_line(python_m_tasks(*command, env=env), 3, "PostgreSQL unreachable", "DATABASE_URL")
    assert "not-this-password" not in said


def test_status_shows_what_it_reaches_and_marks_the_rest_unreachable(nothing_there) -> None:
    result = python_m_tasks("status", env=nothing_there)
    assert result.returncode == 3 and "Traceback" not in result.stdout + result.stderr
    assert sum("unreachable" in line for line in result.stdout.splitlines()) == 6  # five queues and the database
    report = json.loads(python_m_tasks("status", "--json", env=nothing_there).stdout)
    assert "PostgreSQL unreachable" in report["database"]["unreachable"]
    no_stack = {**nothing_there, "DATABASE_URL": ""}
    report = json.loads(python_m_tasks("status", "--json", env=no_stack).stdout)
    assert "embedded stack is not up" in report["database"]["unreachable"]


def test_stack_up_with_localstack_port_taken_names_it_and_starts_nothing(nothing_there, tmp_path) -> None:
    from tests.helpers import processes_of

    with listening() as port:
        env = {**nothing_there, "LOCALSTACK_PORT": str(port), "SQS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        said = one_line(python_m_tasks("dev", "stack", "up", env=env, timeout=60), 3, f"port {port}")
    assert "LOCALSTACK_PORT" in said
    assert not processes_of(tmp_path)
    assert not (tmp_path / "localstack.pid").exists()


def test_run_with_flower_port_taken_names_it_and_starts_nothing(nothing_there, tmp_path) -> None:
    from tests.helpers import processes_of

    with listening() as port:
        said = one_line(python_m_tasks("dev", "run", env={**nothing_there, "FLOWER_PORT": str(port)}), 3)
    assert f"port {port} (FLOWER_PORT) is already taken" in said
    assert not processes_of(tmp_path) and not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["dev", "seed", "--count", "-5"],
        ["redrive", "--limit", "-1"],
        ["redrive", "--limit", "0"],
        ["redrive", "--reason", "outage"],
        ["redrive", "--since", "yesterday"],
        ["redrive", "--until", "2026-13-01"],
        ["redrive", "--since", "2026-12-07", "--until", "2026-12-01"],
        ["redrive", "--batches", "--reason", "transient"],
        ["health", "--max-age", "-1"],
        ["rekey", "--batch", "0"],
        ["dev", "run", "--seed", "-1"],
        ["dev", "run", "--timeout", "5"],  # without --drain
        ["dev", "bench", "--events", "0"],
        ["unmask", "--field", "ip", "--reason", "x", "--query", "select 1"],
        ["stack", "up"],  # the old name: now `dev stack up`
    ],
    ids=" ".join,
)
def test_a_bad_number_or_option_is_refused_with_one_line_and_exit_2(command: list[str], nothing_there) -> None:
    one_line(python_m_tasks(*command, env=nothing_there), 2, "usage:")


def test_a_bad_setting_is_one_line_and_help_still_works(nothing_there) -> None:
    env = {**nothing_there, "BATCH_SIZE": "abc"}
    one_line(python_m_tasks("status", env=env), 2, "configuration")
    assert python_m_tasks("--help", env=env).returncode == 0


def test_debug_shows_the_traceback(nothing_there) -> None:
    for result in (
        python_m_tasks("--debug", "init", env=nothing_there),
        python_m_tasks("init", env={**nothing_there, "LOG_LEVEL": "DEBUG"}),
    ):
        assert result.returncode == 3
        assert "Traceback" in result.stderr and result.stderr.strip().splitlines()[-1].startswith("SQS unreachable")


def test_health_says_what_it_checked_and_the_heartbeat_age(nothing_there, tmp_path) -> None:
    result = python_m_tasks("health", env=nothing_there)
    assert result.returncode == 1 and result.stderr.startswith("worker not alive: no heartbeat file")
    (tmp_path / "worker.alive").touch()
    os.utime(tmp_path / "worker.alive", (0, os.path.getmtime(tmp_path / "worker.alive") - 90))
    result = python_m_tasks("health", "--max-age", "60", env=nothing_there)
    assert result.returncode == 1 and "event loop 9" in result.stderr and "limit 60 s" in result.stderr
    result = python_m_tasks("health", "--max-age", "600", env=nothing_there)
    assert result.returncode == 0 and result.stdout.startswith("worker alive:")


def test_version_and_the_help_of_every_command(nothing_there) -> None:
    assert python_m_tasks("--version").stdout.strip() == f"login-pipeline {version('login-pipeline')}"
    paths = [path.split() for path, _ in every_command()]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: python_m_tasks(*p, "--help", env=nothing_there), [[], *paths]))
    for path, result in zip([[], *paths], results, strict=True):
        assert result.returncode == 0 and result.stdout.startswith("Usage: python -m tasks"), path


def test_the_operator_commands_are_a_celery_sub_command_too(nothing_there) -> None:
    result = command([sys.executable, "-m", "celery", "-A", "tasks", "pipeline", "health"], 60, nothing_there)
    assert result.returncode == 1 and result.stderr.startswith("worker not alive: no heartbeat file"), result.stderr


# --- Against the test stack ----------------------------------------------------------
def run_alone(*args: str) -> subprocess.CompletedProcess[str]:
    """`dev run` on the session's stack with a STACK_DIR of its own; once it has ended,
    however, no process of its own is left (issue 33) and none of its children was killed."""
    env = own_stack_dir(config.STACK_DIR / f"run-{uuid.uuid4().hex}")
    result = python_m_tasks("dev", "run", *args, env=env)
    left = processes_of(Path(env["STACK_DIR"]))
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"left running by `dev run {' '.join(args)}`: {left}"
    assert "SIGKILL" not in result.stderr, result.stderr[-3000:]
    return result


def drain(*args: str) -> dict[str, float]:
    result = run_alone("--drain", "--json", "--timeout", "240", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.usefixtures("clean")
def test_drain_turns_seeded_events_into_masked_rows_and_dead_letters(db) -> None:
    summary = drain("--seed", "1000")
    assert (summary["received"], summary["inserted"], summary["dead_lettered"], summary["duplicates"]) == (
        1000,
        983,
        17,
        0,
    )
    assert aws.queue_depth(config.SOURCE_QUEUE) == {"visible": 0, "in_flight": 0}
    with db.cursor() as cur:
        cur.execute(
            "SELECT count(*), count(*) FILTER (WHERE masked_ip LIKE 'h1:%' AND masked_device_id LIKE 'h1:%')"
            " FROM user_logins"
        )
        without_ip = sum(ok and json.loads(b)["ip"] is None for b, ok in seed.generate(1000))
        assert cur.fetchone() == (983, 983 - without_ip)
        cur.execute("SELECT masked_ip, masked_device_id FROM user_logins")
        stored = {v for row in cur.fetchall() for v in row if v}
    db.rollback()
    raw = {json.loads(b).get(k) for b, ok in seed.generate(1000) if ok for k in ("ip", "device_id")}
    assert not stored & raw
    letters = dead_letters()
    assert len(letters) == 17 and all(m["MessageAttributes"]["reason"]["StringValue"] for m in letters)


@pytest.mark.usefixtures("clean")
def test_a_second_run_over_redelivered_messages_adds_no_rows(db) -> None:
    messages = {f"m-{n}": body for n, (body, _) in enumerate(seed.generate(500, seed=11))}
    send_with_ids(messages)
    first = drain()
    send_with_ids(messages)
    second = drain()
    assert first["received"] == second["received"] == 500
    assert (second["inserted"], second["dead_lettered"], second["duplicates"]) == (0, 0, 500)
    assert store.totals(db)["rows"] == first["inserted"]


@pytest.mark.usefixtures("clean")
def test_status_reports_json() -> None:
    result = python_m_tasks("status", "--json")
    report = json.loads(result.stdout)
    assert set(report["queues"]) >= {config.SOURCE_QUEUE, config.DEAD_LETTER_QUEUE}
    assert "rows" in report["database"]


@pytest.mark.usefixtures("clean")
def test_redrive_dry_run_says_what_it_would_move_and_moves_nothing() -> None:
    sqs = aws.client("sqs")
    for body in ("{not json", "[1]"):
        reason = {"reason": {"DataType": "String", "StringValue": "test"}}
        sqs.send_message(QueueUrl=aws.queue_url(config.DEAD_LETTER_QUEUE), MessageBody=body, MessageAttributes=reason)
    result = python_m_tasks("redrive", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"would move 2 messages from {config.DEAD_LETTER_QUEUE}"), result.stdout
    assert "keep 0" in result.stdout
    assert aws.queue_depth(config.DEAD_LETTER_QUEUE)["visible"] == 2  # handed back at once


@pytest.mark.usefixtures("clean")
def test_init_with_postgresql_down_names_it_in_one_line() -> None:
    closed = f"postgresql://x:y@127.0.0.1:{free_port()}/logins"
    one_line(python_m_tasks("init", env={"DATABASE_URL": closed}), 3, "PostgreSQL unreachable")


@pytest.mark.usefixtures("clean")
def test_drain_gives_up_after_its_timeout() -> None:
    result = run_alone("--drain", "--seed", "2000", "--timeout", "1")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("not drained: login-queue or the batch queue")


def marked(marker: str) -> list[int]:
    """Pids of live processes whose environment holds this marker."""
    needle = f"RUN_MARKER={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


def flower_serves(port: int) -> bool:
    try:
        return flower_request(port, "/healthcheck")[0] == 200
    except OSError:  # not listening yet
        return False


def flower_of_the_run(marker: str) -> int | None:
    """The pid of the Flower that the run marked with `marker` started, once it is up."""
    for pid in marked(marker):
        with contextlib.suppress(OSError):
            if b"flower" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    return None


@pytest.mark.usefixtures("clean")
def test_run_stops_the_others_when_a_child_exits_and_shows_its_log(tmp_path) -> None:
    """Flower dies under a running `dev run`: the run stops worker and beat, shows
    Flower's last log lines and exits 4."""
    marker, port = uuid.uuid4().hex, free_port()
    log = tmp_path / "run.log"
    run = spawn([sys.executable, "-m", "tasks", "dev", "run"], log, {"FLOWER_PORT": str(port), "RUN_MARKER": marker})
    try:
        flower = wait_until(lambda: flower_of_the_run(marker), timeout=60, what="the run's Flower")
        # Serving, so that it has logged (killed before its first line, its log was empty)
        wait_until(lambda: flower_serves(port), timeout=60, what="the run's Flower to serve")
        os.kill(flower, signal.SIGKILL)
        assert run.wait(timeout=120) == 4, log.read_text()[-3000:]
    finally:
        kill_group(run)
        left = marked(marker)
        for pid in left:  # the run's children, should it have failed to stop them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not left  # worker and beat are gone
    said = log.read_text()
    assert "Traceback" not in said
    lines = said.strip().splitlines()
    failure = next(line for line in lines if line.startswith("flower exited with status"))
    assert "the others were stopped" in failure
    assert any(line.startswith("  | ") for line in lines[lines.index(failure) :])  # Flower's last log lines
