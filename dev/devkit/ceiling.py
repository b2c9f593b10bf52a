"""The ceiling: what bare SQS clients drain from LocalStack, with 1, 2 and 4 processes.

Each client process receives ten and deletes ten in a tight loop with boto3, doing
nothing else, until the queue is empty. All of them start together (a barrier), after
their imports and a first call, so start-up is not counted. The best of the counts is
the bar the pipeline is measured against; the clients' CPU per event is the reference
for the worker's, and LocalStack's own CPU per event while they drain is the reference
for what the pipeline asks of LocalStack.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from devkit import localstack_requests, seed, stack
from devkit.proc import CpuMeter
from tasks.broker import aws

CLIENTS = (1, 2, 4)
QUEUE = "bench-ceiling"
SAMPLE_EVENTS = 20_000  # per client count: long enough to be steady, short enough to repeat


@dataclass(frozen=True)
class Ceiling:
    clients: int
    events: int
    per_s: float
    cpu_us_per_event: float
    localstack_cpu_us_per_event: float | None = None  # LocalStack's own CPU while they drained
    localstack_calls_per_1000: dict[str, float] = field(default_factory=dict)  # by operation


def _drain(url: str, barrier: Any, results: Any) -> None:
    """One client process: receive ten, delete ten, until the queue is empty."""
    sqs = aws.client("sqs")
    sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])  # connected and warm
    barrier.wait()
    cpu = time.process_time()
    moved = _empty(sqs, url)
    results.put((moved, time.process_time() - cpu, time.monotonic()))


def measure(bodies: list[str], clients: int) -> Ceiling:
    """Send `bodies` to the ceiling queue, then drain it with `clients` processes at once."""
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    with contextlib.suppress(ClientError):  # PurgeQueue: once a minute; drained runs leave it empty
        sqs.purge_queue(QueueUrl=url)
    seed.send(QUEUE, bodies)
    localstack = CpuMeter(stack.localstack_process())
    spawn = multiprocessing.get_context("spawn")  # no boto3 connection crosses a fork
    barrier, results = spawn.Barrier(clients + 1), spawn.Queue()
    children = [spawn.Process(target=_drain, args=(url, barrier, results), daemon=True) for _ in range(clients)]
    for child in children:
        child.start()
    try:
        localstack.start()  # before the barrier: the clients wait there, warmed up, for this
        first = localstack_requests.mark()
        barrier.wait(timeout=120)
        started = time.monotonic()
        done = [results.get(timeout=600) for _ in children]
        localstack.stop()
        last = localstack_requests.mark()
    finally:
        for child in children:
            child.join(timeout=10)
            child.kill()
    moved = sum(d[0] for d in done)
    seconds = max(d[2] for d in done) - started
    cpu_us = sum(d[1] for d in done) / max(moved, 1) * 1e6
    calls = localstack_requests.per_thousand(localstack_requests.between(first, last), moved)
    per_s, ls_cpu_us = round(moved / seconds, 1), localstack.per_event(moved)
    return Ceiling(clients, moved, per_s, round(cpu_us, 1), ls_cpu_us, calls)


def _follow(url: str, barrier: Any, stop: Any, results: Any) -> None:
    """One client process under a steady load: receive (long polls), note each message's
    age at receipt, delete; until told to stop and the queue is empty."""
    sqs = aws.client("sqs")
    sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    barrier.wait()
    ages: list[float] = []
    while True:
        got = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageSystemAttributeNames=["SentTimestamp"]
        ).get("Messages", [])
        now_ms = time.time() * 1000
        ages += [(now_ms - int(m["Attributes"]["SentTimestamp"])) / 1000 for m in got]
        if got:
            sqs.delete_message_batch(QueueUrl=url, Entries=_entries(got))
        elif stop.is_set():
            break
    results.put(ages)


def under_load(bodies: list[str], rate: float, clients: int = 2) -> list[float]:
    """Bare clients following a steady load of `rate` events/s: each event's age when it
    was received (SentTimestamp to receipt), the floor for any consumer's freshness."""
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    _empty(sqs, url)  # what an interrupted run left would make the first ages wrong
    spawn = multiprocessing.get_context("spawn")
    barrier, stop, results = spawn.Barrier(clients + 1), spawn.Event(), spawn.Queue()
    children = [spawn.Process(target=_follow, args=(url, barrier, stop, results), daemon=True) for _ in range(clients)]
    for child in children:
        child.start()
    try:
        barrier.wait(timeout=120)
        seed.send_steadily(QUEUE, bodies, rate)
        stop.set()
        return [age for _ in children for age in results.get(timeout=600)]
    finally:
        for child in children:
            child.join(timeout=10)
            child.kill()


def measure_all(bodies: list[str]) -> list[Ceiling]:
    """The ceiling with each client count in CLIENTS, one after the other."""
    return [measure(bodies, clients) for clients in CLIENTS]


def best(ceilings: list[Ceiling]) -> Ceiling:
    return max(ceilings, key=lambda c: c.per_s)


def call_cpu_us(bodies: list[str], calls: int = 300) -> dict[str, float]:
    """CPU of one ReceiveMessage call that returns ten messages, in this process, by client:
    boto3 as configured, boto3 without parameter validation, and the lean call."""
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    seed.send(QUEUE, bodies[:10])
    clients = {
        "botocore": sqs,
        "botocore, no parameter validation": aws.client_without_validation("sqs"),
        "lean": aws.lean_sqs(),
    }
    costs = {}
    for name, client in clients.items():
        client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)  # warm
        cpu = time.process_time()
        for _ in range(calls):  # VisibilityTimeout 0: the same ten come back each time
            client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
        costs[name] = round((time.process_time() - cpu) / calls * 1e6, 1)
    _empty(sqs, url)
    return costs


def _empty(sqs: Any, url: str) -> int:
    """Receive ten and delete ten until the queue is empty; how many were moved."""
    moved = 0
    while got := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        sqs.delete_message_batch(QueueUrl=url, Entries=_entries(got))
        moved += len(got)
    return moved


def _entries(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
