"""`bench --table`: every figure of the performance table, from one run, as Markdown.

In this order, on one stack: throughput against the ceilings of 1, 2 and 4 bare clients
at `events` (default 60,000), with the worker's and LocalStack's CPU and LocalStack's
calls per event; freshness at half and at 80% of the best ceiling; then the memory runs
at 10,000 and at `memory_events` (default 1,000,000). Each part writes its own JSON in
a subfolder of `out`; table.md and table.json put them together.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from devkit import bench, ceiling, freshness
from devkit.bench import Figures, microseconds
from devkit.freshness import Freshness

SHARES = ("50%", "80%")


@dataclass
class Table:
    throughput: Figures
    freshness: dict[str, Freshness]
    memory: dict[int, Figures]


def measure(out: Path, events: int, memory_events: int, seconds: float) -> Table:
    throughput = bench.bench(events, out / "throughput")
    fresh = {share: freshness.measure(share, seconds, out / f"freshness-{share.rstrip('%')}") for share in SHARES}
    memory = {n: bench.bench(n, out / f"memory-{n}") for n in (10_000, memory_events)}
    table = Table(throughput, fresh, memory)
    (out / "table.json").write_text(json.dumps(asdict(table), indent=2))
    (out / "table.md").write_text(markdown(table))
    return table


def _main_and_pool(figures: Figures) -> tuple[float, float]:
    """Peak RSS of the worker's main process and the largest of its pool processes (the
    main process comes first: bench.peak_rss)."""
    peaks = list(figures.peak_rss_mb.values()) or [float("nan")]
    return peaks[0], max(peaks[1:], default=float("nan"))


def markdown(table: Table) -> str:
    t = table.throughput
    best = ceiling.best(t.ceilings)
    ceilings = " / ".join(f"{c.per_s:,.0f}" for c in t.ceilings)
    clients = " / ".join(str(c.clients) for c in t.ceilings)
    calls_pipeline, calls_best = t.localstack_calls_per_1000.get("all"), best.localstack_calls_per_1000.get("all")
    rows = [
        "| | figure | target |",
        "|---|---|---|",
        f"| ceiling, {clients} bare client processes ({best.events:,} events each run) | {ceilings} events/s"
        f" (best: {best.clients}) | |",
        f"| the pipeline, {t.events:,} events | {t.pipeline_per_s:,.0f} events/s | |",
        f"| ratio to the best ceiling | **{t.ratio:.2f}×** (the best again after the pipeline:"
        f" {t.ceiling_end_per_s:,.0f}/s) | ≥ 0.95× |",
        f"| worker CPU per event, steady part | **{t.worker_cpu_us_per_event:.0f} µs** (bare clients:"
        f" {best.cpu_us_per_event:.0f} µs) | ≤ 150 µs |",
        f"| LocalStack: CPU per event, calls per 1,000 events | pipeline {microseconds(t.localstack_cpu_us_per_event)},"
        f" {_or(calls_pipeline)} calls; best ceiling {microseconds(best.localstack_cpu_us_per_event)},"
        f" {_or(calls_best)} calls | |",
    ]
    for share, f in table.freshness.items():
        target = "≤ 1 s" if share == "50%" else "≤ 2 s"
        rows.append(
            f"| freshness at {share} ({f.rate:,.0f}/s): p50 / p90 / p99 / max, outside | "
            f"{f.outside['p50']:.2f} / {f.outside['p90']:.2f} / **{f.outside['p99']:.2f}** /"
            f" {f.outside['max']:.2f} s (histogram p99 {f.histogram['p99']:.2f} s; bare clients' p99"
            f" {f.bare_clients['p99']:.2f} s) | p99 {target} |"
        )
    small, large = sorted(table.memory)
    (main_s, pool_s), (main_l, pool_l) = _main_and_pool(table.memory[small]), _main_and_pool(table.memory[large])
    big = table.memory[large]
    rows += [
        f"| peak RSS, {small:,} → {large:,} events, main process | {main_s:.1f} → {main_l:.1f} MB"
        f" (**{main_l / main_s:.2f}×**) | ≤ 1.1× |",
        f"| peak RSS, pool processes | ≤ {pool_s:.1f} → ≤ {pool_l:.1f} MB ({pool_l / pool_s:.2f}×) | ≤ 1.1× |",
        f"| {large:,} events: pipeline, first / last tenth | {big.pipeline_per_s:,.0f} events/s,"
        f" {big.first_tenth_per_s:,.0f} / {big.last_tenth_per_s:,.0f}/s; ceiling {big.ceiling_per_s:,.0f}/s"
        f" at the start, {big.ceiling_end_per_s:,.0f}/s at the end | no decline |",
    ]
    return "\n".join(rows) + "\n"


def _or(value: float | None) -> str:
    return "unknown" if value is None else f"{value:,.0f}"
