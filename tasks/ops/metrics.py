"""The pipeline's metrics for Prometheus, served on Flower's /metrics and by
`python -m tasks metrics` (tasks/ops/exporter.py) when Flower is not running.

Two collectors, read at each scrape:

- ``PipelineCollector``: the ledger in PostgreSQL. Batch tasks write their counts and
  histogram bucket counts into ingest_batches, dead letters their reason class into
  dead_letters, and the fetch its start into heartbeats, each in its own transaction;
  init.sql's triggers keep the totals in a few rollup rows. So every pool process
  counts, a restart loses nothing, `status` agrees, and a scrape reads a few rows
  however long the ledger grows (docs/decisions.md says why not prometheus_client's
  multiprocess mode). It keeps one connection (METRICS_DATABASE_URL, a login granted
  the ``login_metrics`` role of init.sql) across scrapes; a failed query drops it and
  tries once more on a new one; if that fails too, ``login_pipeline_database_up`` is 0
  and the next scrape connects again.
- ``QueueCollector``: each queue's visible and in-flight messages from SQS's
  GetQueueAttributes, and an estimate of the age of the oldest message waiting on
  login-queue (`oldest_age`: SQS itself gives that only through CloudWatch). The calls
  run in a background thread (``QueueCache``), never in the scrape, so /metrics answers
  within Prometheus's scrape timeout whatever SQS does; ``queue_cache_age_seconds`` says
  how old the gauges are; once a round fails or hangs ``sqs_up`` is 0 and they are left out.

The fetch's start (``last_fetch_timestamp_seconds``) is written by the worker that runs
the fetch, not by beat: it stops when beat stops sending fetches, and as well when no
worker runs them (the rules tell the two apart by the fetch queue's depth).
Flower's /metrics adds ``workers_alive`` (tasks/ops/workers.py).

No label or value ever comes from a record: queue names are the configured ones and
dead-letter reasons one of tasks/pipeline/reasons.py's classes. Retries are Flower's
own ``flower_events_total{type="task-retried"}``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import psycopg2
from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

import celeryconfig as config
from tasks.broker import aws
from tasks.ops import status
from tasks.pipeline import histogram, store
from tasks.pipeline.reasons import CLASSES

log = logging.getLogger(__name__)
P = "login_pipeline_"
# The queue gauges come from a cache a background thread refreshes every REFRESH_SECONDS.
# When the last round failed, one has run HUNG_SECONDS without an answer, or the gauges
# are older than STALE_SECONDS, SQS counts as down and they are left out, not shown stale.
REFRESH_SECONDS = 5.0
STALE_SECONDS = 30.0
FIRST_WAIT = 2.0  # seconds the first scrape waits for the first round
HUNG_SECONDS = 3.0  # a round this long is an endpoint that accepts and does not answer


@dataclass(frozen=True)
class Spec:
    """One metric as the collectors make it and docs/monitoring.md lists it."""

    name: str
    kind: Any  # CounterMetricFamily, GaugeMetricFamily or HistogramMetricFamily
    doc: str
    labels: tuple[str, ...] = ()
    bounds: tuple[float, ...] = ()  # a histogram's buckets

    def family(self, **options: Any) -> Any:
        return self.kind(self.name, self.doc, labels=self.labels or None, **options)


DATABASE_UP = Spec(f"{P}database_up", GaugeMetricFamily, "1 if PostgreSQL answered this scrape, else 0")
COUNTERS = (  # (spec, the ledger's key)
    (Spec(f"{P}received", CounterMetricFamily, "Source messages processed by mask-and-insert"), "received"),
    (Spec(f"{P}rows_inserted", CounterMetricFamily, "Rows written to user_logins"), "inserted"),
    (Spec(f"{P}duplicates_skipped", CounterMetricFamily, "Deliveries skipped as already written"), "duplicates"),
    (Spec(f"{P}dead_lettered", CounterMetricFamily, "Records sent to the dead-letter queue"), "dead_lettered"),
    (
        Spec(f"{P}non_address_ips", CounterMetricFamily, "Records whose ip was no address (masked as given)"),
        "non_address_ips",
    ),
    (Spec(f"{P}batches", CounterMetricFamily, "Committed mask-and-insert batches, given-up ones included"), "batches"),
    (
        Spec(
            f"{P}forgotten_events_dropped",
            CounterMetricFamily,
            "Events of forgotten users, sent before their erasure, dropped by a batch",
        ),
        "forgotten",
    ),
)
DEAD_LETTERS = Spec(
    f"{P}dead_letters",
    CounterMetricFamily,
    f"Dead letters by reason class ({', '.join(CLASSES)})",
    ("reason",),
)
FRESHNESS = Spec(
    f"{P}freshness_seconds",
    HistogramMetricFamily,
    "Seconds from an event's SentTimestamp (the original one if redriven) to its row's commit",
    bounds=histogram.FRESHNESS_BOUNDS,
)
BATCH_DURATION = Spec(
    f"{P}batch_duration_seconds",
    HistogramMetricFamily,
    "Seconds of one committed batch (0 for a batch given up)",
    bounds=histogram.DURATION_BOUNDS,
)
LAST_COMMIT = Spec(
    f"{P}last_commit_timestamp_seconds", GaugeMetricFamily, "Unix time of the last committed batch (0: none yet)"
)
LAST_FETCH = Spec(
    f"{P}last_fetch_timestamp_seconds",
    GaugeMetricFamily,
    "Unix time at which a worker last started a fetch of login-queue (0: none yet)",
)
SQS_UP = Spec(
    f"{P}sqs_up",
    GaugeMetricFamily,
    f"1 if SQS answered the last round of queue-attribute calls (every {REFRESH_SECONDS:g} s), else 0",
)
QUEUE_CACHE_AGE = Spec(
    f"{P}queue_cache_age_seconds",
    GaugeMetricFamily,
    "Seconds since SQS last answered the queue-attribute calls the queue gauges show (-1: never)",
)
QUEUE_MESSAGES = Spec(
    f"{P}queue_messages",
    GaugeMetricFamily,
    "Messages in a queue of the pipeline: visible (waiting) or in_flight (received, not yet deleted)",
    ("queue", "state"),
)
OLDEST_AGE = Spec(
    f"{P}oldest_message_age_seconds",
    GaugeMetricFamily,
    "Estimated age of the oldest message waiting on the source queue (0 when none waits)",
    ("queue",),
)
OLDEST_ROW_AGE = Spec(
    f"{P}oldest_row_age_seconds",
    GaugeMetricFamily,
    "Age of the oldest row of user_logins, from the start (UTC) of its create_date (0: no row)",
)
RETENTION = Spec(f"{P}retention_days", GaugeMetricFamily, "RETENTION_DAYS in effect (0: rows are kept forever)")
WORKERS_ALIVE = Spec(
    f"{P}workers_alive",
    GaugeMetricFamily,
    "Celery workers whose last heartbeat reached Flower within 2 of their intervals (Flower's /metrics only)",
)
LEDGER_SPECS = (DATABASE_UP, *(spec for spec, _ in COUNTERS), DEAD_LETTERS, FRESHNESS, BATCH_DURATION)
SPECS = (
    *LEDGER_SPECS,
    LAST_COMMIT,
    LAST_FETCH,
    OLDEST_ROW_AGE,
    RETENTION,
    SQS_UP,
    QUEUE_CACHE_AGE,
    QUEUE_MESSAGES,
    OLDEST_AGE,
    WORKERS_ALIVE,
)


class PipelineCollector(Collector):
    """The ledger's metrics (PostgreSQL); `latest` is what the last scrape read, or None."""

    def __init__(self, url: Callable[[], str] = config.metrics_database_url) -> None:
        self._url = url
        self._conn: store.Connection | None = None
        self._lock = threading.Lock()  # one scrape at a time on the one connection
        self.latest: store.Ledger | None = None

    def ledger(self) -> store.Ledger | None:
        """The ledger's totals, on the kept connection or, once, a new one; None if down."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = store.connect(self._url())
                    return store.ledger(self._conn)
                except (psycopg2.Error, RuntimeError) as exc:
                    self.close()
                    first_line = str(exc).strip().partition("\n")[0]
                    log.warning("metrics: ledger read failed (attempt %d): %s", attempt, first_line)
        return None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.close()

    def describe(self) -> Iterator[Metric]:
        """The metrics' names, for the registry, without a database round trip."""
        for spec in (*LEDGER_SPECS, LAST_COMMIT, LAST_FETCH, OLDEST_ROW_AGE, RETENTION):
            yield spec.family()

    def collect(self) -> Iterator[Metric]:
        ledger = self.latest = self.ledger()
        yield DATABASE_UP.family(value=int(ledger is not None))
        if ledger is None:
            return
        for spec, key in COUNTERS:
            yield spec.family(value=int(ledger.totals[key]))
        letters = DEAD_LETTERS.family()
        for reason in CLASSES:
            letters.add_metric([reason], ledger.dead_letters.get(reason, 0))
        yield letters
        yield FRESHNESS.family(
            buckets=histogram.cumulative(ledger.freshness_counts, FRESHNESS.bounds), sum_value=ledger.freshness_sum
        )
        yield BATCH_DURATION.family(
            buckets=histogram.cumulative(ledger.duration_counts, BATCH_DURATION.bounds),
            sum_value=ledger.totals["seconds"],
        )
        yield LAST_COMMIT.family(value=ledger.last_commit or 0)
        yield LAST_FETCH.family(value=ledger.last_fetch or 0)
        oldest = ledger.oldest_row
        yield OLDEST_ROW_AGE.family(value=max(0.0, time.time() - oldest) if oldest is not None else 0)
        yield RETENTION.family(value=config.RETENTION_DAYS)


def oldest_age(visible: int, ledger: store.Ledger, now: float) -> float:
    """The estimated age of the oldest message waiting on login-queue, in seconds.

    SQS reports ApproximateAgeOfOldestMessage only to CloudWatch, and reading a message
    to see its SentTimestamp would count as a receive. So: 0 when nothing is visible;
    otherwise the age of the newest message the last fetch received (what still waits
    was sent after about that time, the queue being roughly first in, first out), or,
    if that fetch received nothing, the time since it started (what waits came later),
    or, before any fetch, 0. It grows while no fetch runs, so a dead beat shows. A
    redriven event carries its original SentTimestamp: a fetch of only redriven events
    makes the estimate as old as they are, until the next fetch.
    """
    since = ledger.newest_fetched_sent or ledger.last_fetch
    return max(0.0, now - since) if visible and since else 0.0


@dataclass(frozen=True)
class Depths:
    """What the last successful round of queue-attribute calls read, and when."""

    queues: dict[str, dict[str, int]]
    at: float  # time.monotonic()


class QueueCache:
    """Each queue's depth, read by a daemon thread every REFRESH_SECONDS with the scrape
    client (one attempt, short timeouts): a scrape never waits on SQS, whatever SQS does
    (issue 32: a frozen LocalStack made Flower's /metrics take over 10 s, so the first
    page said "metrics down"). The thread starts at the first `latest` call (after any fork)."""

    def __init__(
        self,
        queues: Callable[[], list[str]] = status.queue_names,
        read: Callable[[str], dict[str, int]] | None = None,
        every: float = REFRESH_SECONDS,
    ) -> None:
        self._queues = queues
        self._read = read or (lambda name: aws.queue_depth(name, aws.scrape_client()))
        self._every = every
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._first = threading.Event()  # set after the first round, answered or not
        self.depths: Depths | None = None
        self.failed = False  # the last round failed
        self.round_started: float | None = None  # monotonic, while a round runs

    def refresh(self) -> None:
        """One round of calls; on any failure the previous depths stay, ageing."""
        self.round_started = time.monotonic()
        try:
            depths = {name: self._read(name) for name in self._queues()}
        except Exception as exc:  # SQS down or a queue missing: one line, no counts
            log.warning("metrics: queue attributes failed: %s", type(exc).__name__)
            self.failed = True
            return
        finally:
            self.round_started = None
        self.depths, self.failed = Depths(depths, time.monotonic()), False

    def answering(self) -> bool:
        """Whether SQS answers: the last round succeeded, within STALE_SECONDS, and the
        round now running (if any) has not waited HUNG_SECONDS (a frozen endpoint takes
        the whole read timeout to fail)."""
        started, depths = self.round_started, self.depths
        hung = started is not None and time.monotonic() - started > HUNG_SECONDS
        fresh = depths is not None and time.monotonic() - depths.at <= STALE_SECONDS
        return fresh and not self.failed and not hung

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.refresh()
            self._first.set()
            self._stop.wait(max(0.0, self._every - (time.monotonic() - started)))

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="queue-depths", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def latest(self) -> Depths | None:
        """The last depths read; the first call waits up to FIRST_WAIT seconds for them."""
        self.start()
        self._first.wait(FIRST_WAIT)
        return self.depths


class QueueCollector(Collector):
    """Queue gauges from the cache of GetQueueAttributes; the oldest age needs `pipeline`'s
    ledger, so this collector is registered after it (a registry collects in that order)."""

    def __init__(self, pipeline: PipelineCollector, cache: QueueCache | None = None) -> None:
        self._pipeline = pipeline
        self._cache = cache or QueueCache()

    def describe(self) -> Iterator[Metric]:
        for spec in (SQS_UP, QUEUE_CACHE_AGE, QUEUE_MESSAGES, OLDEST_AGE):
            yield spec.family()

    def collect(self) -> Iterator[Metric]:
        cached = self._cache.latest()
        yield QUEUE_CACHE_AGE.family(value=time.monotonic() - cached.at if cached else -1.0)
        if cached is None or not self._cache.answering():
            yield SQS_UP.family(value=0)
            return
        depths = cached.queues
        yield SQS_UP.family(value=1)
        gauge = QUEUE_MESSAGES.family()
        for name, depth in depths.items():
            for state in ("visible", "in_flight"):
                gauge.add_metric([name, state], depth[state])
        yield gauge
        ledger = self._pipeline.latest
        if ledger is not None and config.SOURCE_QUEUE in depths:
            oldest = OLDEST_AGE.family()
            visible = depths[config.SOURCE_QUEUE]["visible"]
            oldest.add_metric([config.SOURCE_QUEUE], oldest_age(visible, ledger, time.time()))
            yield oldest


def collectors(url: Callable[[], str] = config.metrics_database_url) -> list[Collector]:
    """Both collectors, in the order a registry must hold them."""
    pipeline = PipelineCollector(url)
    return [pipeline, QueueCollector(pipeline)]


def register_into(registry: CollectorRegistry) -> None:
    for collector in collectors():
        registry.register(collector)


@cache
def register() -> None:
    """Add the pipeline's collectors to Prometheus's registry (Flower's), once per process."""
    register_into(REGISTRY)


def metrics_table() -> str:
    """docs/monitoring.md's list of the pipeline's metrics, made from the specs above."""
    kinds = {CounterMetricFamily: "counter", GaugeMetricFamily: "gauge", HistogramMetricFamily: "histogram"}
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for spec in SPECS:
        name = spec.name + ("_total" if spec.kind is CounterMetricFamily else "")
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "—"
        buckets = f"; buckets {', '.join(f'{b:g}' for b in spec.bounds)}" if spec.bounds else ""
        rows.append(f"| `{name}` | {kinds[spec.kind]} | {labels} | {spec.doc}{buckets} |")
    return "\n".join(rows)
