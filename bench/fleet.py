"""Fleet mode at 1,024 GPUs: PromQL requests, roll-up and report times, peak RSS, against a real
Prometheus backfilled with a month of dcgm-exporter and vLLM history.

The fleet: N GPUs on 8-GPU nodes, in 16 deployments (Kubernetes pods `dN-M`), one vLLM server per
node. Every `--every` minutes (default 5: a month at 1-minute resolution is 44M samples per DCGM
field, too much text for promtool on 2 cores) each GPU has `DCGM_FI_DEV_GPU_UTIL`,
`DCGM_FI_PROF_SM_ACTIVE` and `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` (the reader still sends its 7 DCGM
queries; the other four come back empty), each server its two token counters and running requests.

Measured, each as a whole process where a user would run one:
1. `auditor fleet rollup` of the whole span into SQLite: wall time, PromQL requests, peak RSS;
2. the same window's first chunk read by a naive per-GPU loop (7 queries per GPU with `UUID=`):
   requests and time, extrapolated to the span's chunks (running it whole would take an hour);
3. `auditor report --month` over the rolled-up store: wall time, peak RSS.

    .venv/bin/python -m bench.fleet [--gpus 1024] [--days 30] [--every 5] [--keep DIR]

Targets (issue 15): requests constant in the number of GPUs; the report under 30 s; RSS under 300 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from auditor.config import FleetConfig
from collectors.prometheus import GPU_QUERIES, RANGE, PromAuth, PromQL, connect
from tests.promkit import backfill, serve

AUDITOR = Path(sys.executable).parent / "auditor"
START = datetime(2026, 10, 1, tzinfo=UTC)
DEPLOYMENTS = 16
GPUS_PER_NODE = 8


def uuid(g: int) -> str:
    return f"GPU-{g:08d}-0000-4000-8000-000000000000"


def pod(node: int) -> str:
    """A node's pod: one vLLM server on its 8 GPUs, in deployment `d{node % 16}`."""
    return f"d{node % DEPLOYMENTS}-{node}"


def write_history(out: TextIO, t0: int, gpus: int, minutes: int, every: int) -> int:
    """OpenMetrics for the fleet, family by family (each series' samples in order); returns samples."""
    steps = range(0, minutes, every)
    written = 0

    def gpu_labels(g: int) -> str:
        node = g // GPUS_PER_NODE
        index = g % GPUS_PER_NODE
        return (
            f'{{gpu="{index}",UUID="{uuid(g)}",device="nvidia{index}",modelName="NVIDIA H100 80GB HBM3",'
            f'Hostname="node{node:04d}",namespace="llm",pod="{pod(node)}",container="vllm"}}'
        )

    families = (
        ("DCGM_FI_DEV_GPU_UTIL", "unknown", lambda g, m: float((m * 7 + g * 13) % 100)),
        ("DCGM_FI_PROF_SM_ACTIVE", "unknown", lambda g, m: ((m * 11 + g * 5) % 100) / 100),
        ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "unknown", lambda g, m: 5e9 + 300_000.0 * m),
    )
    for name, kind, value in families:
        out.write(f"# TYPE {name} {kind}\n")
        for g in range(gpus):
            head = name + gpu_labels(g)
            out.writelines(f"{head} {value(g, m)} {t0 + m * 60 + 30}\n" for m in steps)
            written += len(steps)
    servers = range(gpus // GPUS_PER_NODE)
    for family, sample, per_minute in (
        ("vllm:prompt_tokens", "vllm:prompt_tokens_total", 1200.0),
        ("vllm:generation_tokens", "vllm:generation_tokens_total", 300.0),
    ):
        out.write(f"# TYPE {family} counter\n")
        for s in servers:
            head = (
                f'{sample}{{model_name="m",namespace="llm",pod="d{(s * GPUS_PER_NODE) % DEPLOYMENTS}-{s}"}}'
            )
            out.writelines(f"{head} {per_minute * m} {t0 + m * 60 + 30}\n" for m in steps)
            written += len(steps)
    out.write("# TYPE vllm:num_requests_running unknown\n")
    for s in servers:
        head = f'vllm:num_requests_running{{model_name="m",namespace="llm",pod="{pod(s)}"}}'
        out.writelines(f"{head} {float(m % 4)} {t0 + m * 60 + 30}\n" for m in steps)
        written += len(steps)
    out.write("# EOF\n")
    return written


def write_config(path: Path, prom_url: str, db: Path, gpus: int, every: int) -> None:
    text = f'timezone = "UTC"\n[store]\nurl = "sqlite:///{db}"\n[fleet]\nurl = "{prom_url}"\n'
    text += f"max_gap_s = {3 * every * 60}\ntimeout_s = 120\n"
    for d in range(DEPLOYMENTS):
        text += (
            f'\n[[deployments]]\nname = "d{d}"\nmodel = "llama-3-70b"\ngpu_type = "H100"\n'
            f"gpu_count = {max(1, gpus // DEPLOYMENTS)}\n"
            f'prometheus_matchers = {{ namespace = "llm", pod = "~d{d}-.*" }}\n'
            'compare_to = ["openai:gpt-4o"]\ncapacity_tokens_per_s = 20000\n'
            'price = { source = "static", gpu_hourly_usd = 2.99 }\n'
        )
    path.write_text(text)


def run_with_rss(args: list[str]) -> tuple[float, int, str]:
    began = time.monotonic()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # noqa: S603
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - began
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = process.stdout.read(), process.stderr.read()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args[1:3])} failed: {stderr.strip()[-500:]}")
    return wall, usage.ru_maxrss * 1024, stdout


def naive_chunk(prom_url: str, gpus: int, t0: int, chunk_minutes: int) -> tuple[int, float]:
    """A per-GPU loop over one chunk: 7 queries for each GPU's UUID."""
    promql = PromQL(connect(prom_url, PromAuth(), timeout_s=120), retries=0)
    began = time.monotonic()
    for g in range(gpus):
        uuid = f"GPU-{g:08d}-0000-4000-8000-000000000000"
        for function, metric in GPU_QUERIES.values():
            promql.range(
                f'{function}({metric}{{UUID="{uuid}"}}[{RANGE}])', t0 + 60, t0 + chunk_minutes * 60, 60
            )
    return promql.requests, time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, default=1024)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--every", type=int, default=5, help="minutes between samples")
    parser.add_argument(
        "--naive-gpus", type=int, default=None, help="GPUs the naive loop reads (default all)"
    )
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = int(START.timestamp())
    minutes = args.days * 1440
    print(
        f"fleet: {args.gpus} GPUs, {DEPLOYMENTS} deployments, {args.days} days, "
        f"a sample every {args.every} min"
    )

    began = time.monotonic()
    history = work / "history.om"
    with history.open("w") as out:
        samples = write_history(out, t0, args.gpus, minutes, args.every)
    size = history.stat().st_size
    print(
        f"  OpenMetrics written: {samples:,} samples, {size / 2**20:,.0f} MiB, "
        f"{time.monotonic() - began:.1f} s"
    )
    began = time.monotonic()
    tsdb = work / "tsdb"
    shutil.rmtree(tsdb, ignore_errors=True)
    backfill(history, tsdb)
    print(f"  promtool backfill: {time.monotonic() - began:.1f} s")
    history.unlink()

    with serve(tsdb, ready_timeout_s=600) as prom:
        config = work / "fleet.toml"
        db = work / "auditor.db"
        db.unlink(missing_ok=True)
        write_config(config, prom.url, db, args.gpus, args.every)
        end = datetime.fromtimestamp(t0 + minutes * 60, UTC)
        wall, rss, out = run_with_rss(
            [str(AUDITOR), "fleet", "rollup", "--config", str(config), "--from", START.strftime("%Y-%m-%d"),
             "--to", end.strftime("%Y-%m-%dT%H:%M"), "--json"]
        )  # fmt: skip
        figures = json.loads(out)
        print(
            f"  fleet rollup: {wall:.1f} s, {figures['requests']} PromQL requests "
            f"in {figures['chunks']} chunks, {figures['gpu_minutes']:,} GPU-minutes, "
            f"peak RSS {rss / 2**20:.0f} MiB"
        )
        chunk = FleetConfig.model_fields["chunk_minutes"].default  # the one a roll-up uses
        naive_gpus = args.naive_gpus or args.gpus
        requests, seconds = naive_chunk(prom.url, naive_gpus, t0, chunk)
        scale = args.gpus / naive_gpus
        print(
            f"  naive per-GPU loop, one {chunk}-minute chunk: {requests} requests in {seconds:.1f} s for "
            f"{naive_gpus} GPUs; for the span: {round(requests * scale * figures['chunks']):,} requests, "
            f"~{seconds * scale * figures['chunks'] / 60:.0f} min of queries (vs 12 a chunk aggregated)"
        )
        month = START.strftime("%Y-%m")
        wall, rss, _out = run_with_rss(
            [str(AUDITOR), "report", "--month", month, "--config", str(config), "--out", str(work / "report")]
        )
        print(f"  report --month {month}: {wall:.1f} s, peak RSS {rss / 2**20:.0f} MiB")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
