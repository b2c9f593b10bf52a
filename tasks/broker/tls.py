"""TLS to SQS/SNS: the CA bundle every client verifies with, and a certificate that does
not verify, named in one line.

Every client verifies the endpoint's certificate against one bundle, botocore's own
``ca_bundle`` (AWS_CA_BUNDLE, else the config file's ``ca_bundle``, else certifi's): the
boto3 clients by themselves, the lean calls (tasks/broker/lean_sqs.py) and kombu's
asynchronous receive (tasks/broker/transport.py) because they are given it.

A certificate that does not verify is a configuration problem, not an outage: no retry
mends it, and skipping the check is never an option. `refused` finds it in any client's
exception (botocore's SSLError, the lean calls' curl error), `CertificateRefused` is
the one line that names it: the endpoint, what the check said, the certificate the
endpoint presented (subject, issuer, expiry) and the bundle it was checked against.
`no_retry` makes boto3's clients raise it at once, where botocore's standard mode would
try the handshake again as if the service were down. `check` is the worker's and
beat's probe at start (tasks/celery.py).
"""

from __future__ import annotations

import re
import socket
import ssl
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import botocore.session
from botocore.exceptions import SSLError

# What OpenSSL (through Python's ssl or libcurl) says when a certificate does not verify.
VERIFY_FAILED = re.compile(
    r"certificate verify failed: (?P<python>[^(\]]+?)\s*(?:\(_ssl|$)|SSL certificate problem: (?P<curl>[^\n]+)"
)
# libcurl's certificate failures, as the lean calls name them ("curl 77: …"): the CA file.
CURL_CERTIFICATE_FAILURE = re.compile(r"^curl (?:60|77): (?!SSL certificate problem)(?P<words>.+)$")
HANDSHAKE_TIMEOUT = 3.0  # seconds, as the clients' connect timeout


@cache
def ca_bundle() -> str | None:
    """The bundle botocore verifies with (AWS_CA_BUNDLE, else the config file's), or None
    for botocore's default (certifi's)."""
    bundle = botocore.session.get_session().get_config_variable("ca_bundle")
    return str(bundle) if bundle else None


class CertificateRefused(Exception):
    """An endpoint whose TLS certificate does not verify; `line` says which and why."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


def reason(exc: BaseException) -> str | None:
    """What the certificate check said, if `exc` (or what it wraps) is a failed check."""
    seen: set[int] = set()
    pending: list[Any] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return str(getattr(current, "verify_message", None) or current.reason or "certificate verify failed")
        found = VERIFY_FAILED.search(str(current))
        if found:
            return (found["python"] or found["curl"]).strip()
        curl = CURL_CERTIFICATE_FAILURE.match(str(current))
        if curl:
            return curl["words"].strip()
        if isinstance(current, BaseException):
            pending += [current.__cause__, current.__context__, *current.args]
            pending += list(getattr(current, "kwargs", {}).values())
    return None


def refused(exc: BaseException, endpoint_url: str) -> CertificateRefused | None:
    """The one line for `exc` if it is a certificate that did not verify at `endpoint_url`."""
    said = reason(exc)
    if said is None:
        return None
    return CertificateRefused(line(endpoint_url, said))


def line(endpoint_url: str, said: str) -> str:
    parts = urlsplit(endpoint_url)
    where = f"{parts.hostname}:{parts.port or 443}"
    bundle = ca_bundle()
    against = f"the CA bundle {bundle}" if bundle else "the default CA bundle (certifi's; set AWS_CA_BUNDLE)"
    return (
        f"SQS/SNS at {where}: its TLS certificate does not verify ({said}); it presents {presented(endpoint_url)},"
        f" checked against {against}: trust its CA with AWS_CA_BUNDLE or fix the endpoint's certificate"
    )


def presented(endpoint_url: str) -> str:
    """The certificate the endpoint presents: subject, issuer and expiry (read without
    verifying, only to name it)."""
    parts = urlsplit(endpoint_url)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with (
            socket.create_connection((parts.hostname or "", parts.port or 443), HANDSHAKE_TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname=parts.hostname) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return "a certificate it no longer shows"
    if not der:
        return "no certificate"
    from cryptography import x509

    certificate = x509.load_der_x509_certificate(der)
    return (
        f"'{certificate.subject.rfc4514_string()}' issued by '{certificate.issuer.rfc4514_string()}',"
        f" valid until {certificate.not_valid_after_utc:%Y-%m-%d}"
    )


def check(endpoint_url: str) -> None:
    """Raise CertificateRefused if `endpoint_url` is HTTPS and its certificate does not
    verify against the bundle the clients use. A handshake alone: no credentials, no
    permission needed; an endpoint that does not answer is left to the clients' retries."""
    parts = urlsplit(endpoint_url)
    if parts.scheme != "https":
        return
    context = ssl.create_default_context(cafile=ca_bundle() or botocore_default_bundle())
    try:
        with (
            socket.create_connection((parts.hostname or "", parts.port or 443), HANDSHAKE_TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname=parts.hostname),
        ):
            return
    except ssl.SSLCertVerificationError as exc:
        raise CertificateRefused(line(endpoint_url, reason(exc) or "certificate verify failed")) from None
    except OSError:
        return


def botocore_default_bundle() -> str:
    from botocore.httpsession import get_cert_path

    return str(get_cert_path(True))


def no_retry(client: Any) -> Any:
    """`client`, raising a certificate that does not verify at once: botocore's standard
    retry mode takes its SSLError for a connection failure and tries again. A handler of
    botocore's public ``needs-retry`` event, registered first, raises it."""
    client.meta.events.register_first("needs-retry", _raise_certificate_failure)
    return client


def _raise_certificate_failure(caught_exception: BaseException | None = None, **_: Any) -> None:
    if isinstance(caught_exception, SSLError) and reason(caught_exception):
        raise caught_exception
