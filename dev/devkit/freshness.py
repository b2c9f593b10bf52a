"""Freshness under a steady load: from an event's SentTimestamp to its committed row.

`bench --rate R --seconds S` starts a worker and beat, then sends R events a second for S
seconds (ten per SendMessageBatch, each call on a fixed schedule). Each event's
freshness is measured twice, and the two must agree: from outside, by watching
user_logins for its row (every WATCH_EVERY seconds, from the moment its send began), and
by the pipeline's own histogram (`login_pipeline_freshness_seconds`: the ledger's bucket
counts before and after, read as Prometheus's `histogram_quantile` reads them). The
outside figure is a little later by construction: it starts before SQS stamps the
message and notices a row up to one watch interval after its commit. A rate may be a
share of the best ceiling measured first in the same run ("50%").
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import celeryconfig as config
from devkit import ceiling, runner, seed, stack
from tasks.pipeline import histogram, store

WATCH_EVERY = 0.05
QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class Freshness:
    rate: float  # asked, events/s
    seconds: float
    ceiling_per_s: float | None = None  # when the rate is a share of it
    sent_per_s: float = 0.0  # achieved
    events: int = 0
    bare_clients: dict[str, float] = field(default_factory=dict)  # 2 bare clients at the same rate: age at receipt
    outside: dict[str, float] = field(default_factory=dict)  # p50, p90, p99, max: seconds
    histogram: dict[str, float] = field(default_factory=dict)  # p50, p90, p99; max: its bucket's bound
    waited: float = 120.0  # seconds the watch waited for the last rows after the sending: later ones are not counted


def quantile(q: float, bucket_counts: list[int], bounds: tuple[float, ...]) -> float:
    """Prometheus's histogram_quantile: linear within the bucket that holds the q-th value."""
    total = sum(bucket_counts)
    rank, seen = q * total, 0
    for index, count in enumerate(bucket_counts):
        if count and seen + count >= rank:
            if index == len(bounds):  # +Inf: the highest finite bound, as Prometheus answers
                return bounds[-1]
            lower = bounds[index - 1] if index else 0.0
            return lower + (bounds[index] - lower) * (rank - seen) / count
        seen += count
    return float("nan")


def outside_quantiles(seconds: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    found = {f"p{round(q * 100)}": round(cuts[round(q * 100) - 1], 3) for q in QUANTILES}
    return {**found, "max": round(max(seconds), 3)}


class Watch:
    """Sent events and when their rows appeared, seen from outside the pipeline."""

    def __init__(self) -> None:
        self.sent_at: dict[str, float] = {}
        self.freshness: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sent(self, ids: list[str], at: float) -> None:
        with self._lock:
            self.sent_at.update(dict.fromkeys(ids, at))

    def _run(self) -> None:
        conn = store.connect(config.database_url())
        try:
            while not self._stop.is_set():
                self._look(conn)
                self._stop.wait(WATCH_EVERY)
        finally:
            conn.close()

    def _look(self, conn: store.Connection) -> None:
        with self._lock:
            waiting = list(self.sent_at)
        if not waiting:
            return
        with conn.cursor() as cur:
            cur.execute("SELECT message_id FROM user_logins WHERE message_id = ANY(%s)", (waiting,))
            found = [row[0] for row in cur.fetchall()]
        conn.rollback()
        now = time.time()
        with self._lock:
            self.freshness += [now - self.sent_at.pop(message_id) for message_id in found]

    def start(self) -> None:
        self._thread.start()

    def wait_for_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.sent_at and time.monotonic() < deadline:
            time.sleep(WATCH_EVERY)
        self._stop.set()
        self._thread.join()


def wait_for_a_fetch(conn: store.Connection, since: float, timeout: float = 60) -> None:
    """Until a fetch that started after `since` (unix seconds) has ended: the worker is up
    and receiving, so that the load meets a running pipeline, not its start-up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = store.ledger(conn).last_fetch
        if last is not None and last > since:
            return
        time.sleep(0.2)
    raise RuntimeError(f"no fetch ran within {timeout:.0f} s of the worker's start: see .stack/logs")


def measure(rate: str, seconds: float, out: Path) -> Freshness:
    """Freshness at `rate` for `seconds`; the figures also go to out/freshness.json."""
    stack.up()
    share = rate.endswith("%")
    best = None
    if share:
        best = ceiling.best(ceiling.measure_all(seed.bodies(ceiling.SAMPLE_EVENTS)))
    per_s = float(rate.rstrip("%")) / 100 * best.per_s if best else float(rate)
    bodies = seed.bodies(round(per_s * seconds), valid_only=True)
    result = Freshness(rate=round(per_s, 1), seconds=seconds, ceiling_per_s=best.per_s if best else None)
    result.bare_clients = outside_quantiles(ceiling.under_load(bodies, per_s))
    follow(result, bodies)
    out.mkdir(parents=True, exist_ok=True)
    (out / "freshness.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def follow(
    result: Freshness, bodies: list[str], concurrency: int | None = None, overrides: dict[str, str] | None = None
) -> None:
    """Into `result`: a worker (of `concurrency` pool processes, else WORKER_CONCURRENCY)
    and beat, their environment amended by `overrides`, following `bodies` sent at
    `result.rate` a second; each event's freshness from outside and by the histogram."""
    conn = store.connect(config.database_url())
    commands = {"worker": runner.worker_command(concurrency=concurrency), "beat": runner.beat_command()}
    started = time.time()
    with runner.processes(commands, overrides):
        wait_for_a_fetch(conn, started)
        before = store.ledger(conn).freshness_counts
        watch = Watch()
        watch.start()
        result.sent_per_s = round(seed.send_steadily(config.SOURCE_QUEUE, bodies, result.rate, watch.sent), 1)
        watch.wait_for_all(timeout=result.waited)
        after = store.ledger(conn).freshness_counts
    conn.close()
    delta = [a - b for a, b in zip(after, before + [0] * (len(after) - len(before)), strict=True)]
    if not watch.freshness:
        raise RuntimeError("no event became a row: see .stack/logs")
    result.events = len(watch.freshness)
    result.outside = outside_quantiles(watch.freshness)
    bounds = histogram.FRESHNESS_BOUNDS
    result.histogram = {f"p{round(q * 100)}": round(quantile(q, delta, bounds), 3) for q in QUANTILES}
    top = max(i for i, count in enumerate(delta) if count)
    result.histogram["max"] = bounds[top] if top < len(bounds) else float("inf")


def report(result: Freshness) -> str:
    best = result.ceiling_per_s
    share = f" ({result.rate / best:.0%} of the best ceiling, {best:,.0f}/s)" if best else ""
    lines = [
        f"rate                   {result.rate:,.0f} events/s asked, {result.sent_per_s:,.0f} sent{share}",
        f"events                 {result.events:,} rows over {result.seconds:.0f} s",
        "bare clients, receipt  " + ", ".join(f"{k} {v:.3f} s" for k, v in result.bare_clients.items()),
        "freshness, outside     " + ", ".join(f"{k} {v:.3f} s" for k, v in result.outside.items()),
        "freshness, histogram   "
        + ", ".join(f"{k} {v:.3f} s" for k, v in result.histogram.items() if k != "max")
        + f", max ≤ {result.histogram['max']} s",
    ]
    return "\n".join(lines)
