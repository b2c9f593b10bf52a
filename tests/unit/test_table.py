"""`bench --table`'s Markdown, from figures as the bench records them (the measuring
itself runs in tests/test_bench.py)."""

from __future__ import annotations

from devkit.bench import Figures
from devkit.ceiling import Ceiling
from devkit.freshness import Freshness
from devkit.table import Table, markdown


def figures(events: int, main_mb: float, pool_mb: float) -> Figures:
    return Figures(
        events,
        ceilings=[Ceiling(1, 20_000, 2_000.0, 130.0, 480.0, {"all": 200.0}), Ceiling(2, 20_000, 2_500.0, 140.0)],
        ceiling_per_s=2_500.0,
        ceiling_end_per_s=2_400.0,
        pipeline_per_s=2_375.0,
        ratio=0.95,
        worker_cpu_us_per_event=127.0,
        localstack_cpu_us_per_event=510.0,
        localstack_calls_per_1000={"sqs.ReceiveMessage": 103.0, "all": 212.0},
        first_tenth_per_s=2_300.0,
        last_tenth_per_s=2_350.0,
        peak_rss_mb={"python[1]": main_mb, "python[2]": pool_mb, "python[3]": pool_mb - 1},
    )


def fresh(rate: float, p99: float) -> Freshness:
    quantiles = {"p50": 0.3, "p90": 0.5, "p99": p99, "max": 0.9}
    return Freshness(rate, 60, 2_500.0, rate, 1000, dict(quantiles), dict(quantiles), dict(quantiles))


def test_the_table_holds_every_figure_the_issue_asks_for() -> None:
    table = Table(
        figures(60_000, 150.0, 105.0),
        {"50%": fresh(1_250, 0.69), "80%": fresh(2_000, 1.8)},
        {10_000: figures(10_000, 150.0, 105.0), 1_000_000: figures(1_000_000, 165.0, 107.0)},
    )
    text = markdown(table)
    assert "(20,000 events each run) | 2,000 / 2,500 events/s (best: 2)" in text
    assert "**0.95×**" in text and "**127 µs**" in text
    assert "pipeline 510 µs, 212 calls; best ceiling unknown, unknown calls" in text  # the best: 2 clients
    assert "freshness at 50% (1,250/s)" in text and "**0.69**" in text and "**1.80**" in text
    assert "150.0 → 165.0 MB (**1.10×**)" in text and "≤ 105.0 → ≤ 107.0 MB (1.02×)" in text
