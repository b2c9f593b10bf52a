"""Events near SQS's 1 MiB limit (issue 27, finding 1): each valid one is exactly one row,
each invalid one a dead letter with its whole body, and the worker stays within the
memory limit its Kubernetes manifest gives it while a backlog of them drains.

The worker runs as deploy/kubernetes/configmap.yaml tunes it (the defaults: 8 receivers,
4 pool processes, a fetch every 2 s for 3 s), with beat apart as in Kubernetes, so that
the measured process tree is the worker container's.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import yaml

import celeryconfig as config
from devkit import runner
from tasks.broker import aws
from tasks.pipeline import store
from tests.helpers import ROOT, Worker, dead_letters, drained, spawn, stop_process

VALID, INVALID = 240, 10
BODY_BYTES = 1_040_000  # the recipe's size: SQS's limit is 1,048,576
# The configmap's tuning, where the test stack's conftest shortens it.
PRODUCTION_TUNING = {"FETCH_INTERVAL": "2", "FETCH_MAX_SECONDS": "3", "SOURCE_VISIBILITY_TIMEOUT": "60"}
PRODUCTION_TUNING["TASK_VISIBILITY_TIMEOUT"] = "90"


def memory_limit() -> int:
    """The worker container's memory limit in deploy/kubernetes/worker.yaml, in bytes."""
    documents = yaml.safe_load_all((ROOT / "deploy/kubernetes/worker.yaml").read_text())
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    limit = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert limit.endswith("Mi"), limit
    return int(limit.removesuffix("Mi")) * 2**20


def padded(record: dict) -> str:
    body = json.dumps({**record, "pad": ""})
    return json.dumps({**record, "pad": "x" * (BODY_BYTES - len(body))})


def send_one(body: str) -> str:
    return aws.client("sqs").send_message(QueueUrl=aws.queue_url(config.SOURCE_QUEUE), MessageBody=body)["MessageId"]


class PeakMemory:
    """Samples a process and its descendants until stopped; keeps the peak of their summed
    PSS, what a memory cgroup charges them (a page shared by the fork of the main process
    and its pool counts once), and of their summed RSS (which counts it in each)."""

    def __init__(self, pid: int) -> None:
        self.process, self.peak, self.peak_rss, self.peak_child = psutil.Process(pid), 0, 0, 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stopped.wait(0.1):
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                sizes = []
                for member in tree:
                    try:
                        info = member.memory_full_info()
                    except psutil.NoSuchProcess:
                        continue
                    sizes.append((info.pss, info.rss))
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, sum(pss for pss, _ in sizes))
            self.peak_rss = max(self.peak_rss, sum(rss for _, rss in sizes))
            self.peak_child = max(self.peak_child, *(pss for pss, _ in sizes[1:]), 0)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)


@pytest.fixture
def backlog(clean: None) -> dict[str, str]:
    """The recipe: events padded to 1,040,000 bytes, sent while no worker runs."""
    bodies = [
        padded(
            {"user_id": f"u-{n}", "app_version": "2.3.0", "device_type": "android", "ip": f"10.0.{n // 256}.{n % 256}"}
        )
        for n in range(VALID)
    ]
    bodies += [padded({"ip": "10.9.9.9", "device_id": f"d-{n}"}) for n in range(INVALID)]  # no user_id
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(pool.map(send_one, bodies), bodies, strict=True))


def test_a_backlog_of_1_mib_events_is_all_rows_within_the_workers_memory_limit(
    backlog: dict[str, str], db: store.Connection
) -> None:
    limit = memory_limit()
    worker = Worker("large-messages", env=PRODUCTION_TUNING, ready=False)
    memory = PeakMemory(worker.process.pid)
    beat = spawn(runner.beat_command(), config.STACK_DIR / "large-messages-beat.log", PRODUCTION_TUNING)
    try:
        worker.ready()
        drained(db, VALID + INVALID, timeout=240)
    finally:
        memory.stop()
        stop_process(beat)
        worker.stop()
    print(
        f"\npeak PSS of the worker's process tree: {memory.peak / 2**20:.0f} MiB of the manifest's"
        f" {limit / 2**20:.0f} Mi (summed RSS {memory.peak_rss / 2**20:.0f} MiB); largest pool"
        f" process {memory.peak_child / 2**20:.0f} MiB ({VALID + INVALID} events of {BODY_BYTES:,} bytes)"
    )
    with db.cursor() as cur:
        cur.execute("SELECT message_id, user_id FROM user_logins")
        rows = cur.fetchall()
    db.rollback()
    valid = {mid for mid, body in backlog.items() if "user_id" in json.loads(body)}
    assert sorted(mid for mid, _ in rows) == sorted(valid)  # each valid event exactly one row
    letters = dead_letters()
    by_id = {m["MessageAttributes"]["source_message_id"]["StringValue"]: m for m in letters}
    assert set(by_id) == set(backlog) - valid and len(letters) == INVALID
    for mid, letter in by_id.items():  # with its whole body, for redrive
        assert letter["Body"] == backlog[mid]
        assert letter["MessageAttributes"]["reason"]["StringValue"] == "user_id is missing"
    peak, mib = memory.peak / 2**20, limit / 2**20
    assert memory.peak < limit, f"the worker's tree peaked at {peak:.0f} MiB, above {mib:.0f} Mi"
