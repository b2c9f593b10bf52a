"""Histogram buckets of the pipeline's ledger: their bounds, and one batch's counts.

A batch task counts its own observations into buckets at commit (`counts`), stores
them in its ingest_batches row, and the database sums them (init.sql's rollup), so
every pool process counts and a restart loses nothing. Changing a bound changes what
the stored counts mean: the rollup must be emptied with the ledger (TRUNCATE).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from itertools import accumulate

# Seconds from an event's SentTimestamp to its row's commit: 50 ms to 10 minutes.
FRESHNESS_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Seconds of one committed batch.
DURATION_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)


def counts(values: Iterable[float], bounds: tuple[float, ...]) -> list[int]:
    """How many values fall in each bucket (le bound; the last one is +Inf), not cumulative."""
    found = [0] * (len(bounds) + 1)
    for value in values:
        found[bisect_left(bounds, value)] += 1
    return found


def cumulative(bucket_counts: list[int], bounds: tuple[float, ...]) -> list[tuple[str, int]]:
    """Prometheus's buckets: (le, count of values <= le), ending with +Inf; missing counts are 0."""
    padded = (list(bucket_counts) + [0] * (len(bounds) + 1))[: len(bounds) + 1]
    labels = [_le(bound) for bound in bounds] + ["+Inf"]
    return list(zip(labels, accumulate(padded), strict=True))


def _le(bound: float) -> str:
    return repr(float(bound))
