"""A bad setting stops every start with one line that names it and exit status 2, and
`python -m tasks config` shows the values in effect with secrets hidden. Each runs as a
user runs it, a subprocess, with no stack."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

import celeryconfig

ROOT = Path(__file__).resolve().parent.parent
PORTS = "an integer from 1 to 65,535"
BAD_VALUES = [
    ("BATCH_SIZE", "abc", "an integer from 1 to 10,000"),
    ("BATCH_SIZE", "0", "an integer from 1 to 10,000"),
    ("BATCH_SIZE", "-3", "an integer from 1 to 10,000"),
    ("DEAD_LETTER_KEEP_BODY", "ture", "true/1/yes/on or false/0/no/off"),
    ("FETCH_INTERVAL", "-1", "a number above 0, at most 3,600"),
    ("MASKING_MODE", "rot13", "hmac or siv"),
    ("LOCALSTACK_PORT", "0", PORTS),
    ("FLOWER_PORT", "70000", PORTS),
]
# `python -m tasks --help` still helps (the settings load when a command runs: tests/test_cli.py).
ENTRY_POINTS = {
    "python -m tasks config": ["-m", "tasks", "config"],
    "celery worker --help": ["-m", "celery", "-A", "tasks", "worker", "--help"],
    "celery beat --help": ["-m", "celery", "-A", "tasks", "beat", "--help"],
    "celery flower --help": ["-m", "celery", "-A", "tasks", "flower", "--conf=flowerconfig.py", "--help"],
}


def start(command: list[str], **settings: str) -> subprocess.CompletedProcess[str]:
    """`command` under the environment without any of the pipeline's settings but these."""
    environment = {k: v for k, v in os.environ.items() if k not in celeryconfig.Settings.model_fields}
    return subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        env={**environment, **settings},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(("name", "value", "accepted"), BAD_VALUES, ids=[f"{n}={v}" for n, v, _ in BAD_VALUES])
def test_a_bad_value_stops_the_import_with_one_line_naming_it(name: str, value: str, accepted: str) -> None:
    result = start(["-c", "import celeryconfig"], **{name: value})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [f"configuration: {name}={value!r} is not valid: it accepts {accepted}"]


@pytest.mark.parametrize("command", ENTRY_POINTS.values(), ids=list(ENTRY_POINTS))
def test_every_entry_point_stops_with_that_line_even_for_help(command: list[str]) -> None:
    result = start(command, BATCH_SIZE="abc")
    assert (result.returncode, result.stdout) == (2, ""), result.stderr[-2000:]
    assert result.stderr.splitlines() == [
        "configuration: BATCH_SIZE='abc' is not valid: it accepts an integer from 1 to 10,000"
    ]


def test_every_bad_variable_is_named_on_the_one_line_and_no_secret_is_shown() -> None:
    result = start(
        ["-c", "import celeryconfig"],
        FLOWER_BASIC_AUTH="no-colon-hunter2",
        DATABASE_URL="mysql://app:hunter2@db/logins",
        WORKER_CONCURRENCY="0",
    )
    [line] = result.stderr.splitlines()
    assert result.returncode == 2 and "hunter2" not in line
    assert line.split("; ") == [
        "configuration: DATABASE_URL is not valid: it accepts a postgresql:// URL (its password a secret), or empty",
        "FLOWER_BASIC_AUTH is not valid: it accepts user:password entries (a secret), or empty",
        "WORKER_CONCURRENCY='0' is not valid: it accepts an integer from 1 to 256",
    ]


def test_config_prints_the_values_in_effect_marked_by_source_with_secrets_hidden() -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    result = start(
        ["-m", "tasks", "config"],
        LOCALSTACK_PORT="4630",
        MASKING_KEYS=f"1:{key}",
        DATABASE_URL="postgresql://login_pipeline_worker:hunter2@db:5432/logins",
        FLOWER_BASIC_AUTH="admin:s3cret",
        DEAD_LETTER_KEEP_BODY="Off",
    )
    assert (result.returncode, result.stderr) == (0, "")
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    assert list(rows) == list(celeryconfig.Settings.model_fields), "every setting, in the declared order"
    assert rows["LOCALSTACK_PORT"] == ["4630", "environment"]
    assert rows["SQS_ENDPOINT_URL"] == ["http://localhost:4630", "default"], "a default made from a value in effect"
    assert rows["CELERY_BROKER_URL"] == ["sqs://localhost:4630", "default"]  # no keys: the transport's rule
    assert rows["DEAD_LETTER_KEEP_BODY"] == ["false", "environment"]
    assert rows["BATCH_SIZE"] == ["500", "default"]
    assert rows["MASKING_KEYS"] == ["(hidden)", "environment"]
    assert rows["FLOWER_BASIC_AUTH"] == ["(hidden)", "environment"]
    assert rows["DATABASE_URL"] == ["postgresql://login_pipeline_worker:***@db:5432/logins", "environment"]
    assert not {key, "hunter2", "s3cret"} & set(result.stdout.split()) and "hunter2" not in result.stdout


def test_a_fetch_longer_than_its_messages_stay_hidden_stops_the_worker_with_one_line() -> None:
    """An operator who slows beat to FETCH_INTERVAL=40 makes 60 s fetches: their messages
    would come back to another fetch after SOURCE_VISIBILITY_TIMEOUT (60 s) and be written
    twice. Each setting is valid alone; together they stop the start."""
    result = start(ENTRY_POINTS["celery worker --help"], FETCH_INTERVAL="40")
    assert (result.returncode, result.stdout) == (2, ""), result.stderr[-2000:]
    assert result.stderr.splitlines() == [
        "configuration: SOURCE_VISIBILITY_TIMEOUT=60 must be above FETCH_MAX_SECONDS + FETCH_WAIT_SECONDS + 5 s"
        " (66 s): a fetch holds its messages that long before their deletes settle; raise it or shorten the fetch"
    ]


def test_a_retry_that_would_outlive_its_visibility_stops_a_real_worker_with_one_line() -> None:
    """A worker started for real (not --help) with a retry backoff that, held and then run
    to the hard time limit, outlasts the batch's visibility: SQS would deliver it again.
    It stops before it touches SQS or PostgreSQL, with one line and exit 2."""
    worker = ["-m", "celery", "-A", "tasks", "worker", "--pool=solo", "--without-mingle", "--without-gossip"]
    result = start(worker, RETRY_BACKOFF_MAX="60", TASK_VISIBILITY_TIMEOUT="90")
    assert (result.returncode, result.stdout) == (2, ""), result.stderr[-2000:]
    assert result.stderr.splitlines() == [
        "configuration: RETRY_BACKOFF_MAX=60 with TASK_VISIBILITY_TIMEOUT=90: a retried batch is held up to 60 s"
        " before it runs and then up to its hard time limit (72 s), beyond its 90 s of visibility, and SQS would"
        " deliver it again: lower RETRY_BACKOFF_MAX to 18 or raise TASK_VISIBILITY_TIMEOUT"
    ]


# URLs that libpq reads otherwise than they mean: it ends the password at the first `@`
# (URL parsers at the last) and the authority at the first `/`, and cannot read `%zz`.
# Each once passed the check, then showed its password in an error, a log or `--debug`.
LEAKY_URLS = [
    ("DATABASE_URL", "postgresql://u:Hunter2@Secret@127.0.0.1:5/x", "libpq reads a host holding @"),
    ("DATABASE_URL", "postgresql://u:Hunter2/Secret@127.0.0.1:5/x", "libpq reads a port that is no number"),
    ("METRICS_DATABASE_URL", "postgresql://prom:Pa%zzSecret@127.0.0.1:5/x", "libpq cannot read it"),
    ("SQS_ENDPOINT_URL", "http://AKIAEXAMPLE:Hunter2Secret@localhost:4566", "a user or password in the URL"),
]
COMMANDS = {
    "status": ["-m", "tasks", "status"],
    "--debug redrive --dry-run": ["-m", "tasks", "--debug", "redrive", "--dry-run"],
    "config": ["-m", "tasks", "config"],
    "metrics": ["-m", "tasks", "metrics", "--port", "1"],  # refused before it binds
    "flower": ["-m", "celery", "-A", "tasks", "flower", "--conf=flowerconfig.py", "--port=1"],
}
SECRET_TEXT = ("Hunter2", "Secret", "AKIAEXAMPLE")


@pytest.mark.parametrize("command", COMMANDS.values(), ids=list(COMMANDS))
@pytest.mark.parametrize(("name", "url", "why"), LEAKY_URLS, ids=[f"{n}-{w.split()[-1]}" for n, _, w in LEAKY_URLS])
def test_a_url_libpq_reads_otherwise_is_refused_at_start_without_its_password(
    command: list[str], name: str, url: str, why: str
) -> None:
    result = start(command, **{name: url, "LOG_LEVEL": "DEBUG"})
    assert (result.returncode, result.stdout) == (2, ""), result.stderr[-2000:]
    [line] = result.stderr.splitlines()
    assert line.startswith(f"configuration: {name}") and f"is not valid ({why}" in line, line
    assert not any(secret in line for secret in SECRET_TEXT), line


def test_config_hides_libpqs_sslpassword_and_the_password_wherever_libpq_reads_it() -> None:
    result = start(
        ["-m", "tasks", "config"],
        DATABASE_URL="postgresql://worker@db:5432/logins?sslmode=require&sslpassword=Hunter2Secret",
        METRICS_DATABASE_URL="postgresql://prom:Hunter2?Secret@db/logins",  # libpq: the password is Hunter2?Secret
    )
    assert (result.returncode, result.stderr) == (0, "")
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()}
    assert rows["DATABASE_URL"] == "postgresql://worker@db:5432/logins?sslmode=require&sslpassword=***"
    assert rows["METRICS_DATABASE_URL"] == "postgresql://prom:***@db/logins"
    assert not any(secret in result.stdout for secret in SECRET_TEXT)


def test_the_metrics_exporter_logs_no_password_when_its_database_refuses() -> None:
    """A URL libpq reads as meant, to a server that is not there: every scrape logs
    the failure, never the password."""
    import urllib.request

    from tests.helpers import free_port, kill_group, spawn, wait_until

    port, log = free_port(), celeryconfig.STACK_DIR / f"metrics-secret-{os.getpid()}.log"
    environment = {
        "METRICS_DATABASE_URL": f"postgresql://prom:Hunter2Secret@127.0.0.1:{free_port()}/x?sslpassword=Hunter2Secret",
        "SQS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "LOG_LEVEL": "DEBUG",
    }
    process = spawn([sys.executable, "-m", "tasks", "metrics", "--port", str(port)], log, env=environment)
    try:

        def scraped() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
                    return answer.read().decode()
            except OSError:
                return None

        for _ in range(2):
            assert "login_pipeline_database_up 0.0" in wait_until(scraped, timeout=60, what="a scrape")
        text = log.read_text(errors="replace")
        print(text)
        assert "ledger read failed" in text and not any(secret in text for secret in SECRET_TEXT)
    finally:
        kill_group(process)
        log.unlink(missing_ok=True)
