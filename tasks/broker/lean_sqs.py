"""The fetch's two hot SQS calls, ReceiveMessage and DeleteMessageBatch, as lean requests.

botocore spends about 1 ms of CPU on every call (parameter validation, event hooks,
endpoint rules, retry bookkeeping, parsing the response into its shapes). A fetch makes
two calls per ten messages, so botocore alone would cost the worker about 200 µs per
event, more than all the pipeline's own work. `LeanSQS` makes the same two calls for
a quarter of that (see "Where the CPU goes" in docs/performance.md): SQS's JSON
protocol (the one botocore speaks to SQS), signed with Signature Version 4 from the
boto3 client's own endpoint, region and credentials, sent by libcurl (pycurl, which
kombu's SQS transport needs anyway) over one keep-alive connection per thread (asked
for by name: LocalStack closes every other connection after one request); libcurl
parses the response's head in C, where http.client cost more CPU than the signing. It
answers with the response's JSON, which has the keys botocore's parsed response has,
and fails with botocore's own exceptions (`ClientError` with SQS's error code,
`EndpointConnectionError`), so a caller cannot tell which client it used. Every other
SQS call goes through boto3.

Against a hostile or broken endpoint a call stays within bounds, and fails as botocore
fails:

- An answer is read up to MAX_ANSWER_BYTES (32 MiB: the most SQS can answer): libcurl
  stops there (its MAXFILESIZE, which since curl 8.4 also ends a transfer without a
  Content-Length), so the rest is never buffered. Beyond it the call fails with the
  ClientError ``ResponseTooLarge``, not retried after a 200.
- An answer that is not a JSON object, JSON nested too deep included, is the ClientError
  ``UnreadableResponse`` (retried, as a garbled answer may be transient).
- The whole call, every attempt and pause included, ends within its long poll
  (``WaitTimeSeconds``) plus ``answer_seconds`` (celeryconfig.FETCH_SETTLE_SECONDS, 5 s):
  a receive that a fetch begins by FETCH_MAX_SECONDS therefore ends within the fetch's
  soft time limit, which the settings check keeps at least FETCH_MAX_SECONDS +
  FETCH_WAIT_SECONDS + FETCH_SETTLE_SECONDS. Running out of time is botocore's
  ``ReadTimeoutError``, as a read timeout is botocore's.
- An error's code and message are cut to MAX_ERROR_TEXT characters, control
  characters escaped: one short line in a log, whatever the endpoint sent.

tests/unit/test_lean_sqs.py holds each request, body, headers and signature, against
the one botocore makes for the same call at the same moment: botocore is the oracle.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import random
import threading
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import pycurl
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError, SSLError
from botocore.httpsession import get_cert_path

import celeryconfig as config

CONTENT_TYPE = "application/x-amz-json-1.0"
ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "sqs"
ATTEMPTS = 3  # as botocore's standard retry mode
CONNECT_TIMEOUT = 3.0  # seconds, as the boto3 clients (tasks.broker.aws)
# The largest answer SQS gives: ReceiveMessage's ten messages of up to 1 MiB each (body and
# attributes together), which JSON makes up to three times longer (LocalStack escapes every
# non-ASCII character as \\uXXXX: a two-byte "é" becomes six bytes), with their ids, receipt
# handles and digests (a few KiB each). Beyond it an answer is no SQS answer.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
MAX_ERROR_TEXT = 300  # characters of an error's code and of its message
# curl's failures that another attempt cannot mend: a bad URL, TLS certificate trouble.
PERMANENT_CURL_ERRORS = frozenset(
    {
        pycurl.E_UNSUPPORTED_PROTOCOL,
        pycurl.E_URL_MALFORMAT,
        pycurl.E_PEER_FAILED_VERIFICATION,
        pycurl.E_SSL_CACERT_BADFILE,
    }
)
# curl's TLS certificate failures: raised at once as botocore's SSLError (tasks/broker/tls.py names them).
CERTIFICATE_CURL_ERRORS = frozenset({pycurl.E_PEER_FAILED_VERIFICATION, pycurl.E_SSL_CACERT_BADFILE})
BACKOFF_BASE = 0.05  # seconds; attempt n sleeps up to BACKOFF_BASE * 2**n
# Asked for by name (LocalStack closes other connections after one request); no
# "Expect: 100-continue" wait before a body over 1 KiB, such as a DeleteMessageBatch's.
EXTRA_HEADERS = ["connection: keep-alive", "expect:"]
RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
THROTTLING = frozenset({"ThrottlingException", "RequestThrottled", "Throttling", "RequestLimitExceeded"})
DEFAULT_PORTS = {"http": 80, "https": 443}


@lru_cache(maxsize=8)
def signing_key(secret: str, day: str, region: str) -> bytes:
    """SigV4's derived key for a day; the same all day, so derived once."""
    key = f"AWS4{secret}".encode()
    for part in (day, region, SERVICE, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signed_headers(
    host: str, region: str, credentials: Credentials, operation: str, body: bytes, now: datetime
) -> dict[str, str]:
    """The headers of a signed SQS JSON request, Authorization included."""
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = {
        "content-type": CONTENT_TYPE,
        "host": host,
        "x-amz-date": stamp,
        "x-amz-target": f"AmazonSQS.{operation}",
        "x-amzn-query-mode": "true",
    }
    if credentials.token:
        headers["x-amz-security-token"] = credentials.token
    names = ";".join(sorted(headers))
    lines = (f"{name}:{headers[name]}" for name in sorted(headers))
    canonical = "\n".join(["POST", "/", "", *lines, "", names, hashlib.sha256(body).hexdigest()])
    scope = f"{day}/{region}/{SERVICE}/aws4_request"
    to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(signing_key(credentials.secret_key, day, region), to_sign.encode(), hashlib.sha256)
    headers["authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope}, SignedHeaders={names},"
        f" Signature={signature.hexdigest()}"
    )
    return headers


def parsed(payload: bytes) -> object:
    """The JSON in `payload`, or None if there is none to read (invalid, or nested deeper
    than the parser goes: RecursionError)."""
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return None


def bounded(text: str) -> str:
    """`text` cut to MAX_ERROR_TEXT characters, with its control characters escaped."""
    cut = text[:MAX_ERROR_TEXT] + (
        f"… ({len(text) - MAX_ERROR_TEXT} more characters)" if len(text) > MAX_ERROR_TEXT else ""
    )
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in cut)


def client_error(operation: str, status: int, code: str, message: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": bounded(code), "Message": bounded(message)}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )


def error_of(operation: str, status: int, payload: bytes, query_error: str | None) -> ClientError:
    """SQS's error answer as botocore's ClientError, with the code botocore would give
    (the query-compatible code from ``x-amzn-query-error``, else the JSON ``__type``)."""
    answer = parsed(payload)
    answer = answer if isinstance(answer, dict) else {}
    code = str(answer.get("__type", "")).rpartition("#")[2] or str(status)
    if query_error:
        code = query_error.split(";")[0]
    return client_error(operation, status, code, str(answer.get("message", answer.get("Message", ""))))


def retryable(error: ClientError) -> bool:
    """A 5xx or throttling: worth another attempt, as botocore's standard mode judges."""
    status = error.response["ResponseMetadata"]["HTTPStatusCode"]
    return status in RETRYABLE_STATUS or error.response["Error"]["Code"] in THROTTLING


class LeanSQS:
    """ReceiveMessage and DeleteMessageBatch with boto3's arguments and answers."""

    def __init__(
        self,
        endpoint_url: str,
        region: str,
        credentials: Any,
        ca_bundle: str | None = None,
        answer_seconds: float = config.FETCH_SETTLE_SECONDS,
    ) -> None:
        parts = urlsplit(endpoint_url)
        self.tls = parts.scheme == "https"
        self.ca_bundle = ca_bundle or get_cert_path(True)  # botocore's default: certifi's, else its own
        self.endpoint_url = endpoint_url
        # botocore's Host: the port only when it is not the scheme's own
        self.host = parts.netloc if parts.port not in (None, DEFAULT_PORTS[parts.scheme]) else parts.hostname or ""
        self.region = region
        self.credentials = credentials  # botocore credentials, refreshable ones included
        self.answer_seconds = answer_seconds  # a call's time beyond its long poll, attempts included
        self._local = threading.local()

    def receive_message(self, **params: Any) -> dict[str, Any]:
        return self.call("ReceiveMessage", params)

    def delete_message_batch(self, **params: Any) -> dict[str, Any]:
        return self.call("DeleteMessageBatch", params)

    def request(self, operation: str, params: dict[str, Any], now: datetime) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one call, signed for `now`."""
        body = json.dumps(params).encode()
        frozen = self.credentials.get_frozen_credentials()
        return body, signed_headers(self.host, self.region, frozen, operation, body, now)

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """One call, retried as botocore's standard mode retries: up to ATTEMPTS times on a
        connection failure, a 5xx or throttling, with jittered exponential backoff, all
        within the call's time (its long poll plus `answer_seconds`). (A kept connection
        that the server had closed meanwhile libcurl replaces by itself.)"""
        deadline = time.monotonic() + float(params.get("WaitTimeSeconds", 0)) + self.answer_seconds
        for attempt in range(1, ATTEMPTS + 1):
            try:
                body, headers = self.request(operation, params, datetime.now(UTC))
                return self._answer(operation, self._send(operation, body, headers, deadline))
            except ClientError as error:
                if attempt == ATTEMPTS or not retryable(error) or time.monotonic() >= deadline:
                    raise
            except pycurl.error as exc:
                code, words = exc.args  # curl's own words: they name the failure, never a body
                said = f"curl {code}: {bounded(str(words))}"
                if code in CERTIFICATE_CURL_ERRORS:  # named as botocore names it: never a connection failure
                    raise SSLError(endpoint_url=self.endpoint_url, error=said) from None
                if attempt == ATTEMPTS or code in PERMANENT_CURL_ERRORS or time.monotonic() >= deadline:
                    failure = ReadTimeoutError if code == pycurl.E_OPERATION_TIMEDOUT else EndpointConnectionError
                    raise failure(endpoint_url=self.endpoint_url, error=said) from None
            time.sleep(min(random.uniform(0, BACKOFF_BASE * 2**attempt), max(0.0, deadline - time.monotonic())))
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _answer(operation: str, sent: tuple[int, bytes, str | None]) -> dict[str, Any]:
        status, payload, query_error = sent
        if status != 200:
            raise error_of(operation, status, payload, query_error)
        answer = parsed(payload)  # never the payload in the error: it holds raw message bodies
        if not isinstance(answer, dict):
            raise client_error(operation, 502, "UnreadableResponse", "the answer is not a JSON object")
        return answer

    def _send(
        self, operation: str, body: bytes, headers: dict[str, str], deadline: float
    ) -> tuple[int, bytes, str | None]:
        curl, answer = self._curl(), io.BytesIO()
        head: list[bytes] = []
        left_ms = max(1, int((deadline - time.monotonic()) * 1000))
        curl.setopt(pycurl.TIMEOUT_MS, left_ms)
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, min(left_ms, int(CONNECT_TIMEOUT * 1000)))
        curl.setopt(pycurl.HTTPHEADER, [f"{name}: {value}" for name, value in headers.items()] + EXTRA_HEADERS)
        curl.setopt(pycurl.POSTFIELDS, body)
        curl.setopt(pycurl.WRITEDATA, answer)
        curl.setopt(pycurl.HEADERFUNCTION, head.append)  # libcurl bounds each line, and all of them
        try:
            curl.perform()
        except pycurl.error as exc:
            if exc.args[0] != pycurl.E_FILESIZE_EXCEEDED:
                raise
            raise client_error(
                operation,
                curl.getinfo(pycurl.RESPONSE_CODE),
                "ResponseTooLarge",
                f"the answer exceeded {MAX_ANSWER_BYTES // 2**20} MiB, more than SQS answers; the rest was not read",
            ) from None
        return curl.getinfo(pycurl.RESPONSE_CODE), answer.getvalue(), query_error(head)

    def _curl(self) -> pycurl.Curl:
        """This thread's handle: libcurl keeps its connection alive between calls."""
        curl: pycurl.Curl | None = getattr(self._local, "curl", None)
        if curl is None:
            curl = self._local.curl = pycurl.Curl()
            curl.setopt(pycurl.URL, f"{self.endpoint_url.rstrip('/')}/")
            curl.setopt(pycurl.POST, 1)
            curl.setopt(pycurl.NOSIGNAL, 1)  # timeouts without signals: safe on any thread
            curl.setopt(pycurl.MAXFILESIZE_LARGE, MAX_ANSWER_BYTES)
            curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)  # as botocore; never h2 over TLS
            curl.setopt(pycurl.PROXY, "")  # aws.lean_sqs gives way to boto3 where a proxy applies
            if self.tls:
                curl.setopt(pycurl.CAINFO, self.ca_bundle)
        return curl


def query_error(head: list[bytes]) -> str | None:
    """The ``x-amzn-query-error`` header among the response's header lines, if any."""
    for line in head:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"x-amzn-query-error":
            return value.strip().decode("latin-1")
    return None
