"""The capacity model (dev/devkit/capacity.py): deterministic, monotonic in the rate, bound
by CPU or by round trips as the figures say, and its command's bad arguments refused."""

from __future__ import annotations

import time
from itertools import pairwise

import pytest

from devkit import capacity
from devkit.capacity import Latency, Replica
from tasks.cli.errors import main

DEFAULT = Replica()  # 187 µs, 2 cores, 8 receivers, batches of 500, 1.5 fetches, 4 pool processes
SQS = Latency(5, 20)


def test_the_same_seed_gives_the_same_figures_in_well_under_a_second() -> None:
    started = time.perf_counter()
    first = capacity.replica_rate(DEFAULT, SQS, seed=3)
    assert time.perf_counter() - started < 1.0
    assert capacity.replica_rate(DEFAULT, SQS, seed=3) == first
    assert capacity.replica_rate(DEFAULT, SQS, seed=4) != first


def test_a_fetch_waits_for_the_slowest_of_its_receives() -> None:
    """Six rounds of eight calls (the slowest of eight uniform draws averages 18.3 ms), one
    of two (15 ms) and the hand-off (12.5 ms): 500 messages in 137.5 ms."""
    fetch = capacity.simulate_fetch(DEFAULT, SQS)
    assert fetch.rounds == 7 and fetch.batch == 500
    assert fetch.per_s == pytest.approx(500 / 0.1375, rel=0.02)
    assert 0.1 < fetch.in_flight_s < 0.25


def test_with_few_cores_a_replica_is_bound_by_cpu() -> None:
    moved = capacity.replica_rate(Replica(cores=0.5), SQS)
    assert moved.bound == "CPU"
    assert moved.per_s == pytest.approx(0.5 * 1e6 / 187)


def test_with_many_cores_a_replica_is_bound_by_round_trips_and_slower_sqs_moves_less() -> None:
    fast = capacity.replica_rate(Replica(cores=16), SQS)
    slow = capacity.replica_rate(Replica(cores=16), Latency(40, 60))
    assert fast.bound == slow.bound == "round trips"
    assert fast.per_s == pytest.approx(1.5 * fast.fetch.per_s)
    assert slow.per_s < fast.per_s / 2


def test_more_receivers_move_more_until_the_fetch_process_cpu_binds() -> None:
    rates = [capacity.replica_rate(Replica(cores=16, receivers=n, batch_size=2000), SQS) for n in (1, 8, 64)]
    assert rates[0].per_s < rates[1].per_s < rates[2].per_s
    assert rates[2].bound == "fetch CPU"


def test_a_batch_that_fills_slowly_is_handed_off_after_its_wait() -> None:
    """One receive of ten per 20 ms: 260 ms after the first receipt (13 more rounds), past
    BATCH_MAX_WAIT_MS's 250, the batch goes with 140 messages."""
    fetch = capacity.simulate_fetch(Replica(receivers=1), Latency(20, 20))
    assert fetch.batch == 140 and fetch.rounds == 14


def test_everything_a_rate_needs_grows_with_it() -> None:
    moved = capacity.replica_rate(DEFAULT, SQS)
    needs = [capacity.need(rate, DEFAULT, moved) for rate in (1_000, 10_000, 100_000, 1_000_000)]
    for smaller, larger in pairwise(needs):
        assert smaller.replicas <= larger.replicas
        assert smaller.sqs_calls_per_s < larger.sqs_calls_per_s
        assert smaller.in_flight < larger.in_flight
        assert smaller.connections <= larger.connections
    ten_thousand = needs[1]
    # receives and deletes of ten, and three calls per batch of 500 for the hand-off
    assert ten_thousand.sqs_calls_per_s == pytest.approx(1_000 + 1_000 + 3 * 20)
    assert ten_thousand.connections == ten_thousand.replicas * 4


def test_limits_come_in_the_order_a_growing_rate_reaches_them() -> None:
    moved = capacity.replica_rate(DEFAULT, SQS)
    reached = capacity.limits(DEFAULT, moved, 1.5, None)
    assert [limit.rate for limit in reached] == sorted(limit.rate for limit in reached)
    assert reached[0].what.startswith("fetch schedule")  # with one fetch a tick, whatever the replicas
    connections = next(limit for limit in reached if limit.what.startswith("PostgreSQL connections"))
    assert connections.rate == pytest.approx(24 * moved.per_s)  # 97 usable connections, 4 a replica
    assert capacity.limits(DEFAULT, moved, 1.5, 1_000)[0].what.startswith("PostgreSQL write rate")


def test_the_report_names_each_rate_and_the_first_limit() -> None:
    moved = capacity.replica_rate(DEFAULT, SQS)
    needs = [capacity.need(rate, DEFAULT, moved) for rate in capacity.RATES]
    text = capacity.report(DEFAULT, SQS, moved, needs, capacity.limits(DEFAULT, moved, 1.5, None))
    assert all(f"{rate:,}" in text for rate in capacity.RATES)
    assert "bound by round trips" in text and "fetch schedule" in text


def test_the_command_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dev", "capacity", "--cpu-us", "187", "--rates", "10000"]) == 0
    out = capsys.readouterr().out
    assert "10,000" in out and "limits, in the order" in out


@pytest.mark.parametrize(
    "args",
    [
        ["dev", "capacity", "--cpu-us", "0"],
        ["dev", "capacity", "--rtt-min-ms", "30"],  # above --rtt-max-ms
        ["dev", "capacity", "--rates", "10k"],
        ["dev", "capacity", "--receivers", "65"],
        ["dev", "writers", "--writers", "0,2"],
        ["dev", "writers", "--writers", "a"],
        ["dev", "writers", "--seconds", "0"],
    ],
    ids=" ".join,
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    said = capsys.readouterr().err.strip()
    assert len(said.splitlines()) == 1 and said.startswith("usage:")


def test_a_network_adds_two_delays_to_every_call_and_round_trip() -> None:
    far = Latency(5, 20, 1).added(25)
    assert (far.low_ms, far.high_ms, far.db_ms) == (55, 70, 51)


def test_a_pool_no_larger_than_its_fetches_moves_one_batch_per_fetch() -> None:
    """One pool process: the fetch holds the slot for FETCH_MAX_SECONDS, then one batch
    task runs (the worker takes the fetch and batch queues in turn), as measured on the
    bench (docs/performance.md, the network table)."""
    one = capacity.replica_rate(Replica(pool=1), SQS)
    assert one.bound == "pool"
    # the slot's fetch, then one batch task, its ack and the receive of the next task
    assert one.per_s == pytest.approx(one.fetch.batch / (3.0 + one.task_s + 2 * SQS.mean_s))
    assert capacity.replica_rate(Replica(pool=4), SQS).bound != "pool"


def test_a_far_database_makes_batch_tasks_hold_their_slots_longer() -> None:
    near, far = (capacity.replica_rate(DEFAULT, Latency(5, 20, db)) for db in (1, 51))
    assert far.task_s - near.task_s == pytest.approx(capacity.DB_ROUND_TRIPS * 0.050)
    assert far.pool_per_s < near.pool_per_s


def test_the_loopback_call_time_is_the_one_that_gives_the_rate_measured_at_0_ms() -> None:
    call = capacity.loopback_call_ms(DEFAULT, 800)
    measured = capacity.replica_rate(DEFAULT, Latency(call, call, capacity.LOOPBACK_DB_MS))
    assert measured.per_s == pytest.approx(800, rel=0.01)
    behind = capacity.replica_rate(DEFAULT, Latency(call, call, capacity.LOOPBACK_DB_MS).added(10))
    assert behind.per_s < measured.per_s


def test_freshness_at_half_the_rate_grows_with_the_latency_and_without_bound_with_one_slot() -> None:
    near, far = (capacity.freshness(DEFAULT, 1000, lat) for lat in (SQS, SQS.added(25)))
    assert near["p50"] < near["p99"] and near["p50"] < far["p50"] and near["p99"] < far["p99"]
    one = Replica(pool=1)  # one batch of a quarter second's events per fetch of 3 s: it falls behind
    behind = capacity.freshness(one, 100, SQS)
    assert behind["p50"] == behind["p99"] == float("inf") and behind["busy"] > 1


def test_fetch_max_bytes_caps_the_receives_in_flight() -> None:
    """Each message asked for counts as 1 MiB: the default 97.7 MiB allows ten calls of ten."""
    assert capacity.receivers_in_flight(8, 102_400_000) == 8
    assert capacity.receivers_in_flight(16, 102_400_000) == 10
    assert capacity.receivers_in_flight(16, 200_000_000) == 16
