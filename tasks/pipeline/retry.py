"""The retry policy of a batch: which failures are worth another try, when, and how a
failure is described without the values of any record."""

from __future__ import annotations

import random

import psycopg2
from botocore.exceptions import BotoCoreError, ClientError

from tasks.pipeline.deadletter import DeadLetterError

# SQS error codes that mean "slow down", not "this request is wrong".
THROTTLING = frozenset({"Throttling", "ThrottlingException", "RequestThrottled"})
# SQS error codes of a fault on the service's side.
SERVICE_FAULTS = frozenset({"ServiceUnavailable", "InternalError", "InternalFailure"})
TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    psycopg2.OperationalError,  # includes SerializationFailure and DeadlockDetected
    psycopg2.InterfaceError,
    BotoCoreError,
    DeadLetterError,
    ConnectionError,
    TimeoutError,
)


def _soft_time_limit() -> tuple[type[BaseException], ...]:
    """Celery's soft time limit: a slow batch (a lock, a slow disk) is tried again.
    Imported here so that the data path does not need Celery to be installed."""
    try:
        from billiard.exceptions import SoftTimeLimitExceeded
    except ImportError:  # pragma: no cover - Celery always brings billiard
        return ()
    return (SoftTimeLimitExceeded,)


def is_transient(exc: BaseException) -> bool:
    """Whether trying again later may succeed."""
    if isinstance(exc, TRANSIENT_TYPES + _soft_time_limit()):
        return True
    if type(exc) is psycopg2.DatabaseError and not exc.pgcode:
        # No SQLSTATE: the server never answered. psycopg2 raises the bare class when
        # the connection is lost mid-statement (a crashed server), not a refused record.
        return True
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in THROTTLING or code in SERVICE_FAULTS or status >= 500
    return False


def describe(exc: BaseException) -> str:
    """A one-line reason that names the failure but never repeats its text, which could
    echo a record's value: the exception's type, with the SQS or PostgreSQL error code."""
    name = type(exc).__name__
    if isinstance(exc, ClientError):
        return f"{name} {exc.response.get('Error', {}).get('Code', '?')}"
    if isinstance(exc, psycopg2.Error) and exc.pgcode:
        return f"{name} (SQLSTATE {exc.pgcode})"
    return name


def backoff(retries: int, cap: float) -> float:
    """Exponential backoff with equal jitter: between half the step and the whole step.

    Full jitter (anywhere from zero) could let every retry draw short, so that a batch
    gave up within seconds of a database restart. Half of every step is certain, so
    the retries span at least half the sum of the steps (121 s with the defaults).
    """
    step = min(cap, 2.0 ** (retries + 1))
    return step / 2 + random.uniform(0, step / 2)
