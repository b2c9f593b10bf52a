"""CPU and peak memory of a process tree, as the benches read them from /proc."""

from __future__ import annotations

from pathlib import Path

import psutil


def cpu_seconds(process: psutil.Process) -> float:
    """User and system CPU of a process and its children so far (exited children included)."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def peak_rss(process: psutil.Process) -> dict[str, float]:
    """Peak resident memory (VmHWM) of a process and its children, in MB."""
    peaks = {}
    for p in [process, *process.children(recursive=True)]:
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[f"{p.name()}[{p.pid}]"] = round(int(line.split()[1]) / 1024, 1)
        except (OSError, psutil.Error):
            continue
    return peaks


class CpuMeter:
    """CPU a process tree spends between `start` and `stop`, per event in µs; a meter
    without a process (no LocalStack found) reads None."""

    def __init__(self, process: psutil.Process | None) -> None:
        self.process = process
        self.spent = 0.0

    def start(self) -> None:
        if self.process is not None:
            self.spent = -cpu_seconds(self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.spent += cpu_seconds(self.process)

    def per_event(self, events: int) -> float | None:
        if self.process is None or events <= 0:
            return None
        return round(self.spent / events * 1e6, 1)
