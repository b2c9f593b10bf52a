"""The lean SQS calls against the real LocalStack answer as boto3 does, errors included;
a real worker whose fetch meets a hostile endpoint stays within its memory and time limits."""

import contextlib
import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

import celeryconfig as config
from tasks.broker import aws, lean_sqs
from tasks.broker.lean_sqs import LeanSQS
from tests.helpers import Worker, free_port, wait_until

pytestmark = pytest.mark.usefixtures("test_stack")

RECEIVE = {
    "MaxNumberOfMessages": 10,
    "VisibilityTimeout": 30,
    "MessageSystemAttributeNames": ["SentTimestamp"],
    "MessageAttributeNames": ["source_message_id"],
}


def test_a_receive_and_a_delete_answer_as_boto3s_do() -> None:
    boto, lean = aws.client("sqs"), aws.lean_sqs()
    url = boto.create_queue(QueueName="lean-calls")["QueueUrl"]
    bodies = ['{"ip": "10.0.0.1", "é": "\\u2028"}', "not json", "x" * 200_000]
    for body in bodies:
        boto.send_message(
            QueueUrl=url,
            MessageBody=body,
            MessageAttributes={"source_message_id": {"DataType": "String", "StringValue": "id-1"}},
        )
    got = []
    while len(got) < len(bodies) and (messages := lean.receive_message(QueueUrl=url, **RECEIVE).get("Messages")):
        got += messages
    assert sorted(m["Body"] for m in got) == sorted(bodies)
    for message in got:
        assert {"MessageId", "ReceiptHandle", "MD5OfBody", "Body", "Attributes"} <= set(message)
        assert message["Attributes"]["SentTimestamp"].isdigit()
        assert message["MessageAttributes"]["source_message_id"]["StringValue"] == "id-1"
    entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]
    entries.append({"Id": "stale", "ReceiptHandle": "not-a-receipt-handle"})
    theirs_failed = boto.delete_message_batch(QueueUrl=url, Entries=entries[-1:])["Failed"]
    answer = lean.delete_message_batch(QueueUrl=url, Entries=entries)
    assert len(answer["Successful"]) == len(bodies)
    assert [f["Code"] for f in answer["Failed"]] == [f["Code"] for f in theirs_failed]
    boto.delete_queue(QueueUrl=url)


def test_an_error_is_botocores_error_with_botocores_code() -> None:
    boto, lean = aws.client("sqs"), aws.lean_sqs()
    gone = boto.get_queue_url(QueueName="login-queue")["QueueUrl"].replace("login-queue", "no-such-queue")
    with pytest.raises(ClientError) as theirs:
        boto.receive_message(QueueUrl=gone)
    with pytest.raises(ClientError) as ours:
        lean.receive_message(QueueUrl=gone)
    assert ours.value.response["Error"]["Code"] == theirs.value.response["Error"]["Code"]


def test_an_unreachable_endpoint_is_botocores_connection_error() -> None:
    with pytest.raises(EndpointConnectionError):
        LeanSQS("http://127.0.0.1:9", "us-east-1", aws.credentials()).receive_message(QueueUrl="http://x/q")


# --- A real worker whose fetch meets a hostile endpoint (issue 27, finding 7) ----------
class HostileFront(ThreadingHTTPServer):
    """An HTTP front to LocalStack that forwards every request except the fetch's
    ReceiveMessage on the source queue, which it answers as `mode` says: "huge" (a 1 GiB
    answer, streamed in chunks) or "stall" (no answer). `sent` counts the hostile bytes got out."""

    daemon_threads = True

    def __init__(self, target_port: int) -> None:
        super().__init__(("127.0.0.1", 0), FrontHandler)
        self.target_port, self.mode, self.sent, self.hostile_calls = target_port, "huge", 0, 0
        self.closing = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HostileFront

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = self.headers.get("X-Amz-Target", "")
        if target == "AmazonSQS.ReceiveMessage" and f'/{config.SOURCE_QUEUE}"'.encode() in body:
            self.server.hostile_calls += 1
            with contextlib.suppress(OSError):  # the client hangs up: what its cap or time limit does
                self.huge() if self.server.mode == "huge" else self.server.closing.wait(120)
            self.close_connection = True
            return
        self.forward("POST", body)

    def do_GET(self) -> None:
        self.forward("GET", b"")

    def huge(self) -> None:
        """1 GiB without a Content-Length (chunked): the client must stop it as it comes."""
        self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.wfile.write(b'18\r\n{"Messages": [{"Body": "\r\n')
        chunk = b"x" * 2**20
        for _ in range(1024):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.server.sent += len(chunk)

    def forward(self, method: str, body: bytes) -> None:
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.target_port, timeout=60)
        try:
            skip = {"connection", "keep-alive", "transfer-encoding", "content-length"}
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            upstream.request(method, self.path, body=body or None, headers=headers)
            answer = upstream.getresponse()
            payload = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in skip:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


def tree_rss(process: psutil.Process) -> int:
    members = [process, *process.children(recursive=True)]
    total = 0
    for member in members:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += member.memory_info().rss
    return total


def test_a_worker_whose_fetch_meets_a_hostile_endpoint_stays_within_its_limits() -> None:
    """A 1 GiB answer fails each fetch at the 32 MiB cap, the worker's memory growing by
    capped answers only; a stalled answer ends the fetch with a read timeout within its
    soft time limit."""
    front = HostileFront(int(config.LOCALSTACK_PORT))
    env = {"SQS_ENDPOINT_URL": front.url, "FETCH_WAIT_SECONDS": "1"}
    worker = Worker(f"hostile-{free_port()}", beat=True, env=env)
    process = psutil.Process(worker.process.pid)
    ready = peak = tree_rss(process)

    def failures(kind: str, at_least: int) -> bool:
        """Whether `at_least` fetches failed with `kind` (Celery's one line for each)."""
        nonlocal peak
        peak = max(peak, tree_rss(process))
        lines = worker.log.read_text(errors="replace").splitlines()
        return (
            sum("fetch_batches" in line and "raised unexpected" in line and kind in line for line in lines) >= at_least
        )

    try:
        wait_until(lambda: failures("ResponseTooLarge", 2), timeout=90, poll=0.2, what="two fetches to fail")
        front.mode, stalled = "stall", time.monotonic()
        wait_until(lambda: failures("ReadTimeoutError", 1), timeout=60, poll=0.2, what="a stalled fetch to end")
        took = time.monotonic() - stalled
        assert process.is_running() and worker.process.poll() is None
    finally:
        worker.stop()
        front.close()
    log = worker.log.read_text(errors="replace")
    limit = 768 * 2**20  # deploy/kubernetes/worker.yaml
    mib = 2**20
    print(
        f"hostile answers: {front.hostile_calls}, {front.sent / mib:.0f} MiB sent; worker tree {ready / mib:.0f} MiB"
        f" when ready, peak {peak / mib:.0f} MiB (limit {limit / mib:.0f} MiB); stalled: failed after {took:.1f} s"
    )
    # RSS counts the pages a pool process shares with its parent once for each, so the sum
    # overstates what the memory limit counts; its growth is at most a capped answer (and
    # its copy) in each pool process, not the 1 GiB answers.
    assert peak - ready < config.worker_concurrency * 2 * lean_sqs.MAX_ANSWER_BYTES
    assert took < config.task_soft_time_limit
    assert front.sent < front.hostile_calls * (lean_sqs.MAX_ANSWER_BYTES + 64 * 2**20)
    assert "TimeLimitExceeded" not in log and "RecursionError" not in log and "MemoryError" not in log
