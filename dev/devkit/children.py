"""Stopping what a developer command started: `dev run`'s worker, beat and Flower, the
LocalStack of `dev stack down`.

Whichever way the command ends (SIGINT, SIGTERM, a child's exit, a drain or its
timeout), each child still running gets SIGTERM, and one still there after its bound is
killed with its whole process group (SIGKILL), which is said in one line. `Signals` is
how a command takes SIGINT and SIGTERM: the first ends the command (KeyboardInterrupt,
so its children are stopped on the way out); one that comes while children are stopping
(`stopping`) does not cut that short, it kills what is left at once. Every child of a
run carries the run's mark in its environment (MARK), so that afterwards the run finds
anything of its own still there (a pool process whose worker was killed, a process that
left its group or lost its parent) and kills it too (`kill_left`). A run killed outright
(SIGKILL) can stop nothing: its children get SIGTERM from the kernel then
(`dies_with_parent`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

import psutil

MARK = "LOGIN_PIPELINE_RUN"  # the environment variable that marks a run's processes
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def dies_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the child sent SIGTERM when the command that started it
    dies, even by SIGKILL, which leaves it no time to stop its children (Linux's
    PR_SET_PDEATHSIG); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def in_the_child() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the call above
            os.kill(os.getpid(), signal.SIGTERM)

    return in_the_child


def say(text: str) -> None:
    print(f"[stack] {text}", file=sys.stderr, flush=True)


class Signals:
    """SIGINT and SIGTERM of a command that starts children: outside `stopping`, the first
    raises KeyboardInterrupt (also where SIGINT was ignored at start, as for a background
    job of a script); inside it, and after that first one, they set `hurry` instead."""

    def __init__(self) -> None:
        self.hurry = threading.Event()
        self._interrupted = False
        self._stopping = 0

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping or self._interrupted:
            if not self.hurry.is_set():
                say(f"{signal.Signals(signum).name}: not waiting any longer, killing what is left (SIGKILL)")
            self.hurry.set()
            return
        self._interrupted = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def stopping(self) -> Iterator[threading.Event]:
        """While children stop: a signal hurries them rather than interrupting the stop.
        After it, the next signal interrupts again (a summary waiting on SQS, say)."""
        self._stopping += 1
        try:
            yield self.hurry
        finally:
            self._stopping -= 1
            if not self._stopping:
                self._interrupted = False
                self.hurry.clear()


SIGNALS = Signals()


def gone(process: psutil.Process) -> bool:
    """Whether it has exited (a zombie, not yet reaped by its parent, has)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_group(process: psutil.Process) -> None:
    """SIGKILL the process group this (not yet reaped) process leads."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def stop(children: dict[str, int], bound: Callable[[str], float], hurry: threading.Event | None = None) -> None:
    """SIGTERM each child (a pid that leads its own process group), wait for each up to its
    bound in seconds, then kill the group of each still there, saying so in one line. Set,
    `hurry` kills at once what is left."""
    hurry = hurry or threading.Event()
    running: dict[str, psutil.Process] = {}
    for name, pid in children.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            process.send_signal(signal.SIGTERM)
            running[name] = process
    signalled = time.monotonic()
    while running:
        for name, process in list(running.items()):
            if gone(process):
                del running[name]
            elif hurry.is_set() or time.monotonic() - signalled >= bound(name):
                kill_group(process)
                why = "had not stopped yet" if hurry.is_set() else f"did not stop within {bound(name):g} s of SIGTERM"
                say(f"{name} {why}: killed it and its process group (SIGKILL)")
                psutil.wait_procs([process], timeout=5)
                del running[name]
        hurry.wait(0.1)


def marked(mark: str) -> list[psutil.Process]:
    """Live processes whose environment carries this run's mark (this one excepted)."""
    return _live(lambda process: process.environ().get(MARK) == mark)


def in_group(pgid: int) -> list[psutil.Process]:
    """Live processes of this process group (its leader may have gone)."""
    return _live(lambda process: os.getpgid(process.pid) == pgid)


def _live(belongs: Callable[[psutil.Process], bool]) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if process.pid != os.getpid() and belongs(process) and not gone(process):
                found.append(process)
    return found


def kill_left(left: list[psutil.Process], whose: str) -> list[int]:
    """Kill these processes still there after their leaders stopped, saying so in one
    line; the pids that even SIGKILL left running (none, normally)."""
    if not left:
        return []
    names = []
    for process in left:
        with contextlib.suppress(psutil.Error):
            names.append(f"{process.pid} ({process.name()})")
            process.kill()
    say(f"killed {len(left)} process(es) of {whose} still running after it stopped: {', '.join(names)}")
    _, alive = psutil.wait_procs(left, timeout=5)
    return [process.pid for process in alive if not gone(process)]
