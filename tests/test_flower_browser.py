"""Flower on SQS in a real browser (headless chromium), while real workers run batches.

One scene for the module: worker A (a healthy database) writes some batches, then stops;
worker B, whose DATABASE_URL points at a port that refuses connections, takes the next
ones, and they wait to retry. Flower runs as `make run` runs it: loopback, no auth,
read-only. The tests look at what a user sees (pages, `celery inspect`) and try the
writes that Flower used to accept.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import celeryconfig as config
from devkit import browser, seed
from tasks.celery import app
from tasks.ops.status import queue_names
from tests.helpers import (
    ROOT,
    Worker,
    flower_request,
    free_port,
    raw_values,
    reset_pipeline,
    start_flower,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("test_stack")
BATCH = 160
WORKER_ENV = {"BATCH_SIZE": str(BATCH), "FETCH_MAX_SECONDS": "2"}
# Controls of Flower's pages (worker.html, task.html): none may be shown read-only.
CONTROLS = (
    "#worker-group",
    "#worker-shutdown",
    "#worker-pool-restart",
    "#worker-pool-grow",
    "#worker-pool-shrink",
    "#worker-pool-autoscale",
    "#worker-add-consumer",
    "[id^=worker-cancel-consumer]",
    "[id^=task-rate-limit]",
    "[id^=task-timeout]",
    "#task-revoke",
    "#task-terminate",
)


@dataclass
class Scene:
    flower_port: int
    healthy: Worker
    retrying: Worker
    raw_values: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.flower_port}"


def leaked(text: str, values: list[str]) -> list[str]:
    """The raw values that appear in `text` as whole tokens."""
    return [v for v in values if re.search(rf"(?<![\w.-]){re.escape(v)}(?![\w.-])", text)]


def seed_events(count: int, seed_number: int) -> list[str]:
    bodies = [body for body, _ in seed.generate(count, seed=seed_number)]
    seed.send(config.SOURCE_QUEUE, bodies)
    return bodies


def ledger_batches() -> int:
    from tasks.pipeline import store

    conn = store.connect(config.database_url())
    try:
        return int(store.ledger_totals(conn)["batches"])
    finally:
        conn.close()


def scheduled_batches(worker: Worker) -> list[dict]:
    replies = app.control.inspect(timeout=3, destination=[worker.node], limit=1).scheduled() or {}
    return [entry for name, entries in replies.items() if name.startswith(worker.name) for entry in entries]


@pytest.fixture(scope="module")
def scene() -> Iterator[Scene]:
    reset_pipeline()
    port, started = free_port(), []
    refused = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=2"
    try:
        flower = start_flower(port)
        started.append(flower)
        healthy = Worker(f"flower-a-{os.getpid()}", beat=True, heartbeat=True, env=WORKER_ENV)
        started.append(healthy)
        bodies = seed_events(2 * BATCH, seed_number=11)
        wait_until(lambda: ledger_batches() >= 2, timeout=60, what="the healthy worker's batches")
        healthy.stop()
        # Retries back off up to a minute, so batches stay scheduled while the pages are read;
        # a visibility timeout that holds such a wait and a whole run (celeryconfig refuses less).
        retry_env = {**WORKER_ENV, "DATABASE_URL": refused, "RETRY_BACKOFF_MAX": "60", "TASK_VISIBILITY_TIMEOUT": "300"}
        retrying = Worker(f"flower-b-{os.getpid()}", beat=True, heartbeat=True, env=retry_env)
        started.append(retrying)
        bodies += seed_events(2 * BATCH, seed_number=12)
        wait_until(lambda: scheduled_batches(retrying), timeout=60, what="batches waiting to retry")
        yield Scene(port, healthy, retrying, sorted(raw_values(bodies)))
    finally:
        for process in reversed(started):
            if isinstance(process, Worker):
                process.kill()
            else:
                stop_process(process)
        reset_pipeline()


def assert_no_controls(page: browser.Page) -> None:
    shown = {selector: page.locator(selector).count() for selector in CONTROLS}
    assert not any(shown.values()), f"controls shown read-only: {shown}"


def test_flower_in_a_browser_shows_the_pipeline_without_records_or_controls(scene: Scene) -> None:
    started = time.monotonic()
    seen: dict[str, str] = {}
    with browser.flower_page(scene.url) as page:
        seen["dashboard"] = browser.show_dashboard(page, scene.retrying.name)
        # The stopped worker's offline event comes through SNS and SQS, which lag under load;
        # the dashboard refreshes every second, so wait for it before counting.
        page.wait_for_function("document.querySelector('#workers-online').textContent.trim() === '1'", timeout=20_000)
        assert page.locator("#workers-online").inner_text().strip() == "1"
        row = page.locator("#workers-table tbody tr", has_text=scene.retrying.name).first.inner_text()
        assert "Online" in row
        assert_no_controls(page)
        seen["workers"] = browser.show_workers(page, scene.retrying.name)
        seen["workers html"] = page.content()

        tabs = browser.show_worker_tabs(page, scene.retrying.node)
        assert_no_controls(page)
        seen.update({f"worker tab {tab}": text for tab, text in tabs.items()})
        seen["worker html"] = page.content()
        assert re.search(r"batch of \d+ messages", tabs["tasks"])  # the scheduled retries, as summaries
        assert "login-pipeline-batches" in tabs["queues"] or "batches" in tabs["queues"]

        seen["tasks"] = browser.show_tasks(page, "SUCCESS")
        succeeded = page.locator("#tasks-table tbody tr", has_text="SUCCESS").filter(has_text="batch of").first
        cells = succeeded.inner_text()
        size = re.search(r"batch of (\d+) messages", cells)  # up to BATCH: a fetch may end a batch early
        assert size and f"'received': {size[1]}" in cells.replace('"', "'"), cells
        assert re.search(r"\b\d+\.\d+\b", cells), f"no runtime in {cells!r}"
        # The batches waiting to retry: RETRY, or RECEIVED once the worker holds the retry
        # message (which of the two Flower shows depends on the order its events arrive).
        waiting = page.locator("#tasks-table tbody tr").filter(has_text="batch of").filter(has_not_text="SUCCESS")
        assert waiting.count() >= 1, browser.page_text(page)
        task_id = succeeded.get_attribute("id")  # the task table's rows are keyed by task id
        assert_no_controls(page)
        seen["tasks html"] = page.content()

        seen["task"] = browser.show_task(page, task_id)
        assert f"batch of {size[1]} messages" in seen["task"] and "SUCCESS" in seen["task"]
        assert_no_controls(page)
        seen["task html"] = page.content()

        seen["broker"] = browser.show_broker(page)
        depths = {
            cells[0]: cells[1:]
            for row in page.locator("#queue-table tbody tr").all()
            if len(cells := [c.strip() for c in row.locator("td").all_inner_texts()]) == 6
        }
        seen["broker html"] = page.content()
        assert_no_controls(page)
    for queue in queue_names():
        assert queue in depths, f"{queue} not on the Broker page: {sorted(depths)}"
        messages, in_flight, visible = depths[queue][:3]
        assert messages.isdigit() and in_flight.isdigit() and visible.isdigit(), (queue, depths[queue])
        assert int(messages) == int(in_flight) + int(visible)
    batches = config.CELERY_QUEUE_PREFIX + config.BATCH_QUEUE
    assert int(depths[batches][0]) >= 1, depths[batches]  # the retries the worker holds, in flight
    assert "not supported" not in seen["broker"]
    for where, text in seen.items():
        assert not leaked(text, scene.raw_values), f"raw ip/device_id on {where}"
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("command", ["scheduled", "reserved"])
def test_celery_inspect_shows_waiting_batches_as_summaries_only(scene: Scene, command: str) -> None:
    wait_until(lambda: scheduled_batches(scene.retrying), timeout=60, what="batches waiting to retry")
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "inspect", command, "--json", "--timeout", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode in (0, 1), result.stderr  # 1: no worker had any
    output = result.stdout + result.stderr
    assert not leaked(output, scene.raw_values)
    if command == "scheduled":
        assert re.search(r"batch of \d+ messages", output), output


def test_every_inspect_view_of_a_task_reports_summaries_only(scene: Scene) -> None:
    entries = wait_until(lambda: scheduled_batches(scene.retrying), timeout=60, what="batches waiting to retry")
    inspect = app.control.inspect(timeout=3, destination=[scene.retrying.node], limit=1)
    replies = {
        "scheduled": inspect.scheduled(),
        "query_task": inspect.query_task(*[entry["request"]["id"] for entry in entries]),
        "active": inspect.active(safe=False),  # the raw arguments, had Celery its way
        "reserved": inspect.reserved(),
        "revoked": inspect.revoked(),
    }
    text = json.dumps(replies)
    assert re.search(r"batch of \d+ messages", text), text
    assert not leaked(text, scene.raw_values)


def test_a_forged_apply_from_another_origin_is_refused(scene: Scene) -> None:
    forged = json.dumps({"args": [[["forged", '{"user_id": "forged", "ip": "203.0.113.9"}', 0]]]})
    status, body = flower_request(
        scene.flower_port,
        "/api/task/async-apply/tasks.mask_and_insert",
        method="POST",
        data=forged.encode(),
        headers={"Content-Type": "text/plain", "Origin": "http://attacker.example"},
    )
    assert status in (401, 403), (status, body)
    assert "task-id" not in body


def test_shutting_a_worker_down_through_flower_is_refused(scene: Scene) -> None:
    name = scene.retrying.node
    for path in (f"/api/worker/shutdown/{name}", f"/api/worker/pool/grow/{name}?n=1"):
        status, body = flower_request(scene.flower_port, path, method="POST", data=b"")
        assert status in (401, 403), (path, status, body)
    assert app.control.ping(destination=[name], timeout=5), "the worker no longer answers"
    assert scene.retrying.process.poll() is None
