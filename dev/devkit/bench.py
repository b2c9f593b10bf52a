"""`bench`: the pipeline's throughput against the best multi-client ceiling, in one run.

(a) The ceiling: 1, 2 and 4 bare client processes draining the same LocalStack
(devkit.ceiling); the best of them is the bar. (b) The pipeline: worker and beat
processes, from the first fetch to the last row committed, and the worker processes' CPU
per event over the steady part (10% to 90% of the events). (c) The best ceiling again at
the end, since LocalStack slows down as it handles more messages. Also the time per
stage on real batches, the peak RSS of every worker process, the figures as JSON and
throughput over time as PNG. It prints figures; it asserts nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import psutil
from tqdm import tqdm

import celeryconfig as config
from devkit import ceiling, localstack_requests, runner, seed, stack
from devkit.ceiling import Ceiling
from devkit.localstack_requests import Mark
from devkit.proc import CpuMeter, peak_rss
from tasks.broker import aws
from tasks.pipeline import store
from tasks.pipeline.source import Received, SourceQueue

T = TypeVar("T")

CEILING_QUEUE = ceiling.QUEUE


@dataclass
class Figures:
    events: int
    ceilings: list[Ceiling] = field(default_factory=list)
    ceiling_per_s: float = 0.0  # the best of `ceilings`
    ceiling_end_per_s: float = 0.0  # the best client count again, after the pipeline
    pipeline_per_s: float = 0.0
    ratio: float = 0.0
    worker_cpu_us_per_event: float = 0.0  # steady part: 10% to 90% of the events
    localstack_cpu_us_per_event: float | None = None  # LocalStack's, over the same steady part
    localstack_calls_per_1000: dict[str, float] = field(default_factory=dict)  # the same, by operation
    first_tenth_per_s: float = 0.0
    last_tenth_per_s: float = 0.0
    stage_ms_per_batch: dict[str, float] = field(default_factory=dict)
    receive_call_cpu_us: dict[str, float] = field(default_factory=dict)  # by client, ten messages
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    series: list[tuple[float, int]] = field(default_factory=list)


def stages(bodies: list[str]) -> dict[str, float]:
    """Milliseconds per stage for one batch, measured on the real services."""
    from tasks.pipeline.service import pipeline, prepare, source_queue

    size = min(config.BATCH_SIZE, len(bodies))
    seed.send(config.SOURCE_QUEUE, bodies[:size])
    timings: dict[str, float] = {}

    def timed(name: str, work: Callable[[], T]) -> T:
        started = time.perf_counter()
        result = work()
        timings[name] = round((time.perf_counter() - started) * 1000, 2)
        return result

    source = source_queue()
    received = timed("receive", lambda: _receive_all(source, size))
    timed(
        "hand-off",
        lambda: aws.client("sqs").send_message(
            QueueUrl=aws.queue_url(CEILING_QUEUE), MessageBody=json.dumps([r.message.as_args() for r in received])
        ),
    )
    ready, _ = timed("parse and mask", lambda: prepare([r.message for r in received], pipeline().masker))
    rows = [p.row for p in ready]
    conn = store.connect_writer(config.database_url())
    with conn, conn.cursor() as cur:
        timed("insert", lambda: store.insert_rows(cur, rows))
        conn.rollback()
    conn.close()
    timed("delete", lambda: source.delete(received))
    return timings


def _receive_all(source: SourceQueue, size: int) -> list[Received]:
    received: list[Received] = []
    while len(received) < size and (got := source.receive_up_to(size - len(received))):
        received += got
    return received


class SteadyPart:
    """The steady part of a run, from 10% to 90% of the events committed: the worker's and
    LocalStack's CPU over it, and LocalStack's calls."""

    def __init__(self, events: int, worker: psutil.Process) -> None:
        self.bounds = (0.1 * events, 0.9 * events)
        self.worker, self.localstack = CpuMeter(worker), CpuMeter(stack.localstack_process())
        self.done: list[int] = []
        self.marks: list[Mark | None] = []

    def look(self, done: int) -> None:
        if len(self.done) == 2 or done < self.bounds[len(self.done)]:
            return
        for meter in (self.worker, self.localstack):
            if self.done:
                meter.stop()
            else:
                meter.start()
        self.done.append(done)
        self.marks.append(localstack_requests.mark())

    def record(self, figures: Figures) -> None:
        """Into `figures`; nothing when both bounds were passed at one look (a tiny run)."""
        events = self.done[1] - self.done[0] if len(self.done) == 2 else 0
        if events <= 0:
            return
        figures.worker_cpu_us_per_event = self.worker.per_event(events) or 0.0
        figures.localstack_cpu_us_per_event = self.localstack.per_event(events)
        calls = localstack_requests.between(self.marks[0], self.marks[1])
        figures.localstack_calls_per_1000 = localstack_requests.per_thousand(calls, events)


def pipeline_run(
    bodies: list[str],
    figures: Figures,
    concurrency: int | None = None,
    overrides: dict[str, str] | None = None,
    send: bool = True,
) -> None:
    """Send `bodies` (unless sent already), then drain them with a worker (of
    `concurrency` pool processes, else WORKER_CONCURRENCY) and beat, whose environment
    `overrides` amends."""
    if send:
        seed.send(config.SOURCE_QUEUE, bodies)
    conn = store.connect(config.database_url())
    before = store.totals(conn)["received"]
    commands = {"worker": runner.worker_command(concurrency=concurrency), "beat": runner.beat_command()}
    with runner.processes(commands, overrides) as running, tqdm(total=len(bodies), desc="pipeline", unit="ev") as bar:
        worker = psutil.Process(running["worker"].pid)
        steady = SteadyPart(len(bodies), worker)
        while aws.queue_depth(config.SOURCE_QUEUE)["in_flight"] == 0:  # until the first fetch
            time.sleep(0.05)
        started = time.monotonic()
        done = 0
        while done < len(bodies):
            time.sleep(0.25)
            done = store.totals(conn)["received"] - before
            bar.update(done - bar.n)
            figures.series.append((round(time.monotonic() - started, 2), done))
            steady.look(done)
        elapsed = time.monotonic() - started
        figures.peak_rss_mb = peak_rss(worker)
    conn.close()
    figures.pipeline_per_s = len(bodies) / elapsed
    steady.record(figures)
    figures.first_tenth_per_s, figures.last_tenth_per_s = tenth_rates(figures.series, len(bodies))


def tenth_rates(series: list[tuple[float, int]], events: int) -> tuple[float, float]:
    """Events per second over the first and the last tenth of the events."""

    def when(count: float) -> float:
        return next(t for t, done in series if done >= count)

    first = events / 10 / max(when(events / 10), 1e-3)
    last = events / 10 / max(series[-1][0] - when(events * 0.9), 1e-3)
    return round(first, 1), round(last, 1)


def chart(figures: Figures, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = 8  # samples: a 2-second window smooths the batch-sized steps
    points = figures.series
    times = [t for t, _ in points[window:]]
    rates = [(b - a) / (tb - ta) for (ta, a), (tb, b) in zip(points, points[window:], strict=False)]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(times, rates, label="pipeline (2 s window)")
    ax.axhline(figures.ceiling_per_s, color="grey", linestyle="--", label="best multi-client ceiling")
    ax.set_xlabel("seconds")
    ax.set_ylabel("events per second")
    ax.set_title(f"login pipeline, {figures.events:,} events")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def bench(events: int, out: Path) -> Figures:
    stack.up()
    bodies = seed.bodies(events)
    sample = bodies[: ceiling.SAMPLE_EVENTS]
    figures = Figures(events)
    figures.ceilings = ceiling.measure_all(sample)
    best = ceiling.best(figures.ceilings)
    figures.ceiling_per_s = best.per_s
    figures.stage_ms_per_batch = stages(bodies)
    pipeline_run(bodies, figures)
    figures.ceiling_end_per_s = ceiling.measure(sample, best.clients).per_s
    figures.receive_call_cpu_us = ceiling.call_cpu_us(sample)
    figures.pipeline_per_s = round(figures.pipeline_per_s, 1)
    figures.ratio = round(figures.pipeline_per_s / figures.ceiling_per_s, 2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(asdict(figures), indent=2))
    chart(figures, out / "throughput.png")
    return figures


def microseconds(value: float | None) -> str:
    """A CPU figure as the reports print it."""
    return "unknown" if value is None else f"{value:,.0f} µs"


def _calls(per_1000: dict[str, float]) -> str:
    return ", ".join(f"{op} {n:g}" for op, n in per_1000.items()) or "unknown (no LocalStack log, or no steady part)"


def report(figures: Figures, out: Path) -> str:
    best = ceiling.best(figures.ceilings)
    clients = ", ".join(
        f"{c.clients}: {c.per_s:,.0f}/s ({c.cpu_us_per_event:.0f} µs CPU/event)" for c in figures.ceilings
    )
    lines = [
        f"events                 {figures.events:,}",
        f"ceiling by clients     {clients}",
        f"ceiling (best)         {figures.ceiling_per_s:,.0f} events/s at the start,"
        f" {figures.ceiling_end_per_s:,.0f} at the end",
        f"pipeline (end to end)  {figures.pipeline_per_s:,.0f} events/s"
        f" (first tenth {figures.first_tenth_per_s:,.0f}/s, last tenth {figures.last_tenth_per_s:,.0f}/s)",
        f"ratio                  {figures.ratio:.2f}x the best ceiling",
        f"worker CPU             {figures.worker_cpu_us_per_event:.0f} µs per event (steady part)",
        f"LocalStack's CPU       {microseconds(figures.localstack_cpu_us_per_event)} per event under the pipeline"
        f" (steady part), {microseconds(best.localstack_cpu_us_per_event)} under the best ceiling's clients",
        "LocalStack's calls per 1,000 events: pipeline " + _calls(figures.localstack_calls_per_1000),
        "                                     best ceiling " + _calls(best.localstack_calls_per_1000),
        "time per batch of {} (ms): {}".format(
            config.BATCH_SIZE, ", ".join(f"{k} {v}" for k, v in figures.stage_ms_per_batch.items())
        ),
        "CPU per ReceiveMessage of ten (µs): " + ", ".join(f"{k} {v}" for k, v in figures.receive_call_cpu_us.items()),
        "peak RSS (MB): " + ", ".join(f"{k} {v}" for k, v in figures.peak_rss_mb.items()),
        f"figures: {out / 'bench.json'}   chart: {out / 'throughput.png'}",
    ]
    return "\n".join(lines)
