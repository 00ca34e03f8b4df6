"""`auditor report --month` as a user runs it (whole process, rules included) at 16 to 1,024 GPUs.

For each fleet size, builds a month of minute roll-ups for N GPUs (8 per deployment, static prices)
in SQLite, fills the roll-up tiers from them as the daemon's writes would (`Store.rebuild_tiers`),
then prunes the minutes to the store's default window before "now" (five days after the month), as
the daemon's retention leaves a store. Then times, each as a whole process: `auditor --help`, and
`auditor report --month 2026-10` (rules evaluated, every format written); and, in process, a bare
SQL `GROUP BY` per deployment and day over the month's minute rows (before they were pruned: the
least work a report from minutes alone could do). Prints the times, the ratios, and the growth from
the smallest fleet to the largest.
Targets (issue 11): at 1,024 GPUs under 3 s; from 16 to 1,024 GPUs, less than 2× longer.

    .venv/bin/python -m bench.report [--gpus 16 64 256 1024] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from auditor.store import MINUTE_RETENTION_DAYS, Store

AUDITOR = Path(sys.executable).parent / "auditor"
MONTH = "2026-10"
START = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp())
END = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
NOW = int(datetime(2026, 11, 5, tzinfo=UTC).timestamp())
GPUS_PER_DEPLOYMENT = 8

CONFIG = """\
timezone = "UTC"
[store]
url = "sqlite:///{db}"
"""
DEPLOYMENT = """
[[deployments]]
name = "d{i}"
model = "llama-3-70b"
gpu_type = "H100"
gpu_count = {gpus}
prometheus_matchers = {{ deployment = "d{i}" }}
capacity_tokens_per_s = 20000
compare_to = ["together:meta-llama/Llama-3-70b-chat-hf", "openai:gpt-4o"]
[deployments.price]
source = "static"
gpu_hourly_usd = 2.99
"""


def build(db: Path, gpus: int) -> int:
    """A month of minute rows straight through sqlite3 (the build is not what is measured)."""
    Store.open(f"sqlite:///{db}").close()
    rng = random.Random(1)
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA journal_mode=WAL")
    deployments = gpus // GPUS_PER_DEPLOYMENT
    marks = ",".join("?" * 16)
    rows = 0
    for day in range(START, END, 86_400):
        gpu_rows = []
        server_rows = []
        for minute in range(day, day + 86_400, 60):
            for d in range(deployments):
                busy = rng.random()
                server_rows.append(
                    (minute, f"d{d}", 1, 60.0, 20_000, 5_000, 60 * busy, None, None, None, None, 480.0,
                     busy, busy * 0.6, busy, 0.02)
                )  # fmt: skip
                for g in range(GPUS_PER_DEPLOYMENT):
                    gpu_rows.append(
                        (minute, "h", f"GPU-{d * GPUS_PER_DEPLOYMENT + g}", g, f"d{d}", 60.0, 60.0,
                         60 * (1 - busy), 60.0, busy, 1.0, busy * 0.6, 18_000.0, 300.0, None, None)
                    )  # fmt: skip
        connection.executemany(f"INSERT INTO gpu_minutes VALUES ({marks})", gpu_rows)  # noqa: S608
        connection.executemany(f"INSERT INTO deployment_minutes VALUES ({marks})", server_rows)  # noqa: S608
        connection.commit()
        rows += len(gpu_rows)
    connection.close()
    return rows


def bare_group_by(db: Path) -> float:
    connection = sqlite3.connect(db)
    began = time.perf_counter()
    connection.execute(
        "SELECT deployment, minute_ts - minute_ts % 86400, SUM(observed_s), SUM(idle_s),"
        " SUM(gpu_util * util_observed_s), SUM(util_observed_s) FROM gpu_minutes"
        " WHERE minute_ts >= ? AND minute_ts < ? GROUP BY 1, 2",
        (START, END),
    ).fetchall()
    elapsed = time.perf_counter() - began
    connection.close()
    return elapsed


def timed(command: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)  # noqa: S603
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:2])} failed: {result.stderr.strip()[-400:]}")
    return elapsed


def measure(directory: Path, gpus: int) -> tuple[float, float, float]:
    """(report s, bare GROUP BY s, --help s) for a fleet of `gpus`."""
    db = directory / f"fleet-{gpus}.db"
    config = directory / f"fleet-{gpus}.toml"
    config.write_text(
        CONFIG.format(db=db)
        + "".join(
            DEPLOYMENT.format(i=i, gpus=GPUS_PER_DEPLOYMENT) for i in range(gpus // GPUS_PER_DEPLOYMENT)
        )
    )
    if not db.exists():
        began = time.perf_counter()
        rows = build(db, gpus)
        bare_s = min(bare_group_by(db) for _ in range(3))
        store = Store.open(f"sqlite:///{db}")
        store.rebuild_tiers(START, END)
        store.prune(NOW, 48 * 3600, 397 * 86_400, minute_retention_s=MINUTE_RETENTION_DAYS * 86_400)
        store.close()
        print(f"  built {rows:,} GPU-minute rows, tiers, pruned to {MINUTE_RETENTION_DAYS} days of minutes "
              f"in {time.perf_counter() - began:.0f} s")  # fmt: skip
        (directory / f"fleet-{gpus}.bare").write_text(str(bare_s))
    bare_s = float((directory / f"fleet-{gpus}.bare").read_text())
    env = {k: v for k, v in os.environ.items() if k != "AUDITOR_CONFIG"}
    help_s = min(timed([str(AUDITOR), "--help"], env) for _ in range(3))
    out = directory / f"out-{gpus}"
    command = [str(AUDITOR), "report", "--config", str(config), "--month", MONTH, "--out", str(out)]
    report_s = min(timed(command, env) for _ in range(2))
    return report_s, bare_s, help_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--keep", type=Path, default=None, help="build (or reuse) the stores here")
    args = parser.parse_args()
    directory = args.keep or Path(tempfile.mkdtemp(prefix="auditor-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    results = {}
    for gpus in args.gpus:
        print(f"{gpus} GPUs:")
        report_s, bare_s, help_s = measure(directory, gpus)
        results[gpus] = report_s
        print(
            f"  auditor report --month {MONTH}: {report_s:.2f} s whole process, rules included; "
            f"{report_s / bare_s:.2f}× a bare GROUP BY over the month's minutes ({bare_s:.2f} s), "
            f"{report_s / help_s:.2f}× auditor --help ({help_s:.2f} s)"
        )
    smallest, largest = min(results), max(results)
    growth = results[largest] / results[smallest]
    print(
        f"from {smallest} to {largest} GPUs: {growth:.2f}× "
        f"(target under 2×: {'met' if growth < 2 else 'MISSED'}); at {largest} GPUs "
        f"{results[largest]:.2f} s (target under 3 s: {'met' if results[largest] < 3 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
