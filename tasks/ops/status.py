"""Where the events are: queue depths, rows written and the ledger's totals.

`collect` raises on the first service it cannot reach (the runner rides that out);
`survey`, for the `status` command, reports what it can reach and names the rest
unreachable, each with its one-line reason (tasks/ops/failures.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import ClientError, SSLError

import celeryconfig as config
from tasks.broker import aws, tls
from tasks.ops.failures import describe
from tasks.pipeline import store

T = TypeVar("T")

TASK_QUEUES = (config.FETCH_QUEUE, config.BATCH_QUEUE, f"{config.BATCH_QUEUE}-dlq")


def queue_names() -> list[str]:
    """Every queue the pipeline uses, by its SQS name (Flower's Broker page lists them)."""
    return [config.SOURCE_QUEUE, config.DEAD_LETTER_QUEUE, *(config.CELERY_QUEUE_PREFIX + q for q in TASK_QUEUES)]


def _queues() -> dict[str, str]:
    """Each queue's name in the report, and its SQS name."""
    names = {name: name for name in (config.SOURCE_QUEUE, config.DEAD_LETTER_QUEUE)}
    return names | {f"celery:{name}": config.CELERY_QUEUE_PREFIX + name for name in TASK_QUEUES}


def _totals() -> dict[str, int]:
    conn = store.connect(config.database_url())
    try:
        return store.totals(conn)
    finally:
        conn.close()


def collect() -> dict[str, Any]:
    queues = {shown: aws.queue_depth(name) for shown, name in _queues().items()}
    return {"queues": queues, "database": _totals()}


def _reached(read: Callable[[], T]) -> T | dict[str, str]:
    try:
        return read()
    except Exception as exc:  # every failure becomes its one-line reason
        return {"unreachable": describe(exc).line}


def survey() -> dict[str, Any]:
    """Like `collect`, but a part it cannot reach is {"unreachable": reason}. Once SQS
    itself did not answer, the remaining queues are not asked (each would wait as long)."""
    queues: dict[str, Any] = {}
    down: str | None = None
    for shown, name in _queues().items():
        if down:
            queues[shown] = {"unreachable": down}
            continue
        try:
            queues[shown] = aws.queue_depth(name, aws.scrape_client())  # bounded: seconds, whatever SQS does
        except ClientError as exc:  # SQS answered: this queue alone
            queues[shown] = {"unreachable": describe(exc).line}
        except Exception as exc:
            if isinstance(exc, SSLError) and tls.reason(exc):
                raise  # a certificate that does not verify is refused, not unreachable (tasks/broker/tls.py)
            queues[shown] = {"unreachable": describe(exc).line}
            down = "SQS, as above"
    return {"queues": queues, "database": _reached(_totals)}


def unreachable(report: dict[str, Any]) -> bool:
    parts = [*report["queues"].values(), report["database"]]
    return any("unreachable" in part for part in parts)


def render(report: dict[str, Any]) -> str:
    lines = [f"{'queue':<32}{'visible':>10}{'in flight':>11}"]
    for name, depth in report["queues"].items():
        if "unreachable" in depth:
            lines.append(f"{name:<32}  unreachable: {depth['unreachable']}")
        else:
            lines.append(f"{name:<32}{depth['visible']:>10}{depth['in_flight']:>11}")
    db = report["database"]
    lines.append("")
    if "unreachable" in db:
        lines.append(f"database unreachable: {db['unreachable']}")
    else:
        lines.append(
            f"user_logins rows: {db['rows']}   "
            f"duplicate deliveries skipped: {db['duplicates']}   batches: {db['batches']}"
        )
    lines.append(dead_letters_line(report))
    return "\n".join(lines)


def dead_letters_line(report: dict[str, Any]) -> str:
    """The dead letters twice, saying which is which: the ledger's count (every record
    set aside with a row in dead_letters, ever) and what login-queue-dlq holds now. The
    queue can hold more: batches given up while the database could not be written
    reach the queue without a row (issue 32)."""
    db, dlq = report["database"], report["queues"].get(config.DEAD_LETTER_QUEUE, {})
    recorded = None if "unreachable" in db else db["dead_letters"]
    held = None if "unreachable" in dlq else dlq["visible"] + dlq["in_flight"]
    ledger = "unknown (see the database above)" if recorded is None else str(recorded)
    queued = "unknown (see SQS above)" if held is None else str(held)
    line = f"dead letters: {ledger} recorded in the ledger (ever); {queued} in {config.DEAD_LETTER_QUEUE} now"
    if recorded is not None and held is not None and held > recorded:
        line += (
            " (more than recorded: likely batches given up while the database was down;"
            " `redrive --dry-run` counts them)"
        )
    return line


def pipeline_idle(report: dict[str, Any]) -> bool:
    """Nothing left in login-queue or in Celery's batch queue."""
    queues = report["queues"]
    busy = (queues[config.SOURCE_QUEUE], queues[f"celery:{config.BATCH_QUEUE}"])
    return all(depth["visible"] == 0 and depth["in_flight"] == 0 for depth in busy)
