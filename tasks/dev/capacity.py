"""`dev capacity`: on paper, how many worker replicas a rate needs on real SQS and
PostgreSQL, and which limit the rate reaches first.

One replica moves events as fast as the slower of two allows. Its CPU: the bench's
worker CPU per event (all the worker's processes) over the replica's cores. Its fetches'
round trips: a fetch is a loop (tasks.pipeline.batching.receive_batches) that asks
with up to FETCH_RECEIVERS ReceiveMessage calls at once and waits for the slowest of
them, until the batch is full or its oldest message has waited BATCH_MAX_WAIT_MS, then
publishes the batch task (one more round trip) and deletes the batch's messages on as
many background threads, ten per call. That loop is simulated with each call's latency
drawn from a uniform range (5 to 20 ms by default: real SQS from the same region), with
a seeded random generator, so the figures are the same on every run. A fetch is also one
process, so its own share of the CPU per event caps it at one core.

From a replica's rate follow, for a target rate: the replicas, the SQS calls per second
(receive and delete of ten, and per batch the hand-off: the task's SendMessage, the
worker's ReceiveMessage of it and its DeleteMessage; the batch's three task events are
SNS publishes, not counted), the messages in flight in login-queue and the PostgreSQL
connections (one per pool process). Then each limit, at the rate where it is reached,
in order:

- the fetch schedule: beat starts FETCHES_PER_TICK fetches every FETCH_INTERVAL, each
  lasting up to FETCH_MAX_SECONDS, so about 1.5 times FETCHES_PER_TICK fetches run in all,
  whatever the number of replicas (the per-replica figures assume each replica runs its
  own 1.5: FETCHES_PER_TICK equal to the replicas);
- PostgreSQL connections: max_connections, 100 by default, less the 3 kept for
  superusers (superuser_reserved_connections' default);
- login-queue's in-flight messages: about 120,000 for a standard queue (AWS, "Amazon SQS
  standard queue quotas");
- PostgreSQL's write rate, when given (measured with `dev writers`).

SQS API calls are no limit: a standard queue takes a nearly unlimited number of calls
per second per action (AWS, "Amazon SQS message quotas"); a call carries at most ten
messages (same page), and a message at most 1 MiB (SendMessage's reference).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from math import ceil, floor

RATES = (10_000, 100_000, 1_000_000)
MESSAGES_PER_CALL = 10  # ReceiveMessage and DeleteMessageBatch: at most ten messages
HAND_OFF_CALLS = 3  # per batch: SendMessage (the task), the worker's ReceiveMessage of it, DeleteMessage (its ack)
SQS_IN_FLIGHT = 120_000  # a standard queue's in-flight messages, approximately
PG_MAX_CONNECTIONS = 100  # PostgreSQL's default max_connections
PG_SUPERUSER_RESERVED = 3  # its default superuser_reserved_connections
# The fetch's share of the worker's CPU per event, by py-spy (docs/performance.md, after
# this round's levers): the lean calls 15%, the hand-off 8%, its threads and batching ~11%.
FETCH_CPU_SHARE = 0.34
SIMULATED_BATCHES = 1_000


@dataclass(frozen=True)
class Replica:
    """One worker replica as configured."""

    cpu_us_per_event: float = 187.0
    cores: float = 2.0
    receivers: int = 8  # FETCH_RECEIVERS
    batch_size: int = 500  # BATCH_SIZE
    batch_max_wait_s: float = 0.25  # BATCH_MAX_WAIT_MS
    fetches: float = 1.5  # fetches running at once per replica: FETCH_MAX_SECONDS / FETCH_INTERVAL
    pool: int = 4  # WORKER_CONCURRENCY: one PostgreSQL connection per pool process


@dataclass(frozen=True)
class Latency:
    """SQS's time per call, drawn uniformly between two bounds."""

    low_ms: float = 5.0
    high_ms: float = 20.0

    def draw(self, rng: random.Random) -> float:
        return rng.uniform(self.low_ms, self.high_ms) / 1000


@dataclass(frozen=True)
class Fetch:
    """One fetch's loop, as simulated: round trips alone, no CPU."""

    per_s: float  # events a second
    batch: float  # messages per hand-off, on average
    rounds: float  # rounds of receives per batch, on average
    in_flight_s: float  # receipt to its batch's last delete, on average


@dataclass(frozen=True)
class ReplicaRate:
    per_s: float
    bound: str  # what sets it: "CPU", "round trips" or "fetch CPU"
    cpu_per_s: float
    round_trips_per_s: float
    fetch_cpu_per_s: float  # the fetches' own CPU, one core each at most
    fetch: Fetch


@dataclass(frozen=True)
class Need:
    """What a target rate takes."""

    rate: float
    replicas: int
    sqs_calls_per_s: float
    in_flight: float  # login-queue's messages received and not yet deleted
    connections: int
    db_rows_per_s: float


@dataclass(frozen=True)
class Limit:
    what: str
    rate: float  # events a second at which it is reached


def _fill(rng: random.Random, replica: Replica, latency: Latency, clock: float) -> list[tuple[float, int]]:
    """Rounds of receives until the batch is full or its oldest message has waited
    long enough: when each round returned, and how many messages it brought."""
    rounds: list[tuple[float, int]] = []
    held = 0
    while held < replica.batch_size and not (rounds and clock - rounds[0][0] >= replica.batch_max_wait_s):
        calls = min(replica.receivers, ceil((replica.batch_size - held) / MESSAGES_PER_CALL))
        clock += max(latency.draw(rng) for _ in range(calls))
        got = min(replica.batch_size - held, calls * MESSAGES_PER_CALL)
        rounds.append((clock, got))
        held += got
    return rounds


def _delete(rng: random.Random, threads: list[float], handed_off: float, count: int, latency: Latency) -> float:
    """The batch's DeleteMessageBatch calls on the fetch's delete threads (`threads`:
    when each is free, a heap), from the hand-off on; when the last one returns."""
    last = handed_off
    for _ in range(ceil(count / MESSAGES_PER_CALL)):
        done = max(heapq.heappop(threads), handed_off) + latency.draw(rng)
        heapq.heappush(threads, done)
        last = max(last, done)
    return last


def simulate_fetch(replica: Replica, latency: Latency, seed: int = 1, batches: int = SIMULATED_BATCHES) -> Fetch:
    """One fetch receiving from a deep backlog, batch after batch."""
    rng = random.Random(seed)
    threads = [0.0] * replica.receivers
    clock = message_seconds = 0.0
    moved = rounds = 0
    for _ in range(batches):
        received = _fill(rng, replica, latency, clock)
        count = sum(n for _, n in received)
        clock = received[-1][0] + latency.draw(rng)  # the batch task's SendMessage
        deleted = _delete(rng, threads, clock, count, latency)
        message_seconds += sum(n * (deleted - at) for at, n in received)
        moved, rounds = moved + count, rounds + len(received)
    end = max(clock, *threads)  # deletes slower than receives would show here
    return Fetch(moved / end, moved / batches, rounds / batches, message_seconds / moved)


def replica_rate(replica: Replica, latency: Latency, seed: int = 1) -> ReplicaRate:
    fetch = simulate_fetch(replica, latency, seed)
    limits = {
        "CPU": replica.cores * 1e6 / replica.cpu_us_per_event,
        "round trips": replica.fetches * fetch.per_s,
        "fetch CPU": replica.fetches * 1e6 / (replica.cpu_us_per_event * FETCH_CPU_SHARE),
    }
    bound = min(limits, key=limits.__getitem__)
    return ReplicaRate(limits[bound], bound, limits["CPU"], limits["round trips"], limits["fetch CPU"], fetch)


def need(rate: float, replica: Replica, moved: ReplicaRate) -> Need:
    """Replicas, SQS calls, in-flight messages and connections for `rate` events a second."""
    replicas = ceil(rate / moved.per_s)
    batches = rate / moved.fetch.batch
    return Need(
        rate=rate,
        replicas=replicas,
        sqs_calls_per_s=2 * rate / MESSAGES_PER_CALL + HAND_OFF_CALLS * batches,
        in_flight=rate * moved.fetch.in_flight_s,
        connections=replicas * replica.pool,
        db_rows_per_s=rate,
    )


def limits(replica: Replica, moved: ReplicaRate, scheduled_fetches: float, db_rows_per_s: float | None) -> list[Limit]:
    """Each limit with the rate at which it is reached, the first first."""
    per_fetch = min(moved.fetch.per_s, moved.fetch_cpu_per_s / replica.fetches)
    usable = PG_MAX_CONNECTIONS - PG_SUPERUSER_RESERVED
    found = [
        Limit(
            f"fetch schedule: {scheduled_fetches:g} fetches at once in all"
            " (FETCHES_PER_TICK × FETCH_MAX_SECONDS / FETCH_INTERVAL),"
            " raise FETCHES_PER_TICK with the replicas",
            scheduled_fetches * per_fetch,
        ),
        Limit(
            f"PostgreSQL connections: {usable} of max_connections {PG_MAX_CONNECTIONS}, {replica.pool} per replica",
            floor(usable / replica.pool) * moved.per_s,
        ),
        Limit(f"login-queue in flight: about {SQS_IN_FLIGHT:,} messages", SQS_IN_FLIGHT / moved.fetch.in_flight_s),
    ]
    if db_rows_per_s:
        found.append(Limit("PostgreSQL write rate, as measured", db_rows_per_s))
    return sorted(found, key=lambda limit: limit.rate)


def report(
    replica: Replica,
    latency: Latency,
    moved: ReplicaRate,
    needs: list[Need],
    reached: list[Limit],
) -> str:
    fetch = moved.fetch
    lines = [
        f"one replica: {replica.cores:g} cores at {replica.cpu_us_per_event:g} µs of CPU per event,"
        f" {replica.fetches:g} fetches of {replica.receivers} receives in flight, batches of {replica.batch_size},"
        f" {replica.pool} pool processes; SQS {latency.low_ms:g}-{latency.high_ms:g} ms per call",
        f"  CPU allows          {moved.cpu_per_s:>9,.0f} events/s",
        f"  round trips allow   {moved.round_trips_per_s:>9,.0f} events/s (a fetch: {fetch.per_s:,.0f}/s,"
        f" {fetch.rounds:.1f} rounds of receives per batch of {fetch.batch:,.0f})",
        f"  fetches' CPU allows {moved.fetch_cpu_per_s:>9,.0f} events/s (one process each)",
        f"  so {moved.per_s:,.0f} events/s, bound by {moved.bound}; a message is in flight {fetch.in_flight_s:.2f} s",
        "",
        "  events/s   replicas   SQS calls/s   in flight   PG connections   PG rows/s",
    ]
    lines += [
        f"{n.rate:>10,.0f} {n.replicas:>10,} {n.sqs_calls_per_s:>13,.0f} {n.in_flight:>11,.0f}"
        f" {n.connections:>16,} {n.db_rows_per_s:>11,.0f}"
        for n in needs
    ]
    lines += ["", "limits, in the order a growing rate reaches them:"]
    lines += [f"{limit.rate:>10,.0f}/s  {limit.what}" for limit in reached]
    lines.append("SQS API calls set no limit: a standard queue takes a nearly unlimited number a second, per action")
    return "\n".join(lines)
