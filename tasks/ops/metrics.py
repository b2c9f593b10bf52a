"""Pipeline counters for Prometheus, served on Flower's /metrics.

Read from the pipeline's ledger in PostgreSQL at each scrape, so they count every
worker process, survive restarts, and agree with `status`. Retries are Flower's own
``flower_events_total{type="task-retried"}``.

The collector keeps one connection (METRICS_DATABASE_URL, a login user granted the
``login_metrics`` role of init.sql: SELECT on ingest_batches only) across scrapes. A
scrape whose query fails drops it and tries once more on a new one; if that fails too,
``login_pipeline_database_up`` is 0 and the next scrape connects again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from functools import cache

import psycopg2
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

import celeryconfig as config
from tasks.pipeline import store

log = logging.getLogger(__name__)
UP = ("login_pipeline_database_up", "PostgreSQL answered the scrape")
COUNTERS = (
    ("received", "Source messages processed by mask-and-insert", "received"),
    ("rows_inserted", "Rows written to user_logins", "inserted"),
    ("duplicates_skipped", "Deliveries skipped as already written", "duplicates"),
    ("dead_lettered", "Records sent to the dead-letter queue", "dead_lettered"),
    ("non_address_ips", "Records whose ip was no address (masked as given)", "non_address_ips"),
    ("batches", "Committed mask-and-insert batches", "batches"),
)
BATCH_SECONDS = ("login_pipeline_batch_seconds", "Total batch latency, seconds")
SLOWEST_BATCH = ("login_pipeline_batch_seconds_max", "Slowest batch, seconds")


class PipelineCollector(Collector):
    def __init__(self, url: Callable[[], str] = config.metrics_database_url) -> None:
        self._url = url
        self._conn: store.Connection | None = None
        self._lock = threading.Lock()  # one scrape at a time on the one connection

    def ledger(self) -> dict[str, float] | None:
        """The ledger's totals, on the kept connection or, once, a new one; None if down."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = store.connect(self._url())
                    return store.ledger_totals(self._conn)
                except (psycopg2.Error, RuntimeError) as exc:
                    self.close()
                    first_line = str(exc).strip().partition("\n")[0]
                    log.warning("metrics: ledger read failed (attempt %d): %s", attempt, first_line)
        return None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.close()

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """The metrics' names, for the registry, without a database round trip."""
        yield GaugeMetricFamily(*UP)
        for name, doc, _ in COUNTERS:
            yield CounterMetricFamily(f"login_pipeline_{name}", doc)
        yield CounterMetricFamily(*BATCH_SECONDS)
        yield GaugeMetricFamily(*SLOWEST_BATCH)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        ledger = self.ledger()
        yield GaugeMetricFamily(*UP, value=int(ledger is not None))
        if ledger is None:
            return
        for name, doc, key in COUNTERS:
            yield CounterMetricFamily(f"login_pipeline_{name}", doc, value=int(ledger[key]))
        yield CounterMetricFamily(*BATCH_SECONDS, value=ledger["seconds"])
        yield GaugeMetricFamily(*SLOWEST_BATCH, value=ledger["slowest_seconds"])


@cache
def register() -> None:
    """Add the pipeline's collector to Prometheus's registry, once per process."""
    REGISTRY.register(PipelineCollector())
