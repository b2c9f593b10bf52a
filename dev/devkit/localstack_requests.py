"""The calls LocalStack served, by operation, read from its request log.

LocalStack logs one line per call it serves ("AWS sqs.ReceiveMessage => 200"). Its CPU
goes mostly to what every call costs (parsing, routing, serialising: about 85% of its
samples in a py-spy profile under the pipeline), so calls per event are what a consumer
asks of it. SNS's own deliveries to subscribed queues are internal calls, logged at
another level, and not counted. Only for a LocalStack this stack started (its log).
"""

from __future__ import annotations

import re
from collections import Counter

from devkit import stack

LINE = re.compile(rb"INFO .*localstack\.request\.aws\s*: AWS (\S+) =>")

Mark = int  # an offset in the log: the calls logged before it


def mark() -> Mark | None:
    log = stack.log_path()
    return log.stat().st_size if log.exists() else None


def between(start: Mark | None, end: Mark | None) -> Counter[str]:
    """Calls by operation logged from `start` to `end`."""
    counts: Counter[str] = Counter()
    if start is None or end is None:
        return counts
    with open(stack.log_path(), "rb") as log:
        log.seek(start)
        for raw in log.read(end - start).splitlines():
            if match := LINE.search(raw):
                counts[match[1].decode()] += 1
    return counts


def per_thousand(counts: Counter[str], events: int) -> dict[str, float]:
    """Calls per 1,000 events by operation, the most frequent first, and their total."""
    if not counts:
        return {}
    scale = 1000 / max(events, 1)
    table = {op: round(n * scale, 1) for op, n in counts.most_common()}
    return {**table, "all": round(sum(counts.values()) * scale, 1)}
