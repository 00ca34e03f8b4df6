"""Start-up time of `auditor`: what a command costs before it does anything.

For each command line: the median wall time of a few runs of the console script, and the import time
Python reports (`python -X importtime`, the top-level modules' cumulative times). "all commands" imports
every command module, as every start-up did before `auditor.cli.app` loaded commands on demand: the
figure to compare with.

    .venv/bin/python -m bench.startup [RUNS]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
EVERYTHING = "from auditor.cli.app import command; command()"
LINES: list[tuple[str, list[str]]] = [
    ("auditor --version", ["-m", "auditor", "--version"]),
    ("auditor --help", ["-m", "auditor", "--help"]),
    ("auditor breakeven --help", ["-m", "auditor", "breakeven", "--help"]),
    ("auditor status --help", ["-m", "auditor", "status", "--help"]),
    ("auditor rules check --help", ["-m", "auditor", "rules", "check", "--help"]),
    ("all commands (before)", ["-c", EVERYTHING]),
]


def import_ms(args: list[str]) -> float:
    """Sum of the cumulative import times of the top-level imports, in ms."""
    done = subprocess.run(  # noqa: S603  (this interpreter, fixed arguments)
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    total_us = 0
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if cumulative.strip().isdigit() and not name.startswith("  "):  # a top-level import
            total_us += int(cumulative)
    return total_us / 1000


def wall_s(args: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, check=True)  # noqa: S603
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    load = os.getloadavg()[0]
    print(f"start-up of {sys.executable} ({RUNS} runs each, median; load average {load:.1f})")
    print(f"{'command':<30} {'wall s':>8} {'imports ms':>11}")
    for label, args in LINES:
        print(f"{label:<30} {wall_s(args):>8.2f} {import_ms(args):>11.0f}")


if __name__ == "__main__":
    main()
