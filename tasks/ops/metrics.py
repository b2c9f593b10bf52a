"""Pipeline counters for Prometheus, served on Flower's /metrics.

Read from the pipeline's ledger in PostgreSQL at each scrape, so they count every
worker process, survive restarts, and agree with `status`. Retries are Flower's own
``flower_events_total{type="task-retried"}``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

import celeryconfig as config
from tasks.pipeline import store


class PipelineCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        try:
            conn = store.connect(config.database_url())
        except Exception:
            yield GaugeMetricFamily("login_pipeline_database_up", "PostgreSQL answered the scrape", value=0)
            return
        try:
            ledger = store.ledger_totals(conn)
        finally:
            conn.close()
        yield GaugeMetricFamily("login_pipeline_database_up", "PostgreSQL answered the scrape", value=1)
        for name, doc, key in (
            ("received", "Source messages processed by mask-and-insert", "received"),
            ("rows_inserted", "Rows written to user_logins", "inserted"),
            ("duplicates_skipped", "Deliveries skipped as already written", "duplicates"),
            ("dead_lettered", "Records sent to the dead-letter queue", "dead_lettered"),
            ("non_address_ips", "Records whose ip was no address (masked as given)", "non_address_ips"),
            ("batches", "Committed mask-and-insert batches", "batches"),
        ):
            yield CounterMetricFamily(f"login_pipeline_{name}", doc, value=int(ledger[key]))
        yield CounterMetricFamily(
            "login_pipeline_batch_seconds", "Total batch latency, seconds", value=ledger["seconds"]
        )
        yield GaugeMetricFamily(
            "login_pipeline_batch_seconds_max", "Slowest batch, seconds", value=ledger["slowest_seconds"]
        )


_registered = False


def register() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(PipelineCollector())
        _registered = True
