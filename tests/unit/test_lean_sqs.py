"""The lean SQS calls make, byte for byte, the request botocore makes: botocore is the oracle."""

import contextlib
import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, ReadTimeoutError, SSLError

from tasks.broker import lean_sqs, tls
from tasks.broker.lean_sqs import LeanSQS, error_of

RECEIVE = {
    "QueueUrl": "http://127.0.0.1:4566/000000000000/login-queue",
    "MaxNumberOfMessages": 10,
    "WaitTimeSeconds": 1,
    "VisibilityTimeout": 60,
    "MessageSystemAttributeNames": ["SentTimestamp"],
    "MessageAttributeNames": ["source_message_id", "source_sent_timestamp", "source_message_signature"],
}
DELETE = {
    "QueueUrl": "https://sqs.eu-west-1.amazonaws.com/123456789012/login-queue",
    "Entries": [{"Id": str(i), "ReceiptHandle": f"handle-{i}-é+/="} for i in range(10)],
}
ENDPOINTS = ["http://127.0.0.1:4566", "http://localhost:80", "https://sqs.eu-west-1.amazonaws.com"]


class Sent(Exception):
    def __init__(self, request: Any) -> None:
        self.request = request


def botocores_request(endpoint: str, credentials: Credentials, operation: str, params: dict) -> Any:
    """The request botocore signs and would send for this call."""
    client = boto3.session.Session().client(
        "sqs",
        region_name="eu-west-1",
        endpoint_url=endpoint,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.token,
    )

    def stop(request: Any, **_: Any) -> None:
        raise Sent(request)

    client.meta.events.register("before-send.sqs.*", stop)
    with pytest.raises(Sent) as sent:
        getattr(client, operation)(**params)
    return sent.value.request


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("token", [None, "session/token+="])
@pytest.mark.parametrize(
    ("operation", "name", "params"),
    [
        ("receive_message", "ReceiveMessage", RECEIVE),
        ("delete_message_batch", "DeleteMessageBatch", DELETE),
    ],
)
def test_each_call_is_the_request_botocore_makes(endpoint, token, operation, name, params) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    theirs = botocores_request(endpoint, credentials, operation, params)
    when = datetime.strptime(theirs.headers["X-Amz-Date"].decode(), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)

    body, ours = LeanSQS(endpoint, "eu-west-1", credentials).request(name, params, when)

    assert theirs.method == "POST" and theirs.url.rstrip("/") == endpoint.rstrip("/")
    assert body == theirs.body
    for header in ("Content-Type", "X-Amz-Target", "x-amzn-query-mode", "X-Amz-Date", "Authorization"):
        assert ours[header.lower()] == theirs.headers[header].decode(), header
    assert ours.get("x-amz-security-token") == (token and theirs.headers["X-Amz-Security-Token"].decode())


def test_an_error_carries_the_code_botocore_would_give() -> None:
    error = error_of(
        "ReceiveMessage",
        400,
        b'{"__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "The specified queue does not exist."}',
        "AWS.SimpleQueueService.NonExistentQueue;Sender",
    )
    assert isinstance(error, ClientError)
    assert error.response["Error"]["Code"] == "AWS.SimpleQueueService.NonExistentQueue"
    assert error_of("DeleteMessageBatch", 503, b"<html>", None).response["Error"]["Code"] == "503"
    assert error_of("ReceiveMessage", 400, b'{"__type": "x#ThrottlingException"}', None).response["Error"]["Code"] == (
        "ThrottlingException"
    )


class Server:
    """A loopback HTTP server that answers each request with the next canned answer and,
    with `close`, drops the connection after it without saying so (as a server whose idle
    timeout ran out does). LocalStack cannot be made to do either on cue."""

    def __init__(self, answers: list[tuple[int, bytes]], close: bool, headers: bytes = b"") -> None:
        import socket
        import threading

        self.answers, self.close, self.requests, self.headers = list(answers), close, 0, headers
        self.heads: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.answers:
            connection, _ = self.listener.accept()
            with connection:
                while self.answers and self._answer(connection):
                    if self.close:
                        break

    def _answer(self, connection: Any) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        while len(body) < length:
            body += connection.recv(65536)
        self.requests += 1
        self.heads.append(head.lower())
        status, payload = self.answers.pop(0)
        answer = b"HTTP/1.1 %d X\r\n%sContent-Length: %d\r\n\r\n%s" % (status, self.headers, len(payload), payload)
        connection.sendall(answer)
        return True


def lean_at(url: str) -> LeanSQS:
    return LeanSQS(url, "us-east-1", Credentials("AKID", "secret"))


def test_a_kept_connection_the_server_dropped_is_replaced_without_spending_an_attempt() -> None:
    server = Server([(200, b'{"Messages": []}')] * 3, close=True)
    lean = lean_at(server.url)
    for _ in range(3):  # each call after the first finds its kept connection closed
        assert lean.receive_message(QueueUrl="q") == {"Messages": []}
    assert server.requests == 3


def test_a_5xx_is_retried_and_an_unreadable_answer_is_an_error_without_the_payload() -> None:
    server = Server([(503, b"busy"), (200, b'{"Messages": []}')], close=False)
    assert lean_at(server.url).receive_message(QueueUrl="q") == {"Messages": []} and server.requests == 2

    garbage = b'{"Messages": [{"Body": "{\\"ip\\": \\"203.0.113.9\\"'  # cut short
    server = Server([(200, garbage)] * 3, close=False)
    with pytest.raises(ClientError) as failed:
        lean_at(server.url).receive_message(QueueUrl="q")
    assert server.requests == 3 and "203.0.113.9" not in repr(failed.value.__dict__) + str(failed.value)
    assert failed.value.__cause__ is None and failed.value.__context__ is None


def test_a_large_body_goes_at_once_on_a_kept_connection() -> None:
    """No "Expect: 100-continue" pause before a DeleteMessageBatch's body of over 1 KiB."""
    server = Server([(200, b'{"Successful": []}')], close=False)
    lean_at(server.url).delete_message_batch(**DELETE)
    head = server.heads[0]
    assert b"expect:" not in head and b"connection: keep-alive" in head and b"content-length: " in head


def test_the_query_error_header_names_the_error_through_curl() -> None:
    server = Server([(400, b'{"__type": "com.amazonaws.sqs#QueueDoesNotExist"}')], close=False,
                    headers=b"x-amzn-query-error: AWS.SimpleQueueService.NonExistentQueue;Sender\r\n")  # fmt: skip
    with pytest.raises(ClientError) as failed:
        lean_at(server.url).receive_message(QueueUrl="q")
    assert failed.value.response["Error"]["Code"] == "AWS.SimpleQueueService.NonExistentQueue"


def test_a_certificate_problem_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(lean_sqs.time, "sleep", slept.append)
    server = Server([(200, b"{}")], close=False)
    url = server.url.replace("http:", "https:")
    lean = LeanSQS(url, "us-east-1", Credentials("AKID", "secret"), ca_bundle="/no/such/bundle.pem")
    with pytest.raises(SSLError) as failed:  # botocore's own type for it: named, never "unreachable"
        lean.receive_message(QueueUrl="q")
    assert failed.value.kwargs["error"].startswith("curl 77:") and slept == []
    assert (tls.reason(failed.value) or "").endswith("/no/such/bundle.pem")  # the bundle, named


# --- A hostile or broken endpoint (issue 27, finding 7) --------------------------------
class Hostile:
    """A loopback HTTP server that reads each request and then misbehaves as `answer`
    says, on a thread per connection; `sent` counts the body bytes it got out."""

    def __init__(self, answer: Callable[[Any], None]) -> None:
        self.answer, self.requests, self.sent = answer, 0, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            self.requests += 1
            with contextlib.suppress(OSError):  # the client hangs up: what a cap does
                self.answer(connection)

    def stream(self, connection: socket.socket, head: bytes, chunks: Iterator[bytes]) -> None:
        connection.sendall(head)
        for chunk in chunks:
            connection.sendall(chunk)
            self.sent += len(chunk)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def endless(prefix: bytes) -> Iterator[bytes]:
    yield prefix
    while True:
        yield b"x" * 1_048_576


GIB = 2**30


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_answer_beyond_what_sqs_answers_fails_without_reading_the_rest(framing: str) -> None:
    """A 1 GiB answer: the call stops reading at the cap, holds no more than it, and is not retried."""

    def huge(connection: socket.socket) -> None:
        if framing == "length":
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % GIB
            server.stream(connection, head, endless(b'{"Messages": [{"Body": "'))
        else:
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            server.stream(connection, head, (b"%x\r\n%s\r\n" % (len(c), c) for c in endless(b'{"Messages": "')))

    server = Hostile(huge)
    tracemalloc.start()
    try:
        started = time.monotonic()
        with pytest.raises(ClientError) as failed:
            lean_at(server.url).receive_message(QueueUrl="q")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        server.close()
    assert failed.value.response["Error"]["Code"] == "ResponseTooLarge" and server.requests == 1
    assert "MiB" in failed.value.response["Error"]["Message"]
    print(f"{framing}: {server.sent / 2**20:.0f} MiB sent of 1 GiB, peak {peak / 2**20:.0f} MiB traced,"
          f" {time.monotonic() - started:.1f} s")  # fmt: skip
    assert server.sent < lean_sqs.MAX_ANSWER_BYTES + 64 * 2**20
    assert peak < 2 * lean_sqs.MAX_ANSWER_BYTES


def test_a_huge_error_answer_is_read_no_further_than_the_cap() -> None:
    def huge_error(connection: socket.socket) -> None:
        server.stream(connection, b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n",
                      (b"%x\r\n%s\r\n" % (len(c), c) for c in endless(b"<html>")))  # fmt: skip

    server = Hostile(huge_error)
    try:
        with pytest.raises(ClientError) as failed:
            lean_at(server.url).receive_message(QueueUrl="q")
    finally:
        server.close()
    assert failed.value.response["Error"]["Code"] == "ResponseTooLarge" and server.requests == lean_sqs.ATTEMPTS
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503  # retried, as a 5xx is
    assert server.sent < lean_sqs.ATTEMPTS * (lean_sqs.MAX_ANSWER_BYTES + 64 * 2**20)


@pytest.mark.parametrize("status", [200, 400])
def test_json_nested_100000_deep_is_botocores_error(status: int) -> None:
    attempts = lean_sqs.ATTEMPTS if status == 200 else 1  # a garbled 200 may be transient, a 400 is not
    server = Server([(status, b"[" * 100_000 + b"]" * 100_000)] * attempts, close=False)
    with pytest.raises(ClientError) as failed:
        lean_at(server.url).receive_message(QueueUrl="q")
    assert failed.value.response["Error"]["Code"] == ("UnreadableResponse" if status == 200 else "400")
    assert server.requests == attempts


def test_an_error_message_is_cut_to_one_short_line() -> None:
    message = "The queue is gone.\n[CRITICAL] forged line \x1b]52;c;Y2xpcGJvYXJk\x07" + "A" * 600_000
    payload = json.dumps({"__type": "com.amazonaws.sqs#" + "Q" * 100_000, "message": message}).encode()
    server = Server([(400, payload)], close=False)
    with pytest.raises(ClientError) as failed:
        lean_at(server.url).receive_message(QueueUrl="q")
    text = str(failed.value)
    assert len(text) < 2 * (lean_sqs.MAX_ERROR_TEXT + 100) and text.isprintable()
    assert "The queue is gone." in text and "more characters" in text


@pytest.mark.parametrize("behaviour", ["stall", "drip"])
def test_the_whole_call_ends_within_its_long_poll_and_answer_time(behaviour: str) -> None:
    """A stalled answer, or one dripped a byte at a time, ends the call, every attempt
    included, within WaitTimeSeconds + answer_seconds (the fetch's limits leave that)."""

    def misbehave(connection: socket.socket) -> None:
        if behaviour == "drip":
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        while not server.stop.wait(0.2):
            if behaviour == "drip":
                connection.sendall(b" ")

    server = Hostile(misbehave)
    lean = LeanSQS(server.url, "us-east-1", Credentials("AKID", "secret"), answer_seconds=1.5)
    started = time.monotonic()
    try:
        with pytest.raises(ReadTimeoutError) as failed:
            lean.receive_message(QueueUrl="q", WaitTimeSeconds=1)
    finally:
        server.close()
    took = time.monotonic() - started
    print(f"{behaviour}: the call ended after {took:.2f} s ({server.requests} attempt(s))")
    assert 2.5 <= took < 3.5 and failed.value.kwargs["error"].startswith("curl 28:")
    assert str(failed.value).startswith("Read timeout on endpoint URL")
