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
    assert list(rows) == list(celeryconfig.Settings.model_fields), "every setting, in README's order"
    assert rows["LOCALSTACK_PORT"] == ["4630", "environment"]
    assert rows["SQS_ENDPOINT_URL"] == ["http://localhost:4630", "default"], "a default made from a value in effect"
    assert rows["CELERY_BROKER_URL"] == ["sqs://test:***@localhost:4630", "default"]
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
        "configuration: SOURCE_VISIBILITY_TIMEOUT=60 must be above FETCH_MAX_SECONDS + FETCH_WAIT_SECONDS (61 s):"
        " a fetch holds its messages that long before handing them off"
    ]
