"""`bench`: the pipeline's throughput against the single-client ceiling, in one run.

(a) The ceiling: one client receiving ten and deleting ten in a tight loop on the same
LocalStack, doing nothing else. (b) The pipeline: worker and beat processes, from the
first fetch to the last row committed. Also the time per stage on real batches, the
peak RSS of every worker process, the figures as JSON and throughput over time as PNG.
It prints figures; it asserts nothing.
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
from tasks.broker import aws
from tasks.dev import runner, seed, stack
from tasks.pipeline import store
from tasks.pipeline.source import Received, SourceQueue

T = TypeVar("T")

CEILING_QUEUE = "bench-ceiling"


@dataclass
class Figures:
    events: int
    ceiling_per_s: float = 0.0
    pipeline_per_s: float = 0.0
    ratio: float = 0.0
    stage_ms_per_batch: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    series: list[tuple[float, int]] = field(default_factory=list)


def ceiling(bodies: list[str]) -> float:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=CEILING_QUEUE)["QueueUrl"]
    sqs.purge_queue(QueueUrl=url)
    seed.send(CEILING_QUEUE, bodies)
    moved, started = 0, time.monotonic()
    with tqdm(total=len(bodies), desc="ceiling ", unit="ev") as bar:
        while got := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
            sqs.delete_message_batch(
                QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]
            )
            moved += len(got)
            bar.update(len(got))
    return moved / (time.monotonic() - started)


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


def peak_rss(process: psutil.Process) -> dict[str, float]:
    """Peak resident memory (VmHWM) of a process and its children, in MB."""
    peaks = {}
    for p in [process, *process.children(recursive=True)]:
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[f"{p.name()}[{p.pid}]"] = round(int(line.split()[1]) / 1024, 1)
        except (OSError, psutil.Error):
            continue
    return peaks


def pipeline_run(bodies: list[str], figures: Figures) -> None:
    seed.send(config.SOURCE_QUEUE, bodies)
    conn = store.connect(config.database_url())
    before = store.totals(conn)["received"]
    commands = {"worker": runner.worker_command(), "beat": runner.beat_command()}
    with runner.processes(commands) as running, tqdm(total=len(bodies), desc="pipeline", unit="ev") as bar:
        while aws.queue_depth(config.SOURCE_QUEUE)["in_flight"] == 0:  # until the first fetch
            time.sleep(0.05)
        started = time.monotonic()
        done = 0
        while done < len(bodies):
            time.sleep(0.25)
            done = store.totals(conn)["received"] - before
            bar.update(done - bar.n)
            figures.series.append((round(time.monotonic() - started, 2), done))
        elapsed = time.monotonic() - started
        figures.peak_rss_mb = peak_rss(psutil.Process(running["worker"].pid))
    conn.close()
    figures.pipeline_per_s = len(bodies) / elapsed


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
    ax.axhline(figures.ceiling_per_s, color="grey", linestyle="--", label="single-client ceiling")
    ax.set_xlabel("seconds")
    ax.set_ylabel("events per second")
    ax.set_title(f"login pipeline, {figures.events:,} events")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def bench(events: int, out: Path) -> Figures:
    stack.up()
    bodies = [b for b, _ in seed.generate(events, seed=int(time.time()))]
    figures = Figures(events)
    figures.ceiling_per_s = round(ceiling(bodies), 1)
    figures.stage_ms_per_batch = stages(bodies)
    pipeline_run(bodies, figures)
    figures.pipeline_per_s = round(figures.pipeline_per_s, 1)
    figures.ratio = round(figures.pipeline_per_s / figures.ceiling_per_s, 2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(asdict(figures), indent=2))
    chart(figures, out / "throughput.png")
    return figures


def report(figures: Figures, out: Path) -> str:
    lines = [
        f"events                 {figures.events:,}",
        f"ceiling (1 client)     {figures.ceiling_per_s:,.0f} events/s",
        f"pipeline (end to end)  {figures.pipeline_per_s:,.0f} events/s",
        f"ratio                  {figures.ratio:.2f}x the ceiling",
        "time per batch of {} (ms): {}".format(
            config.BATCH_SIZE, ", ".join(f"{k} {v}" for k, v in figures.stage_ms_per_batch.items())
        ),
        "peak RSS (MB): " + ", ".join(f"{k} {v}" for k, v in figures.peak_rss_mb.items()),
        f"figures: {out / 'bench.json'}   chart: {out / 'throughput.png'}",
    ]
    return "\n".join(lines)
