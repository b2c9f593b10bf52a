"""`make screenshots`: docs/img/flower-dashboard.png, docs/img/flower-broker.png,
docs/img/prometheus-alerts.png and docs/img/prometheus-freshness-p99.png.

Taken from a real run on the embedded stack: seeds events, runs worker, beat and Flower
(loopback, read-only, as `make run` does, but on a free port and with basic auth), and
Debian's Prometheus scraping Flower's /metrics with the shipped alert rules, their
durations shortened as the end-to-end test has them (dev/devkit/prometheus.py). Once
Flower shows a finished batch, it photographs the dashboard and the Broker tab with the
same browser tour as tests/test_flower_browser.py (dev/devkit/browser.py). Then it stops
beat and sends more events: once LoginPipelineBeatDown and LoginPipelineStalled fire, it
photographs Prometheus's alerts page; it restarts beat, and once the backlog has drained,
photographs the graph of freshness p99, late events' peak included.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"
EVENTS = 6000
LATE_EVENTS = 1500  # sent while beat is stopped
FRESHNESS_P99 = "histogram_quantile(0.99, sum by (le) (rate(login_pipeline_freshness_seconds_bucket[1m])))"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_flower(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthcheck", timeout=2) as response:
                if response.read() == b"OK":
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def take(url: str, worker: str, credentials: tuple[str, str]) -> list[Path]:
    """The two pictures of Flower, once it lists a finished batch."""
    from devkit import browser

    IMAGES.mkdir(parents=True, exist_ok=True)
    shots = [IMAGES / "flower-broker.png", IMAGES / "flower-dashboard.png"]
    with browser.flower_page(url, credentials) as page:
        browser.show_tasks(page, "SUCCESS")
        browser.show_broker(page)  # first, while login-queue still holds events
        page.screenshot(path=shots[0])
        browser.show_dashboard(page, worker)
        page.screenshot(path=shots[1])
    return shots


def wait_for(what: str, condition: Callable[[], object], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"screenshots: no {what} within {timeout:.0f} s; see the logs in .stack/logs")
        time.sleep(1)


class Beat:
    """Celery beat in its own process group, which the run stops and starts again."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        from devkit import runner

        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                runner.beat_command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def take_prometheus(server: Any, beat: Beat, late_events: list[str]) -> list[Path]:
    """Prometheus's alerts page while beat is stopped, and freshness p99 after it."""
    import celeryconfig as config
    from devkit import browser, runner, seed, stack

    shots = [IMAGES / "prometheus-alerts.png", IMAGES / "prometheus-freshness-p99.png"]
    beat.stop()
    stack.say("beat stopped: waiting for LoginPipelineBeatDown")
    wait_for("LoginPipelineBeatDown", lambda: server.alerts().get("LoginPipelineBeatDown"))
    stack.say(f"sent {seed.send(config.SOURCE_QUEUE, late_events)} events that no fetch reads")
    wait_for("LoginPipelineStalled", lambda: server.alerts().get("LoginPipelineStalled"))
    with browser.flower_page(server.url) as page:
        browser.show_prometheus_alerts(page)
        page.screenshot(path=shots[0], full_page=True)
    beat.start()
    stack.say("beat restarted: waiting for the backlog to drain")
    runner.wait_until_drained(300)
    wait_for("LoginPipelineStalled to clear", lambda: not server.alerts().get("LoginPipelineStalled"))
    time.sleep(60)  # a minute of p99 after the late events, in the picture
    with browser.flower_page(server.url) as page:
        browser.show_prometheus_graph(page, FRESHNESS_P99, "10m")
        page.screenshot(path=shots[1])
    return shots


def main() -> int:
    # For the processes it starts, which read their environment afresh: this process has
    # read celeryconfig already (`python -m` imports the tasks package, the Celery app).
    port = os.environ.get("FLOWER_PORT") or str(_free_port())
    os.environ.update(
        FLOWER_PORT=port,
        BATCH_SIZE=os.environ.get("BATCH_SIZE", "160"),
        FLOWER_BASIC_AUTH=os.environ.get("FLOWER_BASIC_AUTH") or f"screenshots:{secrets.token_hex(12)}",
    )
    import celeryconfig as config
    from devkit import prometheus, runner, seed, stack

    stack.up()
    logs = config.STACK_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    user, _, password = os.environ["FLOWER_BASIC_AUTH"].partition(":")
    server = prometheus.Server(config.STACK_DIR / "prometheus-screenshots", _free_port())
    shutil.rmtree(server.folder, ignore_errors=True)  # no series of an earlier run
    server.configure(f"127.0.0.1:{port}", (user, password), divisor=30)
    commands = {
        "screenshots-worker": runner.worker_command("screenshots"),
        "screenshots-flower": runner.flower_command(),
        "screenshots-prometheus": server.command(),
    }
    url = f"http://127.0.0.1:{port}"
    beat = Beat(logs / "screenshots-beat.log")
    with runner.processes(commands):
        try:
            _wait_for_flower(url)
            beat.start()
            bodies = [body for body, _ in seed.generate(EVENTS)]
            stack.say(f"seeded {seed.send(config.SOURCE_QUEUE, bodies)} events")
            shots = take(url, "screenshots@", (user, password))
            wait_for("Prometheus", server.ready)
            late = [body for body, _ in seed.generate(LATE_EVENTS, seed=11)]
            shots += take_prometheus(server, beat, late)
        finally:
            beat.stop()
    for shot in shots:
        print(shot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
