"""Which failures are retried, and how a failure is described: never with its text."""

from __future__ import annotations

import psycopg2
import pytest
from billiard.exceptions import SoftTimeLimitExceeded
from botocore.exceptions import ClientError, EndpointConnectionError

from tasks.pipeline.deadletter import DeadLetterError
from tasks.pipeline.retry import describe, is_transient


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@pytest.mark.parametrize(
    "exc",
    [
        psycopg2.OperationalError("server closed the connection"),
        psycopg2.errors.QueryCanceled("canceling statement due to statement timeout"),
        psycopg2.InterfaceError("connection already closed"),
        psycopg2.DatabaseError("server closed the connection unexpectedly"),  # a crash mid-statement
        EndpointConnectionError(endpoint_url="http://x"),
        DeadLetterError("1 dead letters refused"),
        SoftTimeLimitExceeded(),
        ConnectionResetError(),
        TimeoutError(),
        client_error("ThrottlingException"),
        client_error("InternalError", 500),
        client_error("Whatever", 503),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transient_failures_are_retried(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        psycopg2.errors.UndefinedTable("relation does not exist"),
        psycopg2.ProgrammingError("can't adapt type"),  # no SQLSTATE either, but our bug
        ValueError("x"),
        client_error("AccessDenied", 403),
    ],
    ids=lambda e: type(e).__name__,
)
def test_permanent_failures_are_not(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_describe_names_the_failure_never_its_text() -> None:
    leaky = ValueError("invalid literal for int() with base 10: '7\u00b2'")
    assert describe(leaky) == "ValueError"
    assert describe(client_error("AccessDenied", 403)) == "ClientError AccessDenied"
    pg = psycopg2.errors.InvalidTextRepresentation('invalid input syntax for type integer: "198.51.100.7"')
    assert "198" not in describe(pg)


def test_a_database_reason_names_an_unknown_code_without_failing() -> None:
    from tasks.pipeline.store import database_reason

    class Unknown(psycopg2.DataError):
        pgcode = "ZZ999"

    assert database_reason(Unknown('value "198.51.100.7" refused')) == "database refused the record: SQLSTATE ZZ999"
