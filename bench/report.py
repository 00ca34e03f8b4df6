"""`auditor report --month` as a user runs it (whole process, rules included) at 16 to 1,024 GPUs.

For each fleet size, builds the store the daemon leaves five days after the month (8 deployments,
static prices): deployment minutes and the roll-up tiers (quarter-hours per deployment, hours per
GPU) for the whole span, GPU minutes only for the days retention keeps (the store's default window
for the fleet's size: 14 days, 2.4 at 1,024 GPUs). The build is not what is measured, so it is
generated inside SQLite rather than written through the daemon's path: the tiers are computed by SQL
from the same generated load (each GPU of a deployment as busy as its server), the GPU minutes are
inserted in key order with the secondary indexes dropped and rebuilt after (a sort, not millions of
random B-tree inserts). 1,024 GPUs build in about a minute where the daemon's path took over 20.

Then times, each as a whole process: `auditor --help`, and `auditor report --month 2026-10` (rules
evaluated; every format, and without the HTML's charts); and, in process, a bare SQL `GROUP BY` per
deployment and day over the GPU minutes kept, scaled to a month of 31 days (the least work a report
from minutes alone could do). Prints wall and CPU seconds (CPU is the steadier figure on a shared
machine), the ratios, and the growth from the smallest fleet to the largest.
Targets (issue 11): at 1,024 GPUs under 3 s; from 16 to 1,024 GPUs, less than 2× longer.

    .venv/bin/python -m bench.report [--gpus 16 64 256 1024] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from auditor.store import Store, fleet_minute_window_s

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


def minute_cut(gpus: int) -> int:
    """The oldest GPU minute retention keeps at NOW for `gpus` GPUs (the store's default window, floored
    to an hour as `Store.prune` does)."""
    return int(NOW - fleet_minute_window_s(gpus)) // 3600 * 3600


def build(db: Path, gpus: int) -> int:
    """The store as the daemon leaves it at NOW, generated inside SQLite (the build is not measured)."""
    Store.open(f"sqlite:///{db}").close()
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=OFF")
    connection.execute("PRAGMA cache_size=-1000000")
    per = gpus // DEPLOYMENTS
    for day in range(START - START % 86_400, NOW, 86_400):
        connection.execute(
            "INSERT INTO deployment_minutes (minute_ts, deployment, instances, server_observed_s,"
            " prompt_tokens, generation_tokens, request_busy_s, gpu_observed_s, gpu_util, sm_active,"
            " request_busy, throughput_util)"
            " WITH RECURSIVE m(t) AS (SELECT ? UNION ALL SELECT t + 60 FROM m WHERE t + 60 < ?),"
            " d(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM d WHERE i + 1 < ?),"
            " r AS (SELECT t, i, (abs(random()) % 1000000) / 1000000.0 AS busy FROM d CROSS JOIN m)"
            " SELECT t, 'd' || i, 1, 60.0, 20000, 5000, 60 * busy, 60.0 * ?, busy, busy * 0.6, busy, 0.02"
            " FROM r",
            (day, day + 86_400, DEPLOYMENTS, per),
        )
    # The quarter-hour tier: the sums `Store` would compute from `per` GPUs, each as busy as its server.
    connection.execute(
        "INSERT INTO deployment_quarter_hours (bucket_ts, deployment, gpu_observed_s, gpu_idle_s,"
        " gpu_util_weighted, gpu_util_s, sm_active_weighted, sm_active_s, energy_j, prompt_tokens,"
        " generation_tokens, server_observed_s, request_busy_weighted, request_busy_s, served_tokens,"
        " served_wall_s, gpu_minutes, minutes_with_gpus, served_peak_tokens)"
        " SELECT r.minute_ts - r.minute_ts % 900, r.deployment, SUM(60.0 * ?), SUM(60.0 * ? * (1 - r.busy)),"
        " SUM(60.0 * ? * r.busy), SUM(60.0 * ?), SUM(60.0 * ? * r.busy * 0.6), SUM(60.0 * ?),"
        " SUM(18000.0 * ?), SUM(r.prompt_tokens), SUM(r.generation_tokens), SUM(60.0), SUM(60.0 * r.busy),"
        " SUM(60.0), SUM(r.prompt_tokens + r.generation_tokens), SUM(60.0), COUNT(*) * ?, COUNT(*), 375000"
        " FROM (SELECT *, request_busy AS busy FROM deployment_minutes) AS r GROUP BY 1, 2",
        (per,) * 8,
    )
    # The GPU-hour tier: each GPU's hour, from its deployment's minutes.
    connection.execute(
        "INSERT INTO gpu_hours (hour_ts, gpu_uuid, deployment, host, gpu_index, minutes, observed_s,"
        " util_observed_s, idle_s, loaded_s, gpu_util_weighted, gpu_util_s, gpu_util_max,"
        " sm_active_weighted, sm_active_s, energy_j, mem_used_max_bytes, mem_total_bytes,"
        " activity_known_s, idle_loaded_s, working_minutes)"
        " WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i + 1 < ?),"
        " h AS (SELECT minute_ts - minute_ts % 3600 AS hour_ts, deployment, COUNT(*) AS n,"
        " SUM(request_busy) AS busy, MAX(request_busy) AS top,"
        " SUM(CASE WHEN request_busy = 0 THEN 1 ELSE 0 END) AS idle FROM deployment_minutes GROUP BY 1, 2)"
        " SELECT h.hour_ts, printf('GPU-%05d', CAST(substr(h.deployment, 2) AS INTEGER) * ? + g.i),"
        " h.deployment, 'gpu-host-' || (CAST(substr(h.deployment, 2) AS INTEGER) * ? + g.i) / 8, g.i % 8,"
        " h.n, 60.0 * h.n, 60.0 * h.n, 60.0 * (h.n - h.busy), 60.0 * h.n, 60.0 * h.busy, 60.0 * h.n, h.top,"
        " 36.0 * h.busy, 60.0 * h.n, 18000.0 * h.n, 75 * 1073741824, 80 * 1073741824,"
        " 60.0 * h.n, 60.0 * h.idle, h.n - h.idle"
        " FROM h CROSS JOIN g",
        (per, per, per),
    )
    connection.commit()
    # GPU minutes for the days retention keeps: secondary indexes rebuilt after, rows in key order.
    indexes = connection.execute(
        "SELECT name, sql FROM sqlite_master"
        " WHERE type = 'index' AND tbl_name = 'gpu_minutes' AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        connection.execute(f"DROP INDEX {name}")
    connection.execute(
        "INSERT INTO gpu_minutes (minute_ts, host, gpu_uuid, gpu_index, deployment, observed_s,"
        " util_observed_s, idle_s, loaded_s, gpu_util, gpu_util_max, sm_active, energy_j, power_mean_w,"
        " mem_used_max_bytes, mem_total_bytes)"
        " WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i + 1 < ?)"
        " SELECT r.minute_ts, 'gpu-host-' || (CAST(substr(r.deployment, 2) AS INTEGER) * ? + g.i) / 8,"
        " printf('GPU-%05d', CAST(substr(r.deployment, 2) AS INTEGER) * ? + g.i), g.i % 8, r.deployment,"
        " 60.0, 60.0, 60 * (1 - r.request_busy), 60.0, r.request_busy, r.request_busy,"
        " r.request_busy * 0.6, 18000.0, 300.0, 75 * 1073741824, 80 * 1073741824"
        " FROM deployment_minutes AS r CROSS JOIN g WHERE r.minute_ts >= ?"
        " ORDER BY 3, 1",
        (per, per, per, minute_cut(gpus)),
    )
    connection.commit()
    for _, sql in indexes:
        connection.execute(sql)
    connection.commit()
    rows = int(connection.execute("SELECT COUNT(*) FROM gpu_minutes").fetchone()[0])
    connection.close()
    return rows


def bare_group_by(db: Path, gpus: int) -> Took:
    """A GROUP BY per deployment and day over the GPU minutes kept, scaled to a month of 31 days."""
    cut = minute_cut(gpus)
    connection = sqlite3.connect(db)
    began, cpu = time.perf_counter(), time.process_time()
    connection.execute(
        "SELECT deployment, minute_ts - minute_ts % 86400, SUM(observed_s), SUM(idle_s),"
        " SUM(gpu_util * util_observed_s), SUM(util_observed_s) FROM gpu_minutes"
        " WHERE minute_ts >= ? AND minute_ts < ? GROUP BY 1, 2",
        (cut, NOW),
    ).fetchall()
    took = Took(time.perf_counter() - began, time.process_time() - cpu)
    connection.close()
    scale = (END - START) / (NOW - cut)
    return Took(took.wall_s * scale, took.cpu_s * scale)


@dataclass(frozen=True)
class Took:
    """Wall-clock and CPU (user + system) seconds of one run; on a shared machine the CPU seconds are
    the steadier figure (the wall clock counts the time other processes held the cores)."""

    wall_s: float
    cpu_s: float


def timed(command: list[str], env: dict[str, str]) -> Took:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)  # noqa: S603
    elapsed = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:2])} failed: {result.stderr.strip()[-400:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Took(elapsed, cpu)


def best(runs: list[Took]) -> Took:
    return Took(min(r.wall_s for r in runs), min(r.cpu_s for r in runs))


def measure(directory: Path, gpus: int) -> dict[str, Took]:
    """Report (every format, and without the HTML's charts), bare GROUP BY and --help for `gpus`."""
    db = directory / f"fleet-{gpus}.db"
    config = directory / f"fleet-{gpus}.toml"
    config.write_text(
        CONFIG.format(db=db)
        + "".join(DEPLOYMENT.format(i=i, gpus=gpus // DEPLOYMENTS) for i in range(DEPLOYMENTS))
    )
    if not db.exists():
        began = time.perf_counter()
        rows = build(db, gpus)
        days = (NOW - minute_cut(gpus)) / 86_400
        print(f"  built: tiers for the month, {rows:,} GPU-minute rows ({days:.1f} days) "
              f"in {time.perf_counter() - began:.0f} s")  # fmt: skip
    bare = best([bare_group_by(db, gpus) for _ in range(3)])
    env = {k: v for k, v in os.environ.items() if k != "AUDITOR_CONFIG"}
    out = directory / f"out-{gpus}"
    command = [str(AUDITOR), "report", "--config", str(config), "--month", MONTH, "--out", str(out)]
    return {
        "help": best([timed([str(AUDITOR), "--help"], env) for _ in range(3)]),
        "report": best([timed([*command, "--format", "html,csv,md,json"], env) for _ in range(2)]),
        "no_html": best([timed([*command, "--format", "csv,md,json"], env) for _ in range(2)]),
        "bare": bare,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--keep", type=Path, default=None, help="build (or reuse) the stores here")
    args = parser.parse_args()
    directory = args.keep or Path(tempfile.mkdtemp(prefix="auditor-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict[str, Took]] = {}
    for gpus in args.gpus:
        print(f"{gpus} GPUs:")
        took = results[gpus] = measure(directory, gpus)
        help_, bare = took["help"], took["bare"]
        print(
            f"  auditor --help: {help_.wall_s:.2f} s wall, {help_.cpu_s:.2f} s CPU; bare GROUP BY over the "
            f"month of minutes (scaled from those kept): {bare.wall_s:.2f} s wall, {bare.cpu_s:.2f} s CPU"
        )
        for key, what in (("report", "every format"), ("no_html", "csv,md,json: no charts")):
            t = took[key]
            print(
                f"  auditor report --month {MONTH} ({what}), whole process, rules included: "
                f"{t.wall_s:.2f} s wall, {t.cpu_s:.2f} s CPU; "
                f"CPU {t.cpu_s / bare.cpu_s:.2f}× the bare GROUP BY, "
                f"{t.cpu_s / help_.cpu_s:.2f}× --help"
            )
    smallest, largest = min(results), max(results)
    for key in ("report", "no_html"):
        growth = results[largest][key].cpu_s / results[smallest][key].cpu_s
        at = results[largest][key].cpu_s
        print(
            f"{key}: from {smallest} to {largest} GPUs {growth:.2f}× CPU "
            f"(target under 2×: {'met' if growth < 2 else 'MISSED'}); at {largest} GPUs {at:.2f} s CPU "
            f"(target under 3 s: {'met' if at < 3 else 'MISSED'})"
        )


if __name__ == "__main__":
    main()
