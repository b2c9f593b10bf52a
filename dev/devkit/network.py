"""`bench --latency-ms`: the pipeline with a network between it and SQS and PostgreSQL.

For each latency and each worker pool size, on one stack, one after the other: a latency
proxy (dev/devkit/latency.py) in front of LocalStack and one in front of PostgreSQL, each
adding the latency each way (none at 0 ms); the worker and beat are pointed at them
(SQS_ENDPOINT_URL, DATABASE_URL) with WORKER_CONCURRENCY the pool size. The bench
itself (sending, watching rows) talks to both directly: the producer's network is not
the pipeline's. Each such cell measures

- throughput: `events` sent, then drained, first fetch to last row (bench.pipeline_run);
  the worker's CPU per event over its steady part (10% to 90% of the rows), LocalStack's
  calls per 1,000 events over the whole drain, worker start to stop (with one pool
  process, the fetches have received every event before the steady part begins);
- freshness at half of that throughput, for `seconds` (freshness.follow).

The worker's masking key is a fresh one of this run: the development key masks only
against the stack's own endpoints (tasks/pipeline/keys.py), and a proxy is not one.
Beside each figure, what the capacity model (dev/devkit/capacity.py) predicts for the
same latency and pool. The figures go to out/network.json, the table to out/network.md.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import celeryconfig as config
from devkit import bench, capacity, freshness, localstack_requests, seed, stack
from devkit.bench import Figures
from devkit.freshness import Freshness
from devkit.latency import Target, proxied
from tasks.pipeline.keys import KEY_BYTES

LATENCIES_MS = (0, 10, 25)
PROCESSES = (1, 2, 4)
LOOPBACK_CALL_MS = 2.0  # LocalStack's time per call, unloaded, where no 0 ms cell measured it
WAITED = 40.0  # seconds for the last rows of the freshness load: later ones are counted as later


@dataclass
class Cell:
    latency_ms: float
    processes: int
    throughput: Figures
    freshness: Freshness
    batch: float = 0.0  # messages per hand-off: events over the hand-off's SendMessage calls
    carried: dict[str, dict[str, int]] = field(default_factory=dict)  # by each proxy: connections, bytes
    predicted: dict[str, float | str] = field(default_factory=dict)


def sqs_target() -> Target:
    parts = urlsplit(config.SQS_ENDPOINT_URL)
    return Target(host=parts.hostname or "127.0.0.1", port=parts.port or (443 if parts.scheme == "https" else 80))


def database_target(url: str) -> tuple[Target, dict[str, str]]:
    """Where the database listens (TCP or the Unix socket of a socket folder), and the
    rest of what libpq reads in its URL."""
    reading = config.libpq_reading(url)
    host, port = reading.pop("host", ""), reading.pop("port", "") or "5432"
    if not host or host.startswith("/"):
        return Target(path=f"{host or '/tmp'}/.s.PGSQL.{port}"), reading
    return Target(host=host, port=int(port)), reading


def proxied_database_url(port: int, reading: dict[str, str]) -> str:
    user = quote(reading.pop("user", ""), safe="")
    password = reading.pop("password", "")
    auth = f"{user}:{quote(password, safe='')}@" if password else f"{user}@" if user else ""
    database = quote(reading.pop("dbname", ""), safe="")
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in reading.items())
    return f"postgresql://{auth}127.0.0.1:{port}/{database}" + (f"?{query}" if query else "")


@contextlib.contextmanager
def network(latency_ms: float, carried: dict[str, dict[str, int]]) -> Iterator[dict[str, str]]:
    """The workers' settings for a network of `latency_ms` each way: proxies to
    LocalStack and PostgreSQL while the block runs (none at 0); what each carried goes
    to `carried` at the end."""
    key = {"MASKING_KEYS": "1:" + base64.b64encode(os.urandom(KEY_BYTES)).decode()}
    if not latency_ms:
        yield {**key, "DATABASE_URL": config.database_url()}
        return
    target, reading = database_target(config.database_url())
    with proxied(sqs_target(), latency_ms) as sqs, proxied(target, latency_ms) as database:
        yield {
            **key,
            "SQS_ENDPOINT_URL": f"http://127.0.0.1:{sqs.port}",
            "DATABASE_URL": proxied_database_url(database.port, reading),
        }
    carried.update(sqs=sqs.carried, postgresql=database.carried)


def measure_cell(latency_ms: float, processes: int, events: int, seconds: float) -> Cell:
    carried: dict[str, dict[str, int]] = {}
    with network(latency_ms, carried) as overrides:
        overrides["WORKER_CONCURRENCY"] = str(processes)
        figures = Figures(events)
        bodies = seed.bodies(events)
        seed.send(config.SOURCE_QUEUE, bodies)
        first = localstack_requests.mark()
        bench.pipeline_run(bodies, figures, processes, overrides, send=False)
        calls = localstack_requests.between(first, localstack_requests.mark())
        figures.localstack_calls_per_1000 = localstack_requests.per_thousand(calls, events)
        figures.pipeline_per_s = round(figures.pipeline_per_s, 1)
        half = round(figures.pipeline_per_s / 2, 1)
        fresh = Freshness(rate=half, seconds=seconds, waited=WAITED)
        freshness.follow(fresh, seed.bodies(round(half * seconds), valid_only=True), processes, overrides)
    return Cell(latency_ms, processes, figures, fresh, batch_of(figures), carried)


def batch_of(figures: Figures) -> float:
    """Messages per hand-off: the events over the hand-off's SendMessage calls (0: unknown)."""
    hand_offs = figures.localstack_calls_per_1000.get("sqs.SendMessage")
    return round(1000 / hand_offs, 1) if hand_offs else 0.0


def predict(latency_ms: float, processes: int, calibration: Cell | None) -> dict[str, float | str]:
    """What `dev capacity` says for one replica of `processes` pool processes, each SQS
    call and PostgreSQL round trip `latency_ms` away each way. Calibrated on the 0 ms
    cell of as many processes: the worker's CPU per event, and the time per SQS call on
    the loopback under load that gives the rate measured there (LocalStack's CPU:
    capacity.loopback_call_ms); without it, LOOPBACK_CALL_MS."""
    replica = capacity.Replica(
        pool=processes,
        receivers=capacity.receivers_in_flight(config.FETCH_RECEIVERS, config.FETCH_MAX_BYTES),
        batch_size=config.BATCH_SIZE,
        batch_max_wait_s=config.BATCH_MAX_WAIT_MS / 1000,
        fetches=config.FETCH_MAX_SECONDS / config.FETCH_INTERVAL * config.FETCHES_PER_TICK,
        fetch_seconds=config.FETCH_MAX_SECONDS,
        **({"cpu_us_per_event": calibration.throughput.worker_cpu_us_per_event} if calibration else {}),
    )
    call = LOOPBACK_CALL_MS
    if calibration is not None:
        call = capacity.loopback_call_ms(replica, calibration.throughput.pipeline_per_s)
    latency = capacity.Latency(call, call, capacity.LOOPBACK_DB_MS).added(latency_ms)
    moved = capacity.replica_rate(replica, latency)
    need = capacity.need(moved.per_s, replica, moved)
    # At half the rate LocalStack is far from busy: a call is its unloaded time and the delays.
    quiet = capacity.Latency(LOOPBACK_CALL_MS, LOOPBACK_CALL_MS, capacity.LOOPBACK_DB_MS)
    ages = capacity.freshness(replica, moved.per_s / 2, quiet.added(latency_ms))
    if calibration is not None:  # what the loopback adds that the model has not (its 0 ms error)
        zero = capacity.freshness(replica, calibration.throughput.pipeline_per_s / 2, quiet)
        ages = {
            k: v + max(0.0, calibration.freshness.outside.get(k, v) - zero[k]) for k, v in ages.items() if k != "busy"
        }
        ages["busy"] = capacity.freshness(replica, moved.per_s / 2, quiet.added(latency_ms))["busy"]
    return {
        "per_s": round(moved.per_s),
        "bound": moved.bound,
        "calls_per_1000": round(need.sqs_calls_per_s / need.rate * 1000, 1),
        "batch": round(moved.fetch.batch, 1),
        "cpu_us": replica.cpu_us_per_event,
        "call_ms": latency.low_ms,
        "task_ms": round(moved.task_s * 1000, 1),
        **{f"freshness_{k}": round(v, 3) for k, v in ages.items()},
    }


def calibrated(cells: list[Cell]) -> list[Cell]:
    """Each cell's prediction, the model given the 0 ms cell of as many processes."""
    zero = {c.processes: c for c in cells if c.latency_ms == 0}
    for cell in cells:
        cell.predicted = predict(cell.latency_ms, cell.processes, zero.get(cell.processes))
    return cells


def measure(latencies: list[int], processes: list[int], events: int, seconds: float, out: Path) -> list[Cell]:
    stack.up()
    out.mkdir(parents=True, exist_ok=True)
    cells: list[Cell] = []
    for latency_ms in latencies:
        for count in processes:
            stack.say(f"latency {latency_ms:g} ms each way, {count} worker processes")
            cells = calibrated([*cells, measure_cell(latency_ms, count, events, seconds)])
            (out / "network.json").write_text(json.dumps([asdict(c) for c in cells], indent=2))
    (out / "network.md").write_text(markdown(cells))
    return cells


def markdown(cells: list[Cell]) -> str:
    rows = [
        "| latency each way | worker processes | events/s: measured / predicted (bound) |"
        " calls per 1,000 events: measured / predicted | batch: measured / predicted |"
        " worker CPU per event | freshness at half: rate, p50 / p99 (predicted p50 / p99) |",
        "|---:|---:|---|---|---|---:|---|",
    ]
    for c in cells:
        t, f, p = c.throughput, c.freshness, c.predicted
        calls = t.localstack_calls_per_1000.get("all")
        mark = "*" if c.latency_ms == 0 else ""  # the model's calibration: equal by construction
        rows.append(
            f"| {c.latency_ms:g} ms{mark} | {c.processes} | {t.pipeline_per_s:,.0f} / {p['per_s']:,} ({p['bound']}) |"
            f" {'unknown' if calls is None else f'{calls:,.0f}'} / {p['calls_per_1000']:,.0f} |"
            f" {c.batch:,.0f} / {p['batch']:,.0f} | {t.worker_cpu_us_per_event:,.0f} µs |"
            f" {f.sent_per_s:,.0f}/s{_unseen(f)}: {_quantile(f, 'p50')} / {_quantile(f, 'p99')} s"
            f" ({_predicted_ages(p)}) |"
        )
    if any(c.latency_ms == 0 for c in cells):
        rows.append(
            "\n\\* The model is calibrated on the 0 ms cells: their rate and freshness are predicted as measured."
        )
    return "\n".join(rows) + "\n"


def _predicted_ages(p: dict[str, float | str]) -> str:
    busy = float(p.get("freshness_busy", 0.0))
    if float(p.get("freshness_p99", 0.0)) == float("inf"):
        return f"falls behind: slots {busy:.0%} busy"
    return f"{float(p['freshness_p50']):.2f} / {float(p['freshness_p99']):.2f} s, slots {busy:.0%} busy"


def _quantile(f: Freshness, name: str) -> str:
    """A quantile from outside; "> W" where the events still missing after the wait
    are more than the share above it."""
    sent = round(f.rate * f.seconds)
    above = 1 - int(name[1:]) / 100
    if sent and (sent - f.events) / sent > above:
        return f"> {f.waited:.0f}"
    return f"{f.outside.get(name, float('nan')):.2f}"


def _unseen(f: Freshness) -> str:
    """Events sent whose rows did not appear within the wait: they are not in the quantiles."""
    sent = round(f.rate * f.seconds)
    return f" ({sent - f.events:,} of {sent:,} not yet rows)" if f.events < sent else ""


def load(path: Path) -> list[Cell]:
    """Cells from a run's network.json, to render again (predictions made afresh)."""
    cells = []
    for raw in json.loads(path.read_text()):
        throughput = Figures(**{k: v for k, v in raw["throughput"].items() if k != "ceilings"})
        fresh = Freshness(**raw["freshness"])
        cells.append(Cell(raw["latency_ms"], raw["processes"], throughput, fresh, batch_of(throughput), raw["carried"]))
    return calibrated(cells)
