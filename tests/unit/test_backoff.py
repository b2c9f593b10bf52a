"""The retry schedule: jittered, yet certain to outlast an outage of a known length."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

import celeryconfig as config
from celeryconfig import Settings
from tasks.pipeline.retry import backoff


def step(retries: int) -> float:
    return min(config.RETRY_BACKOFF_MAX, 2.0 ** (retries + 1))


@given(st.integers(min_value=0, max_value=40))
def test_each_delay_lies_between_half_its_step_and_its_step(retries: int) -> None:
    assert step(retries) / 2 <= backoff(retries, config.RETRY_BACKOFF_MAX) <= step(retries)


def test_the_retries_of_a_batch_outlast_the_fault_suites_15_second_outage() -> None:
    # The test stack's settings (conftest): 12 retries, steps capped at 6 s.
    guaranteed = sum(step(n) / 2 for n in range(config.BATCH_MAX_RETRIES))
    assert (config.BATCH_MAX_RETRIES, config.RETRY_BACKOFF_MAX) == (12, 6)
    assert guaranteed >= 30 > 15


def test_the_default_retries_span_as_long_as_before_the_visibility_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """RETRY_BACKOFF_MAX must be at most 0.2 of TASK_VISIBILITY_TIMEOUT (a held retry and its
    run fit in its visibility): 15 s with the defaults, not 60. More retries keep the span
    a database outage may last without a batch given up: at least the 121 s it was."""
    for name in ("BATCH_MAX_RETRIES", "RETRY_BACKOFF_MAX", "TASK_VISIBILITY_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings()
    steps = [min(defaults.RETRY_BACKOFF_MAX, 2.0 ** (n + 1)) for n in range(defaults.BATCH_MAX_RETRIES)]
    assert sum(step / 2 for step in steps) >= 121
