"""`auditor report --month` as a user runs it (whole process, rules included) at 16 to 1,024 GPUs.

For each fleet size, builds a month of minute roll-ups for N GPUs (8 deployments, static prices)
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
DEPLOYMENTS = 8
"""Fixed, so that what grows is the fleet (GPUs per deployment), not the number of report sections."""

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
    """A month of minute rows generated inside SQLite, a day at a time (the build is not measured)."""
    Store.open(f"sqlite:///{db}").close()
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA journal_mode=WAL")
    per_deployment = gpus // DEPLOYMENTS
    for day in range(START, END, 86_400):
        connection.execute(
            "INSERT INTO deployment_minutes"
            " WITH RECURSIVE m(t) AS (SELECT ? UNION ALL SELECT t + 60 FROM m WHERE t + 60 < ?),"
            " d(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM d WHERE i + 1 < ?),"
            " r AS (SELECT t, i, (abs(random()) % 1000000) / 1000000.0 AS busy FROM m CROSS JOIN d)"
            " SELECT t, 'd' || i, 1, 60.0, 20000, 5000, 60 * busy, NULL, NULL, NULL, NULL, 480.0,"
            " busy, busy * 0.6, busy, 0.02 FROM r",
            (day, day + 86_400, DEPLOYMENTS),
        )
        connection.execute(
            "INSERT INTO gpu_minutes"
            " WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i + 1 < ?)"
            " SELECT dm.minute_ts, 'h', 'GPU-' || (CAST(substr(dm.deployment, 2) AS INTEGER) * ? + g.i), g.i,"
            " dm.deployment, 60.0, 60.0, 60 * (1 - dm.request_busy), 60.0, dm.request_busy, 1.0,"
            " dm.request_busy * 0.6, 18000.0, 300.0, NULL, NULL"
            " FROM deployment_minutes AS dm CROSS JOIN g WHERE dm.minute_ts >= ? AND dm.minute_ts < ?",
            (per_deployment, per_deployment, day, day + 86_400),
        )
        connection.commit()
    rows = int(connection.execute("SELECT COUNT(*) FROM gpu_minutes").fetchone()[0])
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
        + "".join(DEPLOYMENT.format(i=i, gpus=gpus // DEPLOYMENTS) for i in range(DEPLOYMENTS))
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
