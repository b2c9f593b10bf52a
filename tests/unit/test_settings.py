"""The settings model alone: which words a boolean takes, ranges, computed defaults."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

import celeryconfig
from celeryconfig import Settings
from tasks.ops.settings_report import without_password


@pytest.mark.parametrize(
    ("word", "value"),
    [("true", True), ("TRUE", True), (" yes ", True), ("on", True), ("1", True),
     ("false", False), ("No", False), ("off", False), ("0", False)],
)  # fmt: skip
def test_a_boolean_takes_its_words_in_any_case(monkeypatch: pytest.MonkeyPatch, word: str, value: bool) -> None:
    monkeypatch.setenv("DEAD_LETTER_KEEP_BODY", word)
    assert Settings().DEAD_LETTER_KEEP_BODY is value


@pytest.mark.parametrize("word", ["ture", "", "y", "2", "enabled", "null"])
def test_a_boolean_refuses_every_other_word(monkeypatch: pytest.MonkeyPatch, word: str) -> None:
    monkeypatch.setenv("DEAD_LETTER_KEEP_BODY", word)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert celeryconfig.problem_line(caught.value).startswith("configuration: DEAD_LETTER_KEEP_BODY=")


def test_computed_defaults_follow_the_values_in_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SQS_ENDPOINT_URL", "FETCH_MAX_SECONDS", "STATEMENT_TIMEOUT_MS", "CELERY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCALSTACK_PORT", "4630")
    monkeypatch.setenv("FETCH_INTERVAL", "4")
    monkeypatch.setenv("TASK_VISIBILITY_TIMEOUT", "100")
    settings = Settings()
    assert settings.SQS_ENDPOINT_URL == "http://localhost:4630"
    assert settings.CELERY_BROKER_URL.get_secret_value() == "sqs://test:test@localhost:4630"
    assert (settings.FETCH_MAX_SECONDS, settings.STATEMENT_TIMEOUT_MS) == (6.0, 45_000)
    assert {"LOCALSTACK_PORT", "FETCH_INTERVAL"} <= settings.model_fields_set
    assert "SQS_ENDPOINT_URL" not in settings.model_fields_set


def test_real_aws_means_no_endpoint_and_the_default_credential_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "CELERY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SQS_ENDPOINT_URL", "")
    settings = Settings()
    assert (settings.AWS_ACCESS_KEY_ID, settings.AWS_SECRET_ACCESS_KEY.get_secret_value()) == ("", "")
    assert settings.CELERY_BROKER_URL.get_secret_value() == "sqs://"


def test_secrets_are_typed_as_secrets() -> None:
    secret = {name for name in Settings.model_fields if celeryconfig.is_secret(name)}
    assert secret == {"AWS_SECRET_ACCESS_KEY", "MASKING_KEYS", "DATABASE_URL", "FLOWER_BASIC_AUTH",
                      "METRICS_DATABASE_URL", "METRICS_BASIC_AUTH", "CELERY_BROKER_URL"}  # fmt: skip


def test_a_url_loses_its_password_and_nothing_else() -> None:
    assert (
        without_password("postgresql://u:p%40ss@db:5432/x?sslmode=require")
        == "postgresql://u:***@db:5432/x?sslmode=require"
    )
    assert without_password("postgresql://db/x") == "postgresql://db/x"
    assert without_password("sqs://") == "sqs://"
    # libpq's socket URLs: the password in the query, the host empty
    assert (
        without_password("postgresql://u@/x?host=/run/pg&password=s3cret")
        == "postgresql://u@/x?host=/run/pg&password=***"
    )
    assert without_password("postgresql:///x?host=/run/pg") == "postgresql:///x?host=/run/pg"


# A fetch holds its messages until FETCH_MAX_SECONDS + FETCH_WAIT_SECONDS: they must stay
# hidden that long, and the task's soft time limit must leave it that long and its deletes
# (FETCH_INTERVAL=40 makes 60 s fetches, which a soft limit of 54 s would stop between a
# hand-off and its deletes). Each case: settings that clash, its line, and the one fix.
CLASHES = [
    (
        {"FETCH_MAX_SECONDS": "59.5", "SOURCE_VISIBILITY_TIMEOUT": "60", "TASK_VISIBILITY_TIMEOUT": "200"},
        "SOURCE_VISIBILITY_TIMEOUT=60 must be above FETCH_MAX_SECONDS + FETCH_WAIT_SECONDS (60.5 s):"
        " a fetch holds its messages that long before handing them off",
        ("SOURCE_VISIBILITY_TIMEOUT", "61"),
    ),
    (
        {"FETCH_INTERVAL": "40", "SOURCE_VISIBILITY_TIMEOUT": "70", "TASK_VISIBILITY_TIMEOUT": "90"},
        "TASK_VISIBILITY_TIMEOUT=90 gives tasks a soft time limit of 54 s, which must leave a fetch"
        " FETCH_MAX_SECONDS + FETCH_WAIT_SECONDS (61 s) and 5 s to settle its deletes: raise it or shorten the fetch",
        ("TASK_VISIBILITY_TIMEOUT", "120"),
    ),
]


@pytest.mark.parametrize(("clash", "line", "fix"), CLASHES, ids=["hidden", "soft-time-limit"])
def test_a_fetch_fits_its_visibility_and_time_limits(
    monkeypatch: pytest.MonkeyPatch, clash: dict[str, str], line: str, fix: tuple[str, str]
) -> None:
    monkeypatch.delenv("FETCH_MAX_SECONDS")
    for name, value in clash.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert celeryconfig.problem_line(caught.value) == f"configuration: {line}"
    monkeypatch.setenv(*fix)
    assert Settings().model_dump()[fix[0]] == int(fix[1])


def test_beat_starts_fetches_per_tick_fetches_every_interval() -> None:
    """One beat feeds every replica: FETCHES_PER_TICK fetches each FETCH_INTERVAL."""
    shown = "import celeryconfig as c; print(sorted((k, v['task'], v['schedule']) for k, v in c.beat_schedule.items()))"
    env = {**os.environ, "FETCHES_PER_TICK": "3", "FETCH_INTERVAL": "4"}
    out = subprocess.run([sys.executable, "-c", shown], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(
        [
            (name, "tasks.fetch_batches", 4.0)
            for name in ("fetch-login-events", "fetch-login-events-2", "fetch-login-events-3")
        ]
    )
