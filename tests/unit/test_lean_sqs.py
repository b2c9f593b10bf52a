"""The lean SQS calls make, byte for byte, the request botocore makes: botocore is the oracle."""

from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, EndpointConnectionError

from tasks.broker import lean_sqs
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
    with pytest.raises(EndpointConnectionError) as failed:
        lean.receive_message(QueueUrl="q")
    assert failed.value.kwargs["error"].startswith("curl 77:") and slept == []
