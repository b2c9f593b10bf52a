"""A certificate that does not verify, found in any client's exception and named in one line."""

from __future__ import annotations

import socket
import ssl

import pytest
from botocore.exceptions import EndpointConnectionError, SSLError

from tasks.broker import tls
from tasks.ops.failures import Exit, describe

# What botocore (urllib3, Python's ssl) and the lean calls (libcurl) say for each problem.
SAID = [
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006)",
     "self-signed certificate"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate"
     " (_ssl.c:1006)", "unable to get local issuer certificate"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired (_ssl.c:1006)",
     "certificate has expired"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: Hostname mismatch, certificate is not valid"
     " for 'sqs.local'. (_ssl.c:1006)", "Hostname mismatch, certificate is not valid for 'sqs.local'."),
    ("curl 60: SSL certificate problem: unable to get local issuer certificate",
     "unable to get local issuer certificate"),
    ("curl 77: error adding trust anchors from file: /etc/missing.pem",
     "error adding trust anchors from file: /etc/missing.pem"),
]  # fmt: skip


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("words", "reason"), SAID)
def test_the_checks_words_are_found_in_botocores_error(words: str, reason: str) -> None:
    error = SSLError(endpoint_url="https://sqs.local:4566", error=ssl.SSLError(1, words))
    assert tls.reason(error) == reason


def test_what_python_itself_raised_is_read_from_the_exception_it_wraps() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "certificate has expired"  # type: ignore[attr-defined]
    try:
        raise SSLError(endpoint_url="https://sqs.local", error="SSL validation failed") from verify
    except SSLError as error:
        assert tls.reason(error) == "certificate has expired"


@pytest.mark.parametrize(
    "error",
    [
        EndpointConnectionError(endpoint_url="https://sqs.local"),
        ConnectionRefusedError(111, "Connection refused"),
        SSLError(endpoint_url="https://sqs.local", error="[SSL: WRONG_VERSION_NUMBER] wrong version number"),
    ],
    ids=["unreachable", "refused", "not-tls"],
)
def test_a_service_that_does_not_answer_is_no_certificate_problem(error: Exception) -> None:
    assert tls.reason(error) is None


def test_an_untrusted_certificate_is_one_line_exit_2_naming_the_endpoint_and_never_start_it() -> None:
    port = closed_port()
    error = SSLError(
        endpoint_url=f"https://localhost:{port}",
        error=ssl.SSLError(1, "certificate verify failed: self-signed certificate (_ssl.c:1006)"),
    )
    described = describe(error)
    assert described.code == Exit.USAGE
    assert described.line.startswith(
        f"SQS/SNS at localhost:{port}: its TLS certificate does not verify (self-signed certificate);"
    )
    assert "AWS_CA_BUNDLE" in described.line and "unreachable" not in described.line
    assert "start it" not in described.line and "\n" not in described.line


def test_a_plain_http_endpoint_needs_no_check() -> None:
    tls.check(f"http://localhost:{closed_port()}")  # nothing to verify, nothing raised
    tls.check(f"https://localhost:{closed_port()}")  # not answering: left to the clients' retries
