"""One whole process as a user runs it: wall seconds, CPU seconds and peak RSS, from `os.wait4`.

CPU (user + system, the process and the children it waited for) is the figure to trust on a shared
machine: the wall clock also counts the time other processes held the cores. Peak RSS is the child's
`ru_maxrss`, which Linux carries over from the parent at fork: the benches that use it keep their own
process small (no trace or frame held) so that the figure is the child's."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Run:
    wall_s: float
    cpu_s: float
    peak_mib: float

    def __str__(self) -> str:
        return f"{self.cpu_s:5.2f} s CPU, {self.wall_s:5.2f} s wall, {self.peak_mib:,.0f} MiB peak"


def run(command: list[str]) -> Run:
    """Run `command` (stdout and stderr to /dev/null); SystemExit when it fails.

    With Python's byte-code cache, as a user's installed package has it: an environment that turns it
    off (PYTHONDONTWRITEBYTECODE) makes every start compile the project's modules again. The benches
    keep the best of several runs, so the first one writes the cache."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # noqa: S603
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed (exit {os.waitstatus_to_exitcode(status)})")
    return Run(elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def best(runs: list[Run]) -> Run:
    """The least of each figure over repeated runs (each one's noise only adds)."""
    return Run(min(r.wall_s for r in runs), min(r.cpu_s for r in runs), min(r.peak_mib for r in runs))


def load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())
