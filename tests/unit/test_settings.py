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
    assert settings.CELERY_BROKER_URL.get_secret_value() == "sqs://localhost:4630"  # no keys: the transport's rule
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
    assert secret == {"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MASKING_KEYS", "DATABASE_URL", "FLOWER_BASIC_AUTH",
                      "METRICS_DATABASE_URL", "METRICS_BASIC_AUTH", "CELERY_BROKER_URL"}  # fmt: skip


def test_a_url_loses_its_password_and_nothing_else() -> None:
    assert (
        without_password("postgresql://u:p%40ss@db:5432/x?sslmode=require")
        == "postgresql://u:***@db:5432/x?sslmode=require"
    )
    assert without_password("postgresql://db/x") == "postgresql://db/x"
    assert without_password("sqs://") == "sqs://"
    # libpq's socket URLs: the password in the query, the host empty
    assert without_password("postgresql://u@/x?host=/run/pg&password=s3cret") == "postgresql://u:***@/x?host=/run/pg"
    # as libpq reads it: the password wherever it was given, and sslpassword too
    assert (
        without_password("postgresql://u:p?w@[::1]:5/x?sslpassword=s3cret&sslmode=require")
        == "postgresql://u:***@[::1]:5/x?sslmode=require&sslpassword=***"
    )
    assert without_password("postgresql://u:p@h1:5,h2:6/x") == "postgresql://u:***@/x?host=h1,h2&port=5,6"
    assert without_password("sqs://key:s/e@cret@localhost:4566") == "sqs://key:***@localhost:4566"
    assert without_password("postgresql:///x?host=/run/pg") == "postgresql:///x?host=/run/pg"


# Every pair of time settings whose combination lets a message outlive its visibility,
# so that SQS delivers it again (docs/configuration.md's settings table, "accepts"). Each case:
# settings that clash, its line, and the one fix. A fetch holds its source messages until
# FETCH_MAX_SECONDS + FETCH_WAIT_SECONDS and its deletes settle (5 s); its task's soft
# time limit must leave it that long (FETCH_INTERVAL=40 makes 60 s fetches, which a soft
# limit of 54 s would stop between a hand-off and its deletes); a retried batch is held
# until its countdown (up to RETRY_BACKOFF_MAX) and then runs up to the hard time limit.
CLASHES = [
    (
        {"FETCH_MAX_SECONDS": "54.5", "SOURCE_VISIBILITY_TIMEOUT": "60", "TASK_VISIBILITY_TIMEOUT": "200"},
        "SOURCE_VISIBILITY_TIMEOUT=60 must be above FETCH_MAX_SECONDS + FETCH_WAIT_SECONDS + 5 s (60.5 s):"
        " a fetch holds its messages that long before their deletes settle; raise it or shorten the fetch",
        ("SOURCE_VISIBILITY_TIMEOUT", "61"),
    ),
    (
        {"FETCH_MAX_SECONDS": "50", "FETCH_WAIT_SECONDS": "10", "SOURCE_VISIBILITY_TIMEOUT": "65",
         "TASK_VISIBILITY_TIMEOUT": "200"},
        "SOURCE_VISIBILITY_TIMEOUT=65 must be above FETCH_MAX_SECONDS + FETCH_WAIT_SECONDS + 5 s (65 s):"
        " a fetch holds its messages that long before their deletes settle; raise it or shorten the fetch",
        ("FETCH_WAIT_SECONDS", "9"),
    ),
    (
        {"FETCH_INTERVAL": "40", "SOURCE_VISIBILITY_TIMEOUT": "70", "TASK_VISIBILITY_TIMEOUT": "90"},
        "TASK_VISIBILITY_TIMEOUT=90 gives tasks a soft time limit of 54 s, which must leave a fetch"
        " FETCH_MAX_SECONDS + FETCH_WAIT_SECONDS (61 s) and 5 s to settle its deletes: raise it or shorten the fetch",
        ("TASK_VISIBILITY_TIMEOUT", "120"),
    ),
    (
        {"RETRY_BACKOFF_MAX": "19", "TASK_VISIBILITY_TIMEOUT": "90"},
        "RETRY_BACKOFF_MAX=19 with TASK_VISIBILITY_TIMEOUT=90: a retried batch is held up to 19 s before it runs"
        " and then up to its hard time limit (72 s), beyond its 90 s of visibility, and SQS would deliver it"
        " again: lower RETRY_BACKOFF_MAX to 18 or raise TASK_VISIBILITY_TIMEOUT",
        ("RETRY_BACKOFF_MAX", "18"),
    ),
    (
        {"RETRY_BACKOFF_MAX": "60", "TASK_VISIBILITY_TIMEOUT": "295"},
        "RETRY_BACKOFF_MAX=60 with TASK_VISIBILITY_TIMEOUT=295: a retried batch is held up to 60 s before it runs"
        " and then up to its hard time limit (236 s), beyond its 295 s of visibility, and SQS would deliver it"
        " again: lower RETRY_BACKOFF_MAX to 59 or raise TASK_VISIBILITY_TIMEOUT",
        ("TASK_VISIBILITY_TIMEOUT", "300"),
    ),
]  # fmt: skip
CLASH_IDS = ["source-hidden-fetch", "source-hidden-long-poll", "fetch-soft-limit", "retry-held", "retry-visibility"]


@pytest.mark.parametrize(("clash", "line", "fix"), CLASHES, ids=CLASH_IDS)
def test_no_pair_of_time_settings_lets_a_message_outlive_its_visibility(
    monkeypatch: pytest.MonkeyPatch, clash: dict[str, str], line: str, fix: tuple[str, str]
) -> None:
    for name in ("FETCH_MAX_SECONDS", "FETCH_WAIT_SECONDS", "RETRY_BACKOFF_MAX"):
        monkeypatch.delenv(name, raising=False)
    for name, value in clash.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert celeryconfig.problem_line(caught.value) == f"configuration: {line}"
    monkeypatch.setenv(*fix)
    assert Settings().model_dump()[fix[0]] == int(fix[1])


@pytest.mark.parametrize("visibility", [15, 30, 89, 90, 91, 300, 3000])
def test_the_defaults_and_every_retry_within_the_rule_are_accepted(
    monkeypatch: pytest.MonkeyPatch, visibility: int
) -> None:
    """At the bound the rule accepts: the longest retry the rule allows, held and run, fits."""
    for name in ("FETCH_MAX_SECONDS", "FETCH_WAIT_SECONDS", "RETRY_BACKOFF_MAX", "SOURCE_VISIBILITY_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FETCH_INTERVAL", "1")
    monkeypatch.setenv("TASK_VISIBILITY_TIMEOUT", str(visibility))
    longest = visibility - celeryconfig.hard_time_limit(visibility)
    monkeypatch.setenv("RETRY_BACKOFF_MAX", str(longest))
    settings = Settings()
    assert settings.RETRY_BACKOFF_MAX + celeryconfig.hard_time_limit(visibility) <= visibility
    monkeypatch.setenv("RETRY_BACKOFF_MAX", str(longest + 1))
    with pytest.raises(ValidationError):
        Settings()


def test_the_default_settings_pass_every_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(Settings.model_fields):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.RETRY_BACKOFF_MAX, settings.TASK_VISIBILITY_TIMEOUT) == (15, 90)


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
