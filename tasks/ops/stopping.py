"""How a process that serves (Flower, `python -m tasks metrics`) stops: within a bound,
whatever it is doing when SIGTERM or SIGINT comes.

A Python signal handler runs only on the main thread, and only between two bytecodes.
A main thread blocked in C code never gets there: libpq waiting for a server that does
not answer (a slow /metrics) retries its poll on EINTR, and an interpreter at exit
joins its threads and runs its atexit clean-ups (Flower's event queue deleted on an
SQS endpoint that has gone) with the handler already spent. So the signals are not left
to a handler: ``stop_within`` blocks SIGTERM and SIGINT in the calling (main) thread and
in every thread started after it, and a thread of its own takes them with ``sigwait``.
On the first it says so in one line, raises KeyboardInterrupt in the main thread (what
Ctrl-C does: Flower and the exporter end their serving loop on it and clean up; WAKE
ends the blocking call the main thread may be in, so that it sees it at once), and
if the process is still there `seconds` later, says that in one line too and ends it
with ``os._exit``. A second signal ends it at once.

Call it on the main thread before any other thread starts (a thread started earlier
keeps the signals unblocked, and one sent to it would bypass the watch; ``stop_within``
refuses that). A child process started afterwards inherits the blocked signals, so a
serving process that starts children must unblock them there; neither Flower nor the
exporter starts any.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import threading

log = logging.getLogger(__name__)
SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# Sent to the main thread to end a blocking call there (EINTR), so that it sees the
# KeyboardInterrupt at once, not at its next wake-up: a signal ignored by default, which
# neither Flower nor the exporter uses (Go's runtime preempts threads with it, too).
WAKE = signal.SIGURG
_watching = False


def stop_within(seconds: float, name: str) -> None:
    """From now on, SIGTERM or SIGINT stops this process within `seconds` (idempotent)."""
    global _watching
    if _watching:
        return
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if threading.current_thread() is not threading.main_thread() or others:
        raise RuntimeError(f"stop_within must run on the main thread before any other starts (running: {others})")
    # KeyboardInterrupt must reach the main thread even where SIGINT was ignored at start
    # (a background job of a script): interrupt_main() runs the Python handler of SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(WAKE, lambda signum, frame: None)  # a Python handler: the call ends with EINTR
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    threading.Thread(target=_watch, args=(seconds, name), name="stop-on-signal", daemon=True).start()
    _watching = True


def _watch(seconds: float, name: str) -> None:
    signum = signal.sigwait(SIGNALS)
    log.warning("%s received: %s stopping (at most %g s)", signal.Signals(signum).name, name, seconds)
    late = f"{name} did not stop within {seconds:g} s of {signal.Signals(signum).name}: exiting now"
    timer = threading.Timer(seconds, _exit_now, args=(late, signum))
    timer.daemon = True
    timer.start()
    _thread.interrupt_main()  # sets the flag: the main thread raises it at its next bytecode
    signal.pthread_kill(threading.main_thread().ident or 0, WAKE)  # a blocking call returns for it
    again = signal.sigwait(SIGNALS)
    _exit_now(f"a second {signal.Signals(again).name}: {name} exiting now", again)


def _exit_now(line: str, signum: int) -> None:
    log.error(line)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(128 + signum)  # a shell's code for a process ended by that signal
