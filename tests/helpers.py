"""Helpers of the tests: a real worker process, and waiting for a condition."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import celeryconfig as config
from tasks import runner

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


class Worker:
    """A real `celery -A tasks worker` process (and beat, if asked)."""

    def __init__(self, name: str, beat: bool = False, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = config.STACK_DIR / f"{name}.log"
        command = [*runner.worker_command(name), "--without-heartbeat", "--without-mingle"]
        if beat:
            command.append("--beat")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
        self.wait_for("ready.")

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{self.name}: no {text!r} in {timeout} s"
            time.sleep(0.2)

    def stop(self, sig: int = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=60)


def wait_until(predicate: Callable[[], T], timeout: float = 60, poll: float = 0.5, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
    return value
