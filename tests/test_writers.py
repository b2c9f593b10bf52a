"""`dev writers` against the test stack's PostgreSQL: a short run at two writer counts
measures rows through the worker's insert path and leaves no scratch database and no
process behind (it asserts nothing about speed). It runs as a user runs it, in a
process of its own: multiprocessing's resource tracker lives as long as the process
that started the writers, here not the test's."""

from __future__ import annotations

import os
import sys

import psutil

from tasks.pipeline import store
from tests.helpers import spawn, wait_until


def _in_session(session: int) -> list[int]:
    """Processes still in the session the command led (its writers, had it left any)."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session:
                found.append(process.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def _scratch_databases(url: str) -> list[str]:
    conn = store.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE 'writers\\_bench\\_%'")
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


def test_writers_report_rows_per_second_and_leave_nothing_behind(database_url: str, tmp_path) -> None:
    log = tmp_path / "writers.log"
    args = ["dev", "writers", "--writers", "1,2", "--seconds", "1", "--batch-size", "100"]
    command = spawn([sys.executable, "-m", "tasks", *args], log)
    assert command.wait(timeout=120) == 0, log.read_text()[-3000:]
    # Only multiprocessing's resource tracker may outlive the command, and only for a moment.
    wait_until(lambda: not _in_session(command.pid), timeout=5, poll=0.1, what="the writers' processes to end")
    assert _scratch_databases(database_url) == []
    output = log.read_text()
    rows = {int(line.split()[0]): line.split() for line in output.splitlines() if line[:7].strip().isdigit()}
    assert set(rows) == {1, 2}, output
    for fields in rows.values():
        rows_per_s, batch_ms, writer_cpu, server_cpu = fields[1:5]
        assert float(rows_per_s.replace(",", "")) > 0 and float(batch_ms) > 0 and float(writer_cpu) > 0
        assert server_cpu != "—"  # the test stack's server runs on this machine
    assert f"this machine: {os.cpu_count()} cores" in output
