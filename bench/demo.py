"""`auditor demo` as a user runs it (whole process), against `auditor --help` in the same run.

Runs `auditor --help`, then `auditor demo --month 2026-10` (a month of three simulated deployments:
traffic, simulation, the store's writes and tiers, the FOCUS bill, the rules, the report in every
format), then `auditor report` again on the demo's store with and without the HTML, so that the
charts' share can be told apart. Prints CPU seconds (the steadier figure on a shared machine) beside
wall time, the load average, and the ratio to `--help`. Targets (issue 11): the demo under 3 s, i.e.
under 7× `auditor --help`.

Also runs "the libraries alone": a process that imports the third-party libraries the demo cannot do
without (typer and rich, SQLAlchemy and its SQLite dialect, pydantic, numpy, jinja2) and loads
genai-prices' price table, and does nothing else. What is left of the demo above that floor is what
this project's code costs.

    .venv/bin/python -m bench.demo [--runs 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.proc import best, load, run

AUDITOR = str(Path(sys.executable).parent / "auditor")
MONTH = "2026-10"
LIBRARIES_ALONE = (
    "import os\n"
    "os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # as the console script starts\n"
    "import typer, rich.progress, sqlalchemy.dialects.sqlite, pydantic, numpy, jinja2\n"
    "from genai_prices import data_snapshot\n"
    "data_snapshot.get_snapshot()"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each command (the best is kept)")
    args = parser.parse_args()
    print(f"load average before: {load()}")
    with tempfile.TemporaryDirectory(prefix="auditor-bench-demo-") as scratch:
        demo_dir = Path(scratch) / "demo"
        commands = {
            "auditor --help": [AUDITOR, "--help"],
            "the libraries alone": [sys.executable, "-c", LIBRARIES_ALONE],
            "auditor demo": [AUDITOR, "demo", "--out", str(demo_dir), "--month", MONTH],
            "report, every format": [
                AUDITOR, "report", "--config", str(demo_dir / "auditor.toml"), "--month", MONTH,
                "--out", str(Path(scratch) / "all"),
            ],
            "report without HTML": [
                AUDITOR, "report", "--config", str(demo_dir / "auditor.toml"), "--month", MONTH,
                "--out", str(Path(scratch) / "some"), "--format", "csv,md,json",
            ],
        }  # fmt: skip
        # Round by round, each command once a round: the machine's speed drifts over minutes (here
        # `--help` took 0.19 s in one minute and 0.33 s in another), and a ratio of two bests taken
        # minutes apart measures that drift as much as the commands.
        rounds = [{label: run(command) for label, command in commands.items()} for _ in range(args.runs)]
        figures = {label: best([r[label] for r in rounds]) for label in commands}
    help_run, demo = figures["auditor --help"], figures["auditor demo"]
    libraries = figures["the libraries alone"]
    charts_cpu = figures["report, every format"].cpu_s - figures["report without HTML"].cpu_s
    for label, figure in figures.items():
        print(f"{label:<22} {figure}  ({figure.cpu_s / help_run.cpu_s:5.1f}× --help CPU)")
    print(f"the HTML's charts: {charts_cpu:.2f} s CPU (report with them − without)")
    ratio = demo.cpu_s / help_run.cpu_s
    print(
        f"demo: {demo.cpu_s:.2f} s CPU (target < 3 s: {'met' if demo.cpu_s < 3 else 'MISSED'}), "
        f"{demo.wall_s:.2f} s wall; {ratio:.1f}× --help CPU "
        f"(target < 7×: {'met' if ratio < 7 else 'MISSED'}); "
        f"without the charts {demo.cpu_s - charts_cpu:.2f} s CPU"
    )
    print(
        f"the libraries alone: {libraries.cpu_s:.2f} s CPU, {libraries.cpu_s / help_run.cpu_s:.1f}× --help; "
        f"the demo above them: {demo.cpu_s - libraries.cpu_s:.2f} s CPU "
        f"(under 7× --help leaves it {7 * help_run.cpu_s - libraries.cpu_s:.2f} s)"
    )
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
