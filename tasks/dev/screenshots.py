"""`make screenshots`: docs/img/flower-dashboard.png and docs/img/flower-broker.png.

Taken from a real run on the embedded stack: seeds events, runs worker, beat and Flower
(loopback, read-only, as `make run` does, but on a free port), and once Flower shows a
finished batch, photographs the dashboard and the Broker tab with the same browser tour
as tests/test_flower_browser.py (tasks/dev/browser.py).
"""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.request
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"
EVENTS = 6000


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


def take(url: str, worker: str) -> list[Path]:
    """The two pictures, once Flower lists a finished batch."""
    from tasks.dev import browser

    IMAGES.mkdir(parents=True, exist_ok=True)
    shots = [IMAGES / "flower-broker.png", IMAGES / "flower-dashboard.png"]
    with browser.flower_page(url) as page:
        browser.show_tasks(page, "SUCCESS")
        browser.show_broker(page)  # first, while login-queue still holds events
        page.screenshot(path=shots[0])
        browser.show_dashboard(page, worker)
        page.screenshot(path=shots[1])
    return shots


def main() -> int:
    os.environ.setdefault("FLOWER_PORT", str(_free_port()))  # before celeryconfig is read
    os.environ.setdefault("BATCH_SIZE", "160")
    import celeryconfig as config
    from tasks.dev import runner, seed, stack

    stack.up()
    bodies = [body for body, _ in seed.generate(EVENTS)]
    commands = {
        "screenshots-worker": runner.worker_command("screenshots"),
        "screenshots-beat": runner.beat_command(),
        "screenshots-flower": runner.flower_command(),
    }
    url = f"http://127.0.0.1:{config.FLOWER_PORT}"
    with runner.processes(commands):
        _wait_for_flower(url)
        stack.say(f"seeded {seed.send(config.SOURCE_QUEUE, bodies)} events")
        for shot in take(url, "screenshots@"):
            print(shot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
