"""The retry schedule: jittered, yet certain to outlast an outage of a known length."""

from hypothesis import given
from hypothesis import strategies as st

import celeryconfig as config
from tasks.pipeline.retry import backoff


def step(retries: int) -> float:
    return min(config.RETRY_BACKOFF_MAX, 2.0 ** (retries + 1))


@given(st.integers(min_value=0, max_value=40))
def test_each_delay_lies_between_half_its_step_and_its_step(retries: int) -> None:
    assert step(retries) / 2 <= backoff(retries, config.RETRY_BACKOFF_MAX) <= step(retries)


def test_the_retries_of_a_batch_outlast_the_fault_suites_15_second_outage() -> None:
    # The test stack's settings (conftest): 12 retries, steps capped at 8 s.
    guaranteed = sum(step(n) / 2 for n in range(config.BATCH_MAX_RETRIES))
    assert (config.BATCH_MAX_RETRIES, config.RETRY_BACKOFF_MAX) == (12, 8)
    assert guaranteed >= 40 > 15
