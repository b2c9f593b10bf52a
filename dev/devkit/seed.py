"""Test data for login-queue: the exercise's own sample, or N realistic events.

Realistic events look like the exercise's: uuid user ids, one-, two- or three-part
versions, ios/android, IPv4 addresses of every kind (multicast, reserved and loopback
included), about 30% null locales, "NNN-NN-NNNN" device ids; users log in again from
the same device and address. One event in fifty is an anomaly a real feed has: not
JSON, another shape, a missing user_id, an unencodable version, a null field.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tasks.broker import aws

PACED_SENDERS = 16  # calls in flight, so that a slow call never holds the schedule back
SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample_data.json"
LOCALES = ["RU", "PH", "ID", "FR", "CN", "PT", "US", "BR", "DE", "NG", "PL", "SE", None, None, None]
# (body, valid) of each kind of anomaly; None fields are valid, the rest are not.
ANOMALIES = [
    ("{not json", False),
    ('{"foo": "oops_wrong_msg_type", "bar": "123"}', False),
    ('{"app_version": "2.3.0", "device_type": "ios", "ip": "10.0.0.1"}', False),
    ("[1, 2, 3]", False),
    ('{"user_id": "%s", "app_version": "1.2.3.4", "device_type": "android"}', False),
    ('{"user_id": "%s", "app_version": null, "ip": null, "device_id": null, "locale": null}', True),
]


def sample_bodies() -> list[str]:
    return [json.dumps(event) for event in json.loads(SAMPLE.read_text())]


def _version(rng: random.Random) -> str:
    parts = rng.choice((1, 2, 2, 3, 3, 3))
    head = [str(rng.randint(0, 9))]
    if parts == 2:
        head.append(rng.choice((str(rng.randint(0, 99)), f"{rng.randint(0, 9):02d}")))
    if parts == 3:
        head += [str(rng.randint(0, 9)), str(rng.randint(0, 9))]
    return ".".join(head)


def _person(rng: random.Random) -> dict[str, str | None]:
    return {
        "user_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "device_type": rng.choice(("ios", "android")),
        "ip": ".".join(str(rng.randint(0, 255)) for _ in range(4)),
        "device_id": f"{rng.randint(0, 999):03d}-{rng.randint(0, 99):02d}-{rng.randint(0, 9999):04d}",
        "locale": rng.choice(LOCALES),
    }


def generate(count: int, seed: int = 7) -> Iterator[tuple[str, bool]]:
    """`count` message bodies, each with whether it should become a row."""
    rng = random.Random(seed)
    people: list[dict[str, str | None]] = []
    for n in range(count):
        if n % 50 == 49:
            body, valid = ANOMALIES[(n // 50) % len(ANOMALIES)]
            yield (body % uuid.UUID(int=rng.getrandbits(128)) if "%s" in body else body), valid
            continue
        if people and rng.random() < 0.2:  # a returning user: same device, same address
            person = rng.choice(people)
        else:
            person = _person(rng)
            people = ([*people, person])[-1000:]
        yield json.dumps({**person, "app_version": _version(rng)}), True


def bodies(count: int, valid_only: bool = False) -> list[str]:
    """`count` fresh bodies (a new seed each time); with `valid_only`, only ones that become rows."""
    made = generate(count * 2 if valid_only else count, seed=time.time_ns())
    return [body for body, valid in made if valid or not valid_only][:count]


def _send_ten(sqs: Any, url: str, chunk: list[str]) -> list[str]:
    """One SendMessageBatch of up to ten bodies; their message ids. Raises if SQS refused any."""
    entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)]
    response = sqs.send_message_batch(QueueUrl=url, Entries=entries)
    if response.get("Failed"):
        raise RuntimeError(f"SQS refused {len(response['Failed'])} messages")
    return [entry["MessageId"] for entry in response["Successful"]]


def send(queue: str, bodies: list[str], threads: int = 8) -> int:
    """Send bodies to a queue, ten per call, several calls in flight."""
    sqs, url = aws.client("sqs"), aws.queue_url(queue)
    with ThreadPoolExecutor(threads) as pool:
        return sum(len(ids) for ids in pool.map(lambda chunk: _send_ten(sqs, url, chunk), aws.chunks(bodies)))


def send_steadily(
    queue: str, bodies: list[str], rate: float, on_sent: Callable[[list[str], float], None] = lambda ids, at: None
) -> float:
    """Send ten bodies per call on a fixed schedule of `rate` events a second; each call's
    message ids go to `on_sent` with the time its send began. Returns the rate achieved."""
    sqs, url = aws.client("sqs"), aws.queue_url(queue)

    def send_chunk(chunk: list[str]) -> None:
        at = time.time()
        on_sent(_send_ten(sqs, url, chunk), at)

    started = time.monotonic()
    with ThreadPoolExecutor(PACED_SENDERS) as pool:
        calls = []
        for n, chunk in enumerate(aws.chunks(bodies)):
            time.sleep(max(0.0, started + n * 10 / rate - time.monotonic()))
            calls.append(pool.submit(send_chunk, chunk))
    for call in calls:
        call.result()  # a refused send fails the run, never a silent gap
    return len(bodies) / (time.monotonic() - started)
