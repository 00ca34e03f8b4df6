"""Benchmark: the monthly report over a month of minute roll-ups for 64 GPUs (about 2.9M rows) in SQLite.

Prints the time to assemble the report (SQL sums, days, heat maps) and to write every format, the
process's peak RSS, the time of a bare SQL GROUP BY over the same rows, and their ratio.
Targets: under 5 s, within 3× of the bare query, under 1 GB.

    .venv/bin/python -m bench.report [--gpus 64] [--db PATH]
"""

from __future__ import annotations

import argparse
import random
import resource
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from auditor.config import Config
from auditor.gpu_prices import load_gpu_prices
from auditor.prices import ApiPriceCatalog
from auditor.store import Store
from reports.csv_export import write_csv
from reports.files import write_atomic
from reports.html import write_html
from reports.json_form import report_object
from reports.markdown import render_markdown
from reports.monthly import build_month_report

MONTH = "2026-10"
START = datetime(2026, 10, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)
GPUS_PER_DEPLOYMENT = 8


def config(db: Path, gpus: int) -> Config:
    deployments = [
        {
            "name": f"d{i}",
            "model": "llama-3-70b",
            "gpu_type": "H100",
            "gpu_count": GPUS_PER_DEPLOYMENT,
            "prometheus_matchers": {"deployment": f"d{i}"},
            "price": {"source": "static", "gpu_hourly_usd": "2.99"},
            "compare_to": ["together:meta-llama/Llama-3-70b-chat-hf", "openai:gpt-4o"],
            "capacity_tokens_per_s": 20000,
        }
        for i in range(gpus // GPUS_PER_DEPLOYMENT)
    ]
    return Config.model_validate({"store": {"url": f"sqlite:///{db}"}, "deployments": deployments})


def build(db: Path, gpus: int) -> int:
    """Write the month's rows straight through sqlite3, a day at a time (the build is not measured)."""
    Store.open(f"sqlite:///{db}").close()
    rng = random.Random(1)
    rows = 0
    connection = sqlite3.connect(db)
    start, end = int(START.timestamp()), int(END.timestamp())
    for day in range(start, end, 86_400):
        gpu_rows = []
        server_rows = []
        for minute in range(day, day + 86_400, 60):
            for d in range(gpus // GPUS_PER_DEPLOYMENT):
                busy = rng.random()
                server_rows.append(
                    (minute, f"d{d}", 1, 60.0, 20_000, 5_000, 60 * busy, None, None, None, None, 480.0,
                     busy, busy * 0.6, busy, 0.02)
                )  # fmt: skip
                for g in range(GPUS_PER_DEPLOYMENT):
                    index = d * GPUS_PER_DEPLOYMENT + g
                    gpu_rows.append(
                        (minute, "h", f"GPU-{index}", g, f"d{d}", 60.0, 60.0, 60 * (1 - busy), 60.0,
                         busy, 1.0, busy * 0.6, 18_000.0, 300.0, None, None)
                    )  # fmt: skip
        marks = ",".join("?" * 16)
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
        (START.timestamp(), END.timestamp()),
    ).fetchall()
    elapsed = time.perf_counter() - began
    connection.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--db", type=Path, default=None, help="reuse or build the store here")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="auditor-bench-"))
    db = args.db or scratch / "bench.db"
    if not db.exists():
        began = time.perf_counter()
        rows = build(db, args.gpus)
        print(f"built {rows:,} GPU-minute rows in {time.perf_counter() - began:.1f} s ({db})")
    cfg = config(db, args.gpus)
    store = Store.open(cfg.store.url)
    apis, gpus = ApiPriceCatalog(), load_gpu_prices()
    bare_s = min(bare_group_by(db) for _ in range(3))

    began = time.perf_counter()
    report = build_month_report(
        store=store, config=cfg, month=MONTH, now=datetime(2026, 11, 5, tzinfo=UTC),
        api_catalog=apis, gpu_catalog=gpus, findings=[],
    )  # fmt: skip
    assembled_s = time.perf_counter() - began
    write_csv(report, scratch, "bench")
    write_atomic(scratch / "bench.md", render_markdown(report))
    write_atomic(scratch / "bench.json", str(report_object(report)))
    data_s = time.perf_counter() - began
    write_html(report, scratch / "bench.html")
    total_s = time.perf_counter() - began
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(
        f"deployments: {len(report.deployments)}, GPUs: {args.gpus}, total {report.total_cost_usd:,.2f} USD"
    )
    print(f"bare SQL GROUP BY over gpu_minutes:     {bare_s:6.2f} s")
    ratio = assembled_s / bare_s
    print(f"report assembled (SQL sums, days, map): {assembled_s:6.2f} s  ({ratio:.2f}× the bare query)")
    print(f"  + CSV, Markdown, JSON written:        {data_s:6.2f} s  ({data_s / bare_s:.2f}×)")
    charts = 4 * len(report.deployments)
    print(f"  + HTML with {charts} SVG charts:          {total_s:6.2f} s  ({total_s / bare_s:.2f}×)")
    print(f"peak RSS: {peak_mib:,.0f} MiB")
    verdicts = (
        f"under 5 s {'met' if total_s < 5 else 'MISSED'}",
        f"within 3x of the bare query {'met' if data_s < 3 * bare_s else 'MISSED'}",
        f"under 1 GB {'met' if peak_mib < 1024 else 'MISSED'}",
    )
    print("targets: " + "; ".join(verdicts))


if __name__ == "__main__":
    main()
