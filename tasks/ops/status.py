"""Where the events are: queue depths, rows written and the ledger's totals."""

from __future__ import annotations

from typing import Any

import celeryconfig as config
from tasks.broker import aws
from tasks.pipeline import store

TASK_QUEUES = (config.FETCH_QUEUE, config.BATCH_QUEUE, f"{config.BATCH_QUEUE}-dlq")


def queue_names() -> list[str]:
    """Every queue the pipeline uses, by its SQS name (Flower's Broker page lists them)."""
    return [config.SOURCE_QUEUE, config.DEAD_LETTER_QUEUE, *(config.CELERY_QUEUE_PREFIX + q for q in TASK_QUEUES)]


def collect() -> dict[str, Any]:
    queues = {name: aws.queue_depth(name) for name in (config.SOURCE_QUEUE, config.DEAD_LETTER_QUEUE)}
    for name in TASK_QUEUES:
        queues[f"celery:{name}"] = aws.queue_depth(config.CELERY_QUEUE_PREFIX + name)
    conn = store.connect(config.database_url())
    try:
        totals = store.totals(conn)
    finally:
        conn.close()
    return {"queues": queues, "database": totals}


def render(report: dict[str, Any]) -> str:
    lines = [f"{'queue':<32}{'visible':>10}{'in flight':>11}"]
    for name, depth in report["queues"].items():
        lines.append(f"{name:<32}{depth['visible']:>10}{depth['in_flight']:>11}")
    db = report["database"]
    lines.append("")
    lines.append(
        f"user_logins rows: {db['rows']}   dead letters: {db['dead_letters']}   "
        f"duplicate deliveries skipped: {db['duplicates']}   batches: {db['batches']}"
    )
    return "\n".join(lines)


def pipeline_idle(report: dict[str, Any]) -> bool:
    """Nothing left in login-queue or in Celery's batch queue."""
    queues = report["queues"]
    busy = (queues[config.SOURCE_QUEUE], queues[f"celery:{config.BATCH_QUEUE}"])
    return all(depth["visible"] == 0 and depth["in_flight"] == 0 for depth in busy)
