"""`dev writers`: PostgreSQL's side of scaling out, the insert path's rows/s with N
concurrent batch writers, measured on the real server.

Each writer process writes batches the way a worker's pool process does: one
connection from `store.connect_writer` (its temporary table, the statement timeout), and
per batch one transaction of `store.insert_isolating` (TRUNCATE, COPY into the
temporary table, INSERT ... ON CONFLICT under a savepoint), `store.record_batch` (the
ledger row, rolled up by init.sql's trigger) and a commit: the transaction of
tasks.pipeline.service.write_batch, without the parsing and masking before it and
with no dead letters. Rows are synthetic masked rows with random UUID message ids, as
SQS's MessageIds are, so the unique index takes them at random places.

The writers of one count start together behind a barrier, after connecting, and write
for a fixed time; the count's tables are emptied before it starts. Everything happens
in a scratch database of this module's own (init.sql applied) on the server of
DATABASE_URL or the embedded stack, dropped at the end. It reports rows/s, time per
batch, the writers' CPU per row, the server backends' CPU per row (when the server runs
on this machine) and how busy the machine's cores were: on a small machine the server
and the writers share the same cores, and the figures say so. It prints figures; it
asserts nothing.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

import psutil
from psycopg2.extensions import make_dsn

from tasks.ops.failures import ChildFailed, describe
from tasks.pipeline import store

PEOPLE = 1_000  # distinct users per writer: logins repeat users, as real ones do
FRESHNESS_S = 0.5  # what each row's freshness is said to be in the ledger row
LOCALES = ("RU", "US", "BR", "DE", None)


@dataclass(frozen=True)
class Server:
    """The server's facts that bound what it can take."""

    version: str
    local: bool  # on this machine: its backends' CPU can be read
    settings: dict[str, str]


@dataclass(frozen=True)
class Written:
    """What one writer process did in its run."""

    rows: int
    batches: int
    cpu_s: float
    server_cpu_s: float | None
    ended: float  # monotonic


@dataclass(frozen=True)
class WriterRun:
    """One writer count's figures."""

    writers: int
    rows: int
    seconds: float
    rows_per_s: float
    batch_ms: float  # mean wall time of one batch's transaction, as a writer saw it
    client_cpu_us_per_row: float
    server_cpu_us_per_row: float | None  # the writers' backends only
    machine_busy: float  # share of all the machine's cores busy during the run
    wal_bytes_per_row: float | None = None  # the server's WAL written during the run, whoever wrote it


def scratch_name() -> str:
    return f"writers_bench_{os.getpid()}"


@contextlib.contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """A database of our own on the server of `url`, with init.sql applied; its
    connection string, dropped afterwards (with any connection left to it)."""
    name = scratch_name()
    _admin(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    _admin(url, f"CREATE DATABASE {name}")
    try:
        scratch = make_dsn(url, dbname=name)
        store.apply_schema(scratch)
        yield scratch
    finally:
        _admin(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _admin(url: str, statement: str) -> None:
    conn = store.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def server(url: str) -> Server:
    conn = store.connect(url)
    try:
        with conn.cursor() as cur:
            shown = {}
            for name in ("server_version", "max_connections", "fsync", "synchronous_commit", "shared_buffers"):
                cur.execute(f"SHOW {name}")
                shown[name] = str(store.one_row(cur)[0])
        return Server(shown.pop("server_version"), _is_local(conn), shown)
    finally:
        conn.close()


def _is_local(conn: store.Connection) -> bool:
    """A Unix socket or the loopback: the server's processes are this machine's."""
    host = conn.info.host or ""
    return host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")


def people(rng: random.Random, count: int = PEOPLE) -> list[tuple[str, str, str, str, str | None, int]]:
    """Users as masked rows carry them: user id, device type, ip and device tokens
    (`h1:` and 43 characters, the length of a masked value), locale, app version."""
    return [
        (
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            rng.choice(("ios", "android")),
            f"h1:{rng.randbytes(32).hex()[:43]}",
            f"h1:{rng.randbytes(32).hex()[:43]}",
            rng.choice(LOCALES),
            rng.randrange(10_000_000),
        )
        for _ in range(count)
    ]


def batch(rng: random.Random, users: Sequence[tuple[Any, ...]], size: int, day: date) -> list[store.MaskedRow]:
    """`size` rows, each a fresh message id (a random UUID) for a login of a known user."""
    rows = []
    for _ in range(size):
        user_id, device_type, ip, device, locale, version = rng.choice(users)
        message_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        rows.append(store.MaskedRow(message_id, user_id, device_type, ip, device, locale, version, day))
    return rows


def write(conn: store.Connection, rows: Sequence[store.MaskedRow]) -> int:
    """One batch in one transaction, as the worker writes it; how many rows were new."""
    started = time.monotonic()
    with conn.cursor() as cur:
        inserted, refused = store.insert_isolating(cur, rows)
        counts = store.BatchCounts(
            received=len(rows),
            inserted=len(inserted),
            duplicates=len(rows) - len(inserted) - len(refused),
            dead_lettered=len(refused),
        )
        times = store.BatchTimes(time.monotonic() - started, [FRESHNESS_S] * len(inserted))
        store.record_batch(cur, None, counts, times)
    conn.commit()
    return len(inserted)


def _backend(conn: store.Connection, local: bool) -> psutil.Process | None:
    """The server process of this connection, if the server is on this machine."""
    if not local:
        return None
    try:
        return psutil.Process(conn.get_backend_pid())
    except psutil.Error:
        return None


def _cpu(process: psutil.Process | None) -> float | None:
    if process is None:
        return None
    try:
        times = process.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def _write_for(url: str, size: int, timeout_ms: int, seconds: float, barrier: Any, results: Any) -> None:
    """One writer process: connect, wait for the others, write batches for `seconds`."""
    try:
        conn = store.connect_writer(url, timeout_ms)
        rng = random.Random()
        users, day = people(rng), date.today()
        backend = _backend(conn, _is_local(conn))
        barrier.wait()
        started, cpu, server_cpu = time.monotonic(), time.process_time(), _cpu(backend)
        rows = batches = 0
        while time.monotonic() - started < seconds:
            rows += write(conn, batch(rng, users, size, day))
            batches += 1
        ended, used = time.monotonic(), time.process_time() - cpu
        after = _cpu(backend)
        server_used = after - server_cpu if after is not None and server_cpu is not None else None
        conn.close()
        results.put(Written(rows, batches, used, server_used, ended))
    except threading.BrokenBarrierError:
        return  # another writer failed, or the parent gave up: it reports that
    except Exception as exc:
        barrier.abort()
        results.put(describe(exc).line)


def measure(url: str, writers: int, seconds: float, size: int, timeout_ms: int) -> WriterRun:
    """`writers` processes started together, each writing batches of `size` for `seconds`."""
    spawn = multiprocessing.get_context("spawn")  # no connection crosses a fork
    barrier, results = spawn.Barrier(writers + 1), spawn.Queue()
    args = (url, size, timeout_ms, seconds, barrier, results)
    children = [spawn.Process(target=_write_for, args=args, daemon=True) for _ in range(writers)]
    for child in children:
        child.start()
    try:
        try:
            barrier.wait(timeout=120)
        except threading.BrokenBarrierError:
            raise ChildFailed(f"a writer process failed before the start: {_first_failure(results)}") from None
        psutil.cpu_percent()  # from here on
        started = time.monotonic()
        done = [_result(results, seconds + 120) for _ in children]
        busy = psutil.cpu_percent() / 100
    finally:
        for child in children:
            child.join(timeout=10)
            child.kill()
            child.join(timeout=5)
    return _figures(writers, started, _written(done), busy)


def _result(results: Any, timeout: float) -> Any:
    try:
        return results.get(timeout=timeout)
    except queue.Empty:
        raise ChildFailed(f"a writer process gave no figures within {timeout:.0f} s") from None


def _first_failure(results: Any) -> str:
    with contextlib.suppress(Exception):
        return str(results.get(timeout=5))
    return "it ended without saying why"


def _written(done: list[Any]) -> list[Written]:
    failures = [d for d in done if not isinstance(d, Written)]
    if failures:
        raise ChildFailed(f"a writer process failed: {failures[0]}")
    return done


def _figures(writers: int, started: float, done: list[Written], busy: float) -> WriterRun:
    rows = sum(d.rows for d in done)
    seconds = max(d.ended for d in done) - started
    batches = sum(d.batches for d in done)
    server_cpu = [d.server_cpu_s for d in done]
    per_row = 1e6 / max(rows, 1)
    return WriterRun(
        writers=writers,
        rows=rows,
        seconds=round(seconds, 2),
        rows_per_s=round(rows / seconds, 1),
        batch_ms=round(sum(d.ended - started for d in done) / max(batches, 1) * 1000, 2),
        client_cpu_us_per_row=round(sum(d.cpu_s for d in done) * per_row, 1),
        server_cpu_us_per_row=None if None in server_cpu else round(sum(s or 0.0 for s in server_cpu) * per_row, 1),
        machine_busy=round(busy, 2),
    )


def empty(url: str) -> None:
    """Empty the scratch database's tables, so that each writer count starts alike."""
    conn = store.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("TRUNCATE user_logins, ingest_batches")
        conn.commit()
    finally:
        conn.close()


def measure_all(url: str, counts: Sequence[int], seconds: float, size: int, timeout_ms: int) -> list[WriterRun]:
    """Each writer count in turn, in a scratch database on the server of `url`."""
    with scratch_database(url) as scratch:
        runs = []
        for writers in counts:
            empty(scratch)
            wal = wal_position(scratch)
            run = measure(scratch, writers, seconds, size, timeout_ms)
            runs.append(replace(run, wal_bytes_per_row=round((wal_position(scratch) - wal) / max(run.rows, 1), 1)))
        return runs


def wal_position(url: str) -> int:
    """Where the server's write-ahead log is, in bytes: for all its databases."""
    conn = store.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
            return int(store.one_row(cur)[0])
    finally:
        conn.close()


def report(runs: list[WriterRun], facts: Server, size: int, seconds: float) -> str:
    cores = os.cpu_count() or 1
    where = "on this machine" if facts.local else "elsewhere (its CPU is not read)"
    settings = ", ".join(f"{k} {v}" for k, v in facts.settings.items())
    lines = [
        f"PostgreSQL {facts.version}, {where}: {settings}",
        f"this machine: {cores} cores, shared by the server, the writer processes and whatever else runs"
        f" (load average {os.getloadavg()[0]:.2f} at the end)",
        f"batches of {size} rows, one transaction each as the worker writes them"
        f" (COPY, INSERT ... ON CONFLICT, ledger row, commit), {seconds:g} s per writer count",
        "writers     rows/s   batch ms   writer CPU µs/row   server CPU µs/row   WAL bytes/row   machine busy",
    ]
    for run in runs:
        server_cpu = "—" if run.server_cpu_us_per_row is None else f"{run.server_cpu_us_per_row:.1f}"
        lines.append(
            f"{run.writers:>7} {run.rows_per_s:>10,.0f} {run.batch_ms:>10.1f} {run.client_cpu_us_per_row:>19.1f}"
            f" {server_cpu:>19} {run.wal_bytes_per_row or 0:>15,.0f} {run.machine_busy:>14.0%}"
        )
    lines.append(
        f"the {cores} cores serve the server and the writers alike: where the machine is busy, rows/s is what"
        " they give together, not what a server on cores of its own could take"
    )
    measured = [run for run in runs if run.server_cpu_us_per_row]
    if measured:
        best = max(measured, key=lambda run: run.rows_per_s)
        lines.append(
            "server CPU is the writers' backends only (no WAL writer, checkpointer or disk waits): at"
            f" {best.server_cpu_us_per_row:.1f} µs per row (writers: {best.writers}), one server core would take"
            f" about {1e6 / (best.server_cpu_us_per_row or 1):,.0f} rows/s"
        )
    lines.append(
        "writer CPU includes making the synthetic rows; WAL is the whole server's, other writers' included;"
        " each count starts from empty tables, so the unique index is small and in memory"
    )
    return "\n".join(lines)
