"""The calls LocalStack served, by operation, read from its request log.

LocalStack logs one line per call ("AWS sqs.ReceiveMessage => 200"). Its CPU goes mostly
to what every call costs (parsing, routing, serialising: about 85% of its samples in a
py-spy profile under the pipeline), so calls per event are what a consumer asks of it.
Only for a LocalStack this stack started, whose log it knows.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from tasks.dev import stack

LINE = re.compile(r"^(\S+)\s+INFO .*localstack\.request\.aws\s*: AWS (\S+) =>")


@dataclass(frozen=True)
class Mark:
    offset: int
    at: str  # the log's own timestamp format


def _now() -> str:
    return datetime.now().isoformat(timespec="milliseconds")


def mark() -> Mark | None:
    log = stack.log_path()
    return Mark(log.stat().st_size, _now()) if log.exists() else None


def between(start: Mark | None, end: Mark | None) -> Counter[str]:
    """Calls by operation logged from `start` to `end`, read once both have passed."""
    if start is None or end is None:
        return Counter()
    counts: Counter[str] = Counter()
    with open(stack.log_path(), "rb") as log:
        log.seek(start.offset)
        for raw in log:
            match = LINE.match(raw.decode(errors="replace"))
            if not match or match[1] < start.at:
                continue
            if match[1] > end.at:
                break
            counts[match[2]] += 1
    return counts


def per_thousand(counts: Counter[str], events: int) -> dict[str, float]:
    """Calls per 1,000 events by operation, the most frequent first, and their total."""
    if not counts:
        return {}
    scale = 1000 / max(events, 1)
    table = {op: round(n * scale, 1) for op, n in counts.most_common()}
    return {**table, "all": round(sum(counts.values()) * scale, 1)}
