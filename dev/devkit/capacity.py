"""`dev capacity`: on paper, how many worker replicas a rate needs on real SQS and
PostgreSQL, and which limit the rate reaches first.

One replica moves events as fast as the slowest of these allows. Its CPU: the bench's
worker CPU per event (all the worker's processes) over the replica's cores. Its pool
slots: a fetch holds one for its whole run, and a batch task holds one for its CPU, its
eleven PostgreSQL round trips, its dead letters' SQS call, then its ack and the receive
of the next task (prefetch 1); with no slot beyond the fetches, a slot runs one batch
per fetch (`bench --latency-ms` measured both: docs/performance.md). Its fetches'
round trips: a fetch is a loop (tasks.pipeline.batching.receive_batches) that asks
with up to FETCH_RECEIVERS ReceiveMessage calls at once and waits for the slowest of
them, until the batch is full or its oldest message has waited BATCH_MAX_WAIT_MS, then
publishes the batch task (one more round trip) and deletes the batch's messages on as
many background threads, ten per call. That loop is simulated with each call's latency
drawn from a uniform range (5 to 20 ms by default: real SQS from the same region; a
network's delay each way adds two to every call and PostgreSQL round trip), with
a seeded random generator, so the figures are the same on every run. A fetch is also one
process, so its own share of the CPU per event caps it at one core.

Freshness at half of a replica's rate: a call, half of BATCH_MAX_WAIT_MS (p50) or all of
it (p99), the hand-off, the worker's receive and the batch task; under a steady load
batches hold what arrives in BATCH_MAX_WAIT_MS, and where such small batches outrun the
pool's free slots the age grows without bound (`freshness`).

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
RECEIVE_RESERVE = 1_048_576  # what a fetch counts for a message asked for (tasks/pipeline/batching.py)
HAND_OFF_CALLS = 3  # per batch: SendMessage (the task), the worker's ReceiveMessage of it, DeleteMessage (its ack)
SQS_IN_FLIGHT = 120_000  # a standard queue's in-flight messages, approximately
PG_MAX_CONNECTIONS = 100  # PostgreSQL's default max_connections
PG_SUPERUSER_RESERVED = 3  # its default superuser_reserved_connections
# The fetch's share of the worker's CPU per event, by py-spy (docs/performance.md, after
# this round's levers): the lean calls 15%, the hand-off 8%, its threads and batching ~11%.
FETCH_CPU_SHARE = 0.34
# The batch task's share (mask_and_insert: parsing and masking 21%, writing 11%), same profile.
BATCH_CPU_SHARE = 0.32
# A batch task's round trips to PostgreSQL, each waited for (tasks/pipeline/service.py
# write_batch): BEGIN, the forgotten users' lookup, SAVEPOINT, TRUNCATE, COPY (two: its
# start, then the data), INSERT … ON CONFLICT, RELEASE, the dead-letter note, the ledger
# row, COMMIT. `bench --latency-ms` measured 10.7 (a batch task 0.10 s at 0 ms, 0.63 s
# at 25 ms each way: docs/performance.md).
DB_ROUND_TRIPS = 11
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
    fetch_seconds: float = 3.0  # FETCH_MAX_SECONDS: how long a fetch holds its pool slot


@dataclass(frozen=True)
class Latency:
    """SQS's time per call, drawn uniformly between two bounds."""

    low_ms: float = 5.0
    high_ms: float = 20.0
    db_ms: float = 1.0  # PostgreSQL's round trip

    def draw(self, rng: random.Random) -> float:
        return rng.uniform(self.low_ms, self.high_ms) / 1000

    @property
    def mean_s(self) -> float:
        return (self.low_ms + self.high_ms) / 2000

    def added(self, each_way_ms: float) -> Latency:
        """The same behind a network of `each_way_ms` each way: two more delays a call."""
        return Latency(self.low_ms + 2 * each_way_ms, self.high_ms + 2 * each_way_ms, self.db_ms + 2 * each_way_ms)


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
    bound: str  # what sets it: "CPU", "round trips", "fetch CPU" or "pool"
    cpu_per_s: float
    round_trips_per_s: float
    fetch_cpu_per_s: float  # the fetches' own CPU, one core each at most
    fetch: Fetch
    pool_per_s: float = float("inf")  # the batch tasks' pool slots
    task_s: float = 0.0  # one batch task, start to commit


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


def receivers_in_flight(receivers: int, max_held_bytes: int) -> int:
    """The receives a fetch has in flight at once: FETCH_RECEIVERS, unless FETCH_MAX_BYTES
    allows fewer (each message asked for is counted at SQS's 1 MiB, ten a call:
    tasks/pipeline/batching.py). The default 97.7 MiB allows 10, so FETCH_RECEIVERS above
    10 changes nothing unless FETCH_MAX_BYTES (or WORKER_MAX_MEMORY_KB) grows with it."""
    return max(1, min(receivers, ceil(max_held_bytes // RECEIVE_RESERVE / MESSAGES_PER_CALL)))


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


def task_seconds(replica: Replica, latency: Latency, batch: float) -> float:
    """One batch task, start to commit: its CPU, its PostgreSQL round trips, and one SQS
    call for its dead letters."""
    cpu = batch * replica.cpu_us_per_event * BATCH_CPU_SHARE / 1e6
    return cpu + DB_ROUND_TRIPS * latency.db_ms / 1000 + latency.mean_s


def slot_seconds(latency: Latency, task_s: float) -> float:
    """A pool slot's time per batch task: the task, then its ack and the receive of the
    next task message (two SQS calls: one task reserved per process, prefetch 1)."""
    return task_s + 2 * latency.mean_s


def pool_rate(replica: Replica, latency: Latency, fetch: Fetch, task_s: float) -> float:
    """What the pool's slots allow. A fetch holds a slot for its whole run; batch tasks
    get the rest. With no more slots than fetches at once, every slot takes a fetch and
    a batch task in turn (the worker takes the fetch and batch queues in turn), so one
    batch moves per fetch's run."""
    slot = slot_seconds(latency, task_s)
    if replica.pool > replica.fetches:
        return (replica.pool - replica.fetches) * fetch.batch / slot
    return replica.pool * fetch.batch / (replica.fetch_seconds + slot)


def replica_rate(replica: Replica, latency: Latency, seed: int = 1) -> ReplicaRate:
    """A replica's rate, and what sets it."""
    fetch = simulate_fetch(replica, latency, seed)
    task_s = task_seconds(replica, latency, fetch.batch)
    limits = {
        "CPU": replica.cores * 1e6 / replica.cpu_us_per_event,
        "round trips": min(replica.fetches, replica.pool) * fetch.per_s,
        "fetch CPU": replica.fetches * 1e6 / (replica.cpu_us_per_event * FETCH_CPU_SHARE),
        "pool": pool_rate(replica, latency, fetch, task_s),
    }
    bound = min(limits, key=limits.__getitem__)
    return ReplicaRate(
        limits[bound],
        bound,
        limits["CPU"],
        limits["round trips"],
        limits["fetch CPU"],
        fetch,
        limits["pool"],
        task_s,
    )


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


def _ages(found: dict[str, float]) -> str:
    if found["p99"] == float("inf"):
        return (
            f"falls behind: its batch tasks would need {found['busy']:.0%} of the pool's free slots"
            " (raise WORKER_CONCURRENCY or BATCH_MAX_WAIT_MS)"
        )
    return f"p50 {found['p50']:.2f} s, p99 {found['p99']:.2f} s"


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
        f"  pool slots allow    {moved.pool_per_s:>9,.0f} events/s (a batch task: {moved.task_s * 1000:,.0f} ms,"
        f" {DB_ROUND_TRIPS} PostgreSQL round trips of {latency.db_ms:g} ms)",
        f"  so {moved.per_s:,.0f} events/s, bound by {moved.bound}; a message is in flight {fetch.in_flight_s:.2f} s",
        f"  freshness at half of it ({moved.per_s / 2:,.0f}/s): {_ages(freshness(replica, moved.per_s / 2, latency))}",
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


# --- The bench's network (`bench --latency-ms`): LocalStack behind a latency proxy ------
LOOPBACK_DB_MS = 0.3  # the embedded PostgreSQL's round trip on the loopback, unloaded


def loopback_call_ms(replica: Replica, measured_per_s: float, seed: int = 1) -> float:
    """The time per SQS call on the loopback under the pipeline's own load (LocalStack's
    CPU makes it long: its one process serves every call in turn) that makes this model
    give the rate measured at 0 ms: the model calibrated there, to predict the rate
    behind a proxy, where each call takes two delays more (`Latency.added`)."""
    low, high = 0.1, 2000.0
    for _ in range(40):  # bisection: the rate falls as the calls slow down
        call = (low + high) / 2
        if replica_rate(replica, Latency(call, call, LOOPBACK_DB_MS), seed).per_s > measured_per_s:
            low = call
        else:
            high = call
    return round((low + high) / 2, 2)


def freshness(replica: Replica, rate: float, latency: Latency) -> dict[str, float]:
    """An event's age at its commit under a steady `rate`, p50 and p99: SQS answers
    the fetch's waiting receive (a call's time: half of it for the median), the event
    waits for its batch's oldest to have waited BATCH_MAX_WAIT_MS (at half the rate a
    batch rarely fills first: half of that wait for the median, all of it and a round of
    receives for p99), then the hand-off, the worker's receive of the task and the task.
    With less than one pool slot beyond the fetches, a batch task also waits for a
    fetch to end: up to FETCH_MAX_SECONDS (half of it for the median).

    Under a steady load a batch holds what arrives in BATCH_MAX_WAIT_MS, far fewer than
    a backlog's, and each costs its pool slot the same round trips: where the slots
    move fewer events in such batches than arrive (`pool_rate`), the backlog of batch
    tasks grows for as long as the load lasts, and so does the age (infinite here).
    `busy`: the share of the free slots' time those batch tasks take."""
    batch = min(replica.batch_size, rate * replica.batch_max_wait_s)
    busy = rate / pool_rate(replica, latency, Fetch(rate, batch, 1, 0), task_seconds(replica, latency, batch))
    if busy >= 1:
        return {"p50": float("inf"), "p99": float("inf"), "busy": busy}
    call = latency.mean_s
    fixed = 2 * call + task_seconds(replica, latency, batch)
    slot = replica.fetch_seconds if replica.pool < replica.fetches + 1 else 0.0
    wait = replica.batch_max_wait_s
    return {"p50": call / 2 + wait / 2 + fixed + slot / 2, "p99": call + wait + call + fixed + slot, "busy": busy}
