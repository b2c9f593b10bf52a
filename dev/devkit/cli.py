"""`python -m tasks dev`: the developer's commands, which the runtime's wheel and image do
not carry: the embedded stack, seed data, run, bench, writers, capacity, faults, conformance,
docs. dev/pyproject.toml registers this group with `python -m tasks` (an entry point).

Each command imports its module only when it runs, so `--help` stays quick.
"""

from __future__ import annotations

from pathlib import Path

import click

from tasks.cli.common import SECONDS, key_ring, say
from tasks.ops.failures import ChildFailed, Exit


@click.group()
def dev() -> None:
    """Development commands: embedded stack, seed data, run, bench, writers, capacity, faults (not in the image)."""


@dev.group()
def stack() -> None:
    """The embedded stack: LocalStack and PostgreSQL as host processes, no Docker."""


@stack.command()
def up() -> None:
    """Start LocalStack (own venv) and PostgreSQL (DATABASE_URL, else a private pgserver in
    STACK_DIR/pgdata); create the queues and the schema; make a development masking key in
    STACK_DIR/masking.keys on first start.

    LocalStack's port is checked first; a failed start stops what it started.
    """
    from devkit import stack as embedded

    embedded.up()


@stack.command()
def down() -> None:
    """Stop the LocalStack and PostgreSQL that `up` started."""
    from devkit import stack as embedded

    embedded.down()


@dev.command()
@click.option(
    "--count", type=click.IntRange(min=1), metavar="N", help="Send N realistic events (anomalies included) instead."
)
def seed(count: int | None) -> None:
    """Send the exercise's 100 events to login-queue, or N realistic ones."""
    import celeryconfig as config
    from devkit import seed as data

    bodies = data.sample_bodies() if count is None else [body for body, _ in data.generate(count)]
    say(f"sent {data.send(config.SOURCE_QUEUE, bodies)} events to {config.SOURCE_QUEUE}")


@dev.command()
@click.option("--drain", is_flag=True, help="Stop once login-queue and the batch queue are empty; print a summary.")
@click.option("--seed", "seed_count", type=click.IntRange(min=0), default=0, metavar="N", help="Seed N events first.")
@click.option("--flower", is_flag=True, help="Also run Flower in drain mode (it always runs otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--timeout",
    type=SECONDS,
    metavar="SECONDS",
    help="With --drain: give up after this long (exit 1).  [default: 900]",
)
def run(drain: bool, seed_count: int, flower: bool, as_json: bool, timeout: float | None) -> int:
    """Worker, beat and Flower on the embedded stack, with progress, until Ctrl-C; with
    --drain, until login-queue and the batch queue are empty, then a summary.

    Stack up first if needed; every port is checked before anything starts. If a process
    exits, the others are stopped and its last log lines shown (exit 4). It rides out a
    database or SQS outage as the workers do, and says so on its progress line.
    """
    if timeout is not None and not drain:
        raise click.UsageError("--timeout needs --drain (a run without it goes on until Ctrl-C)")
    from devkit import runner

    return runner.run(
        drain=drain,
        seed_count=seed_count,
        with_flower=not drain or flower,
        as_json=as_json,
        timeout=900 if timeout is None else timeout,
    )


@dev.command()
@click.option(
    "--events", type=click.IntRange(min=1), default=100_000, show_default=True, metavar="N", help="Events to send."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    default=Path("bench-results"),
    show_default=True,
    help="Folder for bench.json and throughput.png (freshness.json with --rate).",
)
@click.option(
    "--rate",
    callback=lambda ctx, param, value: _rate(value),
    metavar="R",
    help="Instead: send R events/s (or R% of the best ceiling, measured first) and report freshness.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=1, max=3600),
    default=60,
    show_default=True,
    metavar="S",
    help="How long --rate sends.",
)
@click.option(
    "--table",
    is_flag=True,
    help="Every figure of docs/performance.md's table in one run: --events, freshness at 50% and 80%"
    " for --seconds each, memory at 10,000 and --memory-events; writes table.md (about half an hour).",
)
@click.option(
    "--memory-events",
    type=click.IntRange(min=10_001),
    default=1_000_000,
    show_default=True,
    metavar="N",
    help="With --table: the long run whose memory is compared with 10,000 events'.",
)
@click.option(
    "--latency-ms",
    "latencies",
    callback=lambda ctx, param, value: value and _counts(value, 0, 1000, "milliseconds"),
    metavar="MS,MS,...",
    help="Instead: through a proxy adding MS each way to SQS and PostgreSQL, at each latency and --processes:"
    " throughput of --events, calls and worker CPU per event, freshness at half of it for --seconds.",
)
@click.option(
    "--processes",
    default="1,2,4",
    show_default=True,
    metavar="N,N,...",
    callback=lambda ctx, param, value: _counts(value, 1, 64, "worker process counts"),
    help="With --latency-ms: the worker's pool processes (WORKER_CONCURRENCY) to measure.",
)
def bench(
    events: int,
    out: Path,
    rate: str | None,
    seconds: float,
    table: bool,
    memory_events: int,
    latencies: list[int] | None,
    processes: list[int],
) -> None:
    """Throughput against the best ceiling of 1, 2 and 4 bare clients, worker CPU per event,
    time per stage, memory; with --rate, freshness at a steady load; with --latency-ms,
    all of them through a network of that latency (docs/performance.md)."""
    key_ring()
    if sum(map(bool, (table, rate is not None, latencies))) > 1:
        raise click.UsageError("--table, --rate and --latency-ms are separate runs: give one of them")
    if latencies:
        from devkit import network

        cells = network.measure(latencies, processes, events, seconds, out)
        say(network.markdown(cells), nl=False)
        say(f"figures: {out / 'network.json'}   table: {out / 'network.md'}")
        return
    if table:
        from devkit import table as whole

        say(whole.markdown(whole.measure(out, events, memory_events, seconds)), nl=False)
        say(f"table: {out / 'table.md'}")
        return
    if rate is not None:
        from devkit import freshness

        say(freshness.report(freshness.measure(rate, seconds, out)))
        return
    from devkit import bench as measure

    say(measure.report(measure.bench(events, out), out))


def _rate(value: str | None) -> str | None:
    """A rate: events per second, or a share of the ceiling such as 50%."""
    number = (value or "").removesuffix("%")
    try:
        ok = value is None or 0 < float(number) <= (100 if value.endswith("%") else 100_000)
    except ValueError:
        ok = False
    if not ok:
        raise click.BadParameter("give events per second (up to 100,000) or a share of the ceiling, 1% to 100%")
    return value


def _counts(value: str, low: int, high: int, what: str) -> list[int]:
    """Comma-separated whole numbers from `low` to `high`, each once, in the order given."""
    try:
        counts = [int(part) for part in value.split(",")]
    except ValueError:
        counts = []
    if not counts or any(not low <= n <= high for n in counts):
        raise click.BadParameter(f"give {what}, comma-separated, each from {low:,} to {high:,}")
    return list(dict.fromkeys(counts))


@dev.command()
@click.option(
    "--writers",
    "counts",
    default="1,2,4,8,16",
    show_default=True,
    metavar="N,N,...",
    callback=lambda ctx, param, value: _counts(value, 1, 64, "writer counts"),  # max_connections is 100 by default
    help="Writer process counts to measure, one after the other.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.5, max=60),
    default=4,
    show_default=True,
    metavar="S",
    help="How long each writer count writes.",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1, max=10_000), metavar="N", help="Rows per batch.  [default: BATCH_SIZE]"
)
def writers(counts: list[int], seconds: float, batch_size: int | None) -> None:
    """PostgreSQL's insert path with N concurrent batch writers, in a scratch database:
    rows/s, time per batch, CPU per row of the writers and the server.

    Each writer writes batches as a worker's pool process does (store.connect_writer,
    insert_isolating, record_batch, commit); the scratch database is dropped at the end.
    """
    import celeryconfig as config
    from devkit import writers as measure

    url = config.database_url()
    size = batch_size or config.BATCH_SIZE
    runs = measure.measure_all(url, counts, seconds, size, config.STATEMENT_TIMEOUT_MS)
    say(measure.report(runs, measure.server(url), size, seconds))


@dev.command()
@click.option(
    "--cpu-us",
    type=click.FloatRange(min=0, min_open=True),
    default=187,
    show_default=True,
    metavar="US",
    help="Worker CPU per event, all its processes (the bench's figure).",
)
@click.option(
    "--cores",
    type=click.FloatRange(min=0, min_open=True),
    default=2,
    show_default=True,
    metavar="N",
    help="Cores per replica.",
)
@click.option(
    "--receivers",
    type=click.IntRange(min=1, max=64),
    metavar="N",
    help="ReceiveMessage calls in flight per fetch.  [default: FETCH_RECEIVERS]",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=10_000),
    metavar="N",
    help="Messages per batch.  [default: BATCH_SIZE]",
)
@click.option(
    "--fetches",
    type=click.FloatRange(min=0, min_open=True, max=64),
    metavar="F",
    help="Fetches running at once per replica.  [default: FETCH_MAX_SECONDS / FETCH_INTERVAL]",
)
@click.option(
    "--pool",
    type=click.IntRange(min=1, max=256),
    metavar="N",
    help="Pool processes per replica, one PostgreSQL connection each.  [default: WORKER_CONCURRENCY]",
)
@click.option(
    "--rtt-min-ms", type=click.FloatRange(min=0), default=5, show_default=True, metavar="MS", help="SQS's fastest call."
)
@click.option(
    "--rtt-max-ms",
    type=click.FloatRange(min=0),
    default=20,
    show_default=True,
    metavar="MS",
    help="SQS's slowest call.",
)
@click.option(
    "--db-rtt-ms",
    type=click.FloatRange(min=0),
    default=1,
    show_default=True,
    metavar="MS",
    help="PostgreSQL's round trip (a batch task waits for eleven).",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0, max=1000),
    default=0,
    show_default=True,
    metavar="MS",
    help="A network's delay each way, added to every SQS call and PostgreSQL round trip (as `bench --latency-ms`).",
)
@click.option(
    "--db-rows-per-s",
    type=click.FloatRange(min=0, min_open=True),
    metavar="R",
    help="PostgreSQL's write rate (from `dev writers`), to place it among the limits.",
)
@click.option(
    "--rates",
    default="10000,100000,1000000",
    show_default=True,
    metavar="R,R,...",
    callback=lambda ctx, param, value: _counts(value, 1, 100_000_000, "events per second"),
    help="Target rates, events per second.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="The simulation's seed.")
def capacity(
    cpu_us: float,
    cores: float,
    receivers: int | None,
    batch_size: int | None,
    fetches: float | None,
    pool: int | None,
    rtt_min_ms: float,
    rtt_max_ms: float,
    db_rtt_ms: float,
    latency_ms: float,
    db_rows_per_s: float | None,
    rates: list[int],
    seed: int,
) -> None:
    """Worker replicas for a rate on real SQS, by CPU per event and a simulation of the
    fetch's round trips; SQS calls, in-flight messages, PostgreSQL connections, and which
    limit comes first."""
    if rtt_min_ms > rtt_max_ms:
        raise click.UsageError("--rtt-min-ms must not exceed --rtt-max-ms")
    import celeryconfig as config
    from devkit import capacity as model

    per_replica = config.FETCH_MAX_SECONDS / config.FETCH_INTERVAL  # one tick's fetch outlives the tick
    replica = model.Replica(
        cpu_us_per_event=cpu_us,
        cores=cores,
        receivers=model.receivers_in_flight(receivers or config.FETCH_RECEIVERS, config.FETCH_MAX_BYTES),
        batch_size=batch_size or config.BATCH_SIZE,
        batch_max_wait_s=config.BATCH_MAX_WAIT_MS / 1000,
        fetches=fetches or per_replica,
        pool=pool or config.worker_concurrency,
        fetch_seconds=config.FETCH_MAX_SECONDS,
    )
    latency = model.Latency(rtt_min_ms, rtt_max_ms, db_rtt_ms).added(latency_ms)
    moved = model.replica_rate(replica, latency, seed)
    needs = [model.need(rate, replica, moved) for rate in rates]
    reached = model.limits(replica, moved, per_replica * config.FETCHES_PER_TICK, db_rows_per_s)
    say(model.report(replica, latency, moved, needs, reached))


def _passed(outcome: int, what: str) -> None:
    if outcome:
        raise ChildFailed(f"{what} failed (pytest exit status {outcome}); see its output above")


@dev.command()
@click.option("--write-docs", is_flag=True, help="Write the table into docs/reliability.md (only if all pass).")
@click.option(
    "--soak",
    type=click.FloatRange(min=0, min_open=True),
    metavar="MINUTES",
    help="Instead: the randomized soak, faults combined, for MINUTES (docs/reliability.md).",
)
@click.option(
    "--seed", type=int, default=1, show_default=True, help="The soak's seed: the same seed, the same fault schedule."
)
def faults(write_docs: bool, soak: float | None, seed: int) -> None:
    """Run the fault scenarios (tests/test_faults.py) on a fresh test stack; print their table."""
    if soak is not None:
        from devkit import soak as soaking

        if soaking.run(soak, seed):  # its verdict line says why
            raise click.exceptions.Exit(Exit.NEGATIVE)
        return
    from devkit import faults as scenarios

    _passed(scenarios.run(write=write_docs), "a fault scenario")


@dev.command()
@click.option("--per-file-only", is_flag=True, help="Skip the one-session-per-test runs.")
@click.option("--only", metavar="TEXT", help="Only the targets whose path contains TEXT.")
@click.option("--write-docs", is_flag=True, help="Write the table into docs/transport.md.")
@click.option("--fresh", is_flag=True, help="Forget the sessions measured before (they resume otherwise).")
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    metavar="N",
    help="Run the one test --only names (path::class::test) N times; print its pass count.",
)
@click.option(
    "--probe", type=click.IntRange(min=1), metavar="N", help="Time an ETA task and the inspect sent after it, N times."
)
def conformance(
    per_file_only: bool, only: str | None, write_docs: bool, fresh: bool, repeat: int | None, probe: int | None
) -> None:
    """Celery's and kombu's own SQS integration suites, stock kombu against this transport."""
    from devkit import conformance as suites

    if probe:
        _passed(suites.probe(probe), "the probe")
    elif repeat:
        if not only:
            raise click.UsageError("--repeat needs --only path::class::test (the test to repeat)")
        _passed(suites.repeat(only, repeat), "the repeated test")
    else:
        _passed(suites.run(per_test=not per_file_only, only=only, write=write_docs, fresh=fresh), "conformance")


@dev.command()
def docs() -> None:
    """Regenerate the docs' tables made from the code: settings, metrics and commands."""
    from devkit import commands_doc, docs

    written = commands_doc.write()
    say("wrote " + ", ".join(str(path.relative_to(docs.ROOT)) for path in written))
