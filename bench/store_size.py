"""Bytes the store takes: per 8-GPU host-year, and for 1,024 GPUs over a month, with the roll-up tiers.

Writes `--days` of realistic minute roll-ups for `--gpus` GPUs (two deployments per 8 GPUs) through
the daemon's own write path (`Store.replace_minutes`, which also writes the tiers), measures each
table's bytes per row with SQLite's `dbstat` (indexes included), then scales to a year of one 8-GPU
host and a month of 1,024 GPUs, keeping minute rows for the store's default window at that size
(`store.minute_retention_days` unset: 14 days, fewer once the GPU minutes would pass
`store.minute_rows_max`) or `--minute-days`, and the tiers for the whole period. The old layout
(every GPU-minute kept 397 days) is printed beside it.
Targets (issue 11): under 150 MB per 8-GPU host-year; under 1.5 GB for 1,024 GPUs × one month.

    .venv/bin/python -m bench.store_size [--gpus 8] [--days 7] [--minute-days DAYS]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from auditor.model import DeploymentMinute, GpuMinute
from auditor.store import MINUTE_RETENTION_DAYS, Store, fleet_minute_window_s

T0 = 1_790_000_000 - 1_790_000_000 % 86_400
MB = 1e6
TABLES = ("gpu_minutes", "deployment_minutes", "gpu_hours", "deployment_quarter_hours")


def day_rows(day_ts: int, gpus: int, rng: random.Random) -> tuple[list[GpuMinute], list[DeploymentMinute]]:
    gpu_rows, deployment_rows = [], []
    deployments = max(1, gpus // 4)
    for minute in range(day_ts, day_ts + 86_400, 60):
        for d in range(deployments):
            busy = rng.random()
            deployment_rows.append(
                DeploymentMinute(
                    minute_ts=minute, deployment=f"deployment-{d}", instances=1, server_observed_s=60.0,
                    prompt_tokens=rng.randrange(200_000), generation_tokens=rng.randrange(50_000),
                    request_busy_s=60 * busy, requests_running_mean=rng.random() * 8,
                    requests_waiting_mean=rng.random(), kv_cache_mean=rng.random(), kv_cache_max=rng.random(),
                    gpu_observed_s=240.0, gpu_util=rng.random(), sm_active=rng.random(), request_busy=busy,
                    throughput_util=rng.random(),
                )
            )  # fmt: skip
        for g in range(gpus):
            util = rng.random()
            gpu_rows.append(
                GpuMinute(
                    minute_ts=minute, host="gpu-host-01.example.internal",
                    gpu_uuid=f"GPU-{g:08x}-5f3c-11ee-b962-0242ac120002", gpu_index=g,
                    deployment=f"deployment-{g // 4}", observed_s=60.0, util_observed_s=60.0,
                    idle_s=60 * (1 - util), loaded_s=60.0, gpu_util=util, gpu_util_max=min(1.0, util * 1.3),
                    sm_active=util * 0.7, energy_j=rng.uniform(5_000, 42_000),
                    power_mean_w=rng.uniform(90, 700),
                    mem_used_max_bytes=rng.randrange(70 * 2**30, 80 * 2**30), mem_total_bytes=80 * 2**30,
                )
            )  # fmt: skip
    return gpu_rows, deployment_rows


def bytes_by_table(db: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes (table and its indexes) and rows of each roll-up table."""
    connection = sqlite3.connect(db)
    owner = dict(
        connection.execute("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')")
    )
    size: dict[str, int] = dict.fromkeys(TABLES, 0)
    for name, pages in connection.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
        table = owner.get(name, name)
        if table in size:
            size[table] += int(pages)
    rows = {t: int(connection.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in TABLES}  # noqa: S608
    connection.close()
    return size, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument(
        "--minute-days",
        type=float,
        default=None,
        help="minute window; default: the store's for the fleet's size (14 days, fewer past the row budget)",
    )
    args = parser.parse_args()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="auditor-bench-") as scratch:
        db = Path(scratch) / "size.db"
        store = Store.open(f"sqlite:///{db}")
        began = time.perf_counter()
        for day in range(args.days):
            gpu_rows, deployment_rows = day_rows(T0 + day * 86_400, args.gpus, rng)
            store.replace_minutes(T0 + day * 86_400, T0 + (day + 1) * 86_400, gpu_rows, deployment_rows)
        written_s = time.perf_counter() - began
        store.close()
        size, rows = bytes_by_table(db)
    per_row = {t: size[t] / rows[t] for t in TABLES if rows[t]}
    gpu_minute_rows = args.gpus * args.days * 1440
    print(
        f"wrote {args.days} days for {args.gpus} GPUs ({gpu_minute_rows:,} GPU-minutes, tiers included) "
        f"in {written_s:.1f} s ({written_s / gpu_minute_rows * 1e6:.1f} µs a GPU-minute)"
    )
    for table in TABLES:
        print(
            f"  {table:<26} {rows[table]:>10,} rows  {per_row.get(table, 0):6.1f} bytes a row"
            " (indexes included)"
        )

    def footprint(gpus: int, days: float, minute_days: float) -> float:
        deployments = max(1, gpus // 4)
        kept = min(days, minute_days)
        return (
            gpus * kept * 1440 * per_row["gpu_minutes"]
            + deployments * kept * 1440 * per_row["deployment_minutes"]
            + gpus * days * 24 * per_row["gpu_hours"]
            + deployments * days * 96 * per_row["deployment_quarter_hours"]
        )

    def old_footprint(gpus: int, days: float) -> float:
        deployments = max(1, gpus // 4)
        return days * 1440 * (gpus * per_row["gpu_minutes"] + deployments * per_row["deployment_minutes"])

    host_days = args.minute_days or fleet_minute_window_s(8) / 86_400
    fleet_days = args.minute_days or fleet_minute_window_s(1024) / 86_400
    host_year = footprint(8, 365, host_days)
    fleet_month = footprint(1024, 31, fleet_days)
    print(
        f"8-GPU host-year: {host_year / MB:,.0f} MB with minutes kept {host_days:.1f} days "
        f"(every minute kept: {old_footprint(8, 365) / MB:,.0f} MB); target under 150 MB: "
        f"{'met' if host_year < 150 * MB else 'MISSED'}"
    )
    print(
        f"1,024 GPUs × one month: {fleet_month / MB:,.0f} MB with minutes kept {fleet_days:.1f} days "
        f"(14 days: {footprint(1024, 31, MINUTE_RETENTION_DAYS) / MB:,.0f} MB; every minute kept: "
        f"{old_footprint(1024, 31) / MB:,.0f} MB); target under 1,500 MB: "
        f"{'met' if fleet_month < 1500 * MB else 'MISSED'}"
    )
    fits = max((d for d in range(1, 32) if footprint(1024, 31, d) < 1500 * MB), default=0)
    print(f"  minute window that keeps 1,024 GPUs × one month under 1.5 GB: {fits} days")


if __name__ == "__main__":
    main()
