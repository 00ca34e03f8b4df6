"""Fleet mode at 1,024 GPUs: PromQL requests, roll-up and report times, peak RSS, against a real
Prometheus backfilled with a month of dcgm-exporter and vLLM history and a real PostgreSQL store.

The fleet: N GPUs on 8-GPU nodes, in 16 deployments (Kubernetes pods `dN-M`), one vLLM server per
node. Every `--every` minutes (default 5: a month at 1-minute resolution is 44M samples per DCGM
field, five times the 5-minute backfill's 6 minutes on this machine's 2 shared cores) each GPU has
`DCGM_FI_DEV_GPU_UTIL`, `DCGM_FI_PROF_SM_ACTIVE` and `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` (the
reader still sends its 8 DCGM queries; the other five come back empty), each server its two token
counters and running requests.
History is backfilled a day at a time (promtool reads a whole file into memory), the next day's text
written while promtool reads the last.

Measured, each as a whole process where a user would run one, with CPU seconds beside wall time (the
machine is shared: CPU is the figure to trust; the Prometheus and PostgreSQL servers' CPU is read
from /proc, a server's own and its reaped children's):
1. `auditor fleet rollup` of the whole span into the store: wall, CPU, PromQL requests, peak RSS;
2. the same window's first chunk read by a naive per-GPU loop (the 8 DCGM queries per GPU, `UUID=`):
   requests and time, extrapolated to the span's chunks (running it whole would take hours);
3. `auditor report --month` over the rolled-up store: wall, CPU, peak RSS; its observed GPU-hours
   and tokens checked against the generated history.

    .venv/bin/python -m bench.fleet [--gpus 1024] [--days 30] [--every 5] [--store postgresql|sqlite]

Targets (issue 15): requests constant in the number of GPUs; the report under 30 s; RSS under 300 MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from auditor.config import FleetConfig
from collectors.prometheus import FleetReader, PromAuth, PromQL, connect
from tests.pgkit import running_postgres, server_pid
from tests.promkit import PROMTOOL, serve

AUDITOR = Path(sys.executable).parent / "auditor"
START = datetime(2026, 10, 1, tzinfo=UTC)
DEPLOYMENTS = 16
GPUS_PER_NODE = 8


def uuid(g: int) -> str:
    return f"GPU-{g:08d}-0000-4000-8000-000000000000"


def pod(node: int) -> str:
    """A node's pod: one vLLM server on its 8 GPUs, in deployment `d{node % 16}`."""
    return f"d{node % DEPLOYMENTS}-{node}"


def write_history(out: TextIO, t0: int, gpus: int, minutes: range, every: int) -> int:
    """OpenMetrics for the fleet's minutes `minutes` (from t0), family by family (each series' samples
    in order); returns the samples written. Values depend on the minute only, so days join up."""
    steps = range(minutes.start + (-minutes.start) % every, minutes.stop, every)
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
            head = f'{sample}{{model_name="m",namespace="llm",pod="{pod(s)}"}}'
            out.writelines(f"{head} {per_minute * m} {t0 + m * 60 + 30}\n" for m in steps)
            written += len(steps)
    out.write("# TYPE vllm:num_requests_running unknown\n")
    for s in servers:
        head = f'vllm:num_requests_running{{model_name="m",namespace="llm",pod="{pod(s)}"}}'
        out.writelines(f"{head} {float(m % 4)} {t0 + m * 60 + 30}\n" for m in steps)
        written += len(steps)
    out.write("# EOF\n")
    return written


def backfill_days(work: Path, tsdb: Path, t0: int, gpus: int, days: int, every: int) -> int:
    """Each day's OpenMetrics backfilled by its own promtool, the next day written meanwhile."""
    tsdb.mkdir(parents=True, exist_ok=True)
    samples = 0
    running: tuple[subprocess.Popen[bytes], Path] | None = None
    for day in range(days):
        text = work / f"history-{day:02d}.om"
        with text.open("w") as out:
            samples += write_history(out, t0, gpus, range(day * 1440, (day + 1) * 1440), every)
        if running is not None:
            _wait_promtool(*running)
        command = [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=744h"]
        process = subprocess.Popen([*command, str(text), str(tsdb)], stdout=subprocess.DEVNULL)  # noqa: S603
        running = (process, text)
    if running is not None:
        _wait_promtool(*running)
    return samples


def _wait_promtool(process: subprocess.Popen[bytes], text: Path) -> None:
    if process.wait() != 0:
        raise SystemExit(f"promtool failed on {text}")
    text.unlink()


def write_config(
    path: Path, prom_url: str, store_url: str, gpus: int, every: int, chunk_minutes: int
) -> None:
    text = f'timezone = "UTC"\n[store]\nurl = "{store_url}"\n[fleet]\nurl = "{prom_url}"\n'
    text += f"chunk_minutes = {chunk_minutes}\n"
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


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def server_cpu_s(pid: int | None) -> float:
    """A server's CPU seconds so far: its own and its reaped children's (PostgreSQL's backends)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


def own_cpu_s() -> float:
    """This process's CPU seconds and its waited-for children's (promtool, the auditor commands)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Phase:
    """Wall and CPU seconds of a phase: this process with its children, and the two servers."""

    servers: dict[str, int | None]
    wall: float = 0.0
    cpu: float = 0.0
    server_cpu: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> Phase:
        self._began = (time.monotonic(), own_cpu_s(), {n: server_cpu_s(p) for n, p in self.servers.items()})
        return self

    def __exit__(self, *_exc: object) -> None:
        time.sleep(0.5)  # a closed connection's backend is reaped, its CPU counted by the postmaster
        wall, cpu, servers = self._began
        self.wall = time.monotonic() - wall
        self.cpu = own_cpu_s() - cpu
        self.server_cpu = {n: server_cpu_s(p) - servers[n] for n, p in self.servers.items()}

    def __str__(self) -> str:
        servers = ", ".join(f"{n} {s:.1f}" for n, s in self.server_cpu.items())
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        return f"{self.wall:.1f} s wall, CPU {self.cpu:.1f} s (+ {servers}), load {load}"


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
    """A per-GPU loop over one chunk: the reader's DCGM queries, one GPU's `UUID` at a time."""
    promql = PromQL(connect(prom_url, PromAuth(), timeout_s=120), retries=0)
    began = time.monotonic()
    for g in range(gpus):
        for query in FleetReader(promql, [], gpu_matchers={"UUID": uuid(g)}).gpu_queries().values():
            promql.range(query, t0 + 60, t0 + chunk_minutes * 60, 60)
    return promql.requests, time.monotonic() - began


def check_report(summary: Path, gpus: int, minutes: int, every: int) -> None:
    """The report's observed GPU-hours and tokens per deployment equal those of the generated history
    (all within the month): each GPU observed from its first point to its last, each server's counters
    grown by their rate over the same minutes."""
    span = (minutes - 1) // every * every  # minutes between a series' first and last point
    nodes = gpus // GPUS_PER_NODE
    wrong = []
    checked = 0
    with summary.open() as rows:
        for row in csv.DictReader(rows):
            d = int(row["deployment"][1:])
            servers = sum(1 for node in range(nodes) if node % DEPLOYMENTS == d)
            if servers == 0:
                continue  # a fleet under 16 nodes leaves deployments without GPUs: no data
            checked += 1
            want = {
                "observed_gpu_hours": servers * GPUS_PER_NODE * span / 60,
                "prompt_tokens": servers * 1200 * span,
                "generation_tokens": servers * 300 * span,
            }
            for key, value in want.items():
                if not math.isclose(float(row[key]), value, rel_tol=1e-9, abs_tol=1e-6):
                    wrong.append(f"{row['deployment']} {key}: {row[key]}, expected {value}")
    if wrong:
        raise SystemExit("the report disagrees with the generated history:\n  " + "\n  ".join(wrong))
    print(f"  report figures equal the generated history (observed GPU-hours, tokens): {checked} deployments")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, default=1024)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--every", type=int, default=5, help="minutes between samples")
    parser.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument(
        "--naive-gpus", type=int, default=None, help="GPUs the naive loop reads (default all)"
    )
    parser.add_argument(
        "--chunk-minutes",
        type=int,
        default=FleetConfig.model_fields["chunk_minutes"].default,
        help="fleet.chunk_minutes",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the TSDB here (and reuse it)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = int(START.timestamp())
    minutes = args.days * 1440
    print(
        f"fleet: {args.gpus} GPUs, {DEPLOYMENTS} deployments, {args.days} days, a sample every "
        f"{args.every} min, store {args.store}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    tsdb = work / "tsdb"
    done = work / f"tsdb-{args.gpus}-{args.days}-{args.every}.done"
    if not done.exists():
        shutil.rmtree(tsdb, ignore_errors=True)
        with Phase({}) as phase:
            samples = backfill_days(work, tsdb, t0, args.gpus, args.days, args.every)
        done.touch()
        print(f"  backfill, a day at a time: {samples:,} samples; {phase}")
    with contextlib.ExitStack() as stack:
        prom = stack.enter_context(serve(tsdb, ready_timeout_s=600))
        if args.store == "postgresql":
            store_url = stack.enter_context(running_postgres())
        else:
            (work / "auditor.db").unlink(missing_ok=True)
            store_url = f"sqlite:///{work / 'auditor.db'}"
        servers = {"prometheus": prom.process.pid, "postgresql": server_pid(store_url)}
        config = work / "fleet.toml"
        write_config(config, prom.url, store_url, args.gpus, args.every, args.chunk_minutes)
        end = datetime.fromtimestamp(t0 + minutes * 60, UTC)
        with Phase(servers) as phase:
            window = ["--from", START.strftime("%Y-%m-%d"), "--to", end.strftime("%Y-%m-%dT%H:%M")]
            _wall, rss, out = run_with_rss(
                [str(AUDITOR), "fleet", "rollup", "--config", str(config), *window, "--json"]
            )
        figures = json.loads(out)
        gpu_minutes = figures["gpu_minutes"]
        per_minute = (phase.cpu + sum(phase.server_cpu.values())) / max(gpu_minutes, 1) * 1e6
        print(
            f"  fleet rollup: {figures['requests']} PromQL requests in {figures['chunks']} chunks, "
            f"{gpu_minutes:,} GPU-minutes, peak RSS {rss / 2**20:.0f} MiB; {phase}; "
            f"{per_minute:.1f} us CPU per GPU-minute (all processes)"
        )
        chunk = args.chunk_minutes
        naive_gpus = args.naive_gpus or args.gpus
        with Phase(servers) as phase:
            requests, _seconds = naive_chunk(prom.url, naive_gpus, t0, chunk)
        scale = args.gpus / naive_gpus * figures["chunks"]
        print(
            f"  naive per-GPU loop, one {chunk}-minute chunk of {naive_gpus} GPUs: {requests:,} requests; "
            f"{phase}; for the span: {round(requests * scale):,} requests, "
            f"~{phase.wall * scale / 60:.0f} min "
            f"(vs {figures['requests']} aggregated)"
        )
        month = START.strftime("%Y-%m")
        with Phase(servers) as phase:
            report = ["report", "--month", month, "--config", str(config), "--out", str(work / "report")]
            _wall, rss, _out = run_with_rss([str(AUDITOR), *report])
        print(f"  report --month {month}: peak RSS {rss / 2**20:.0f} MiB; {phase}")
        if args.days <= 31:
            check_report(work / "report" / f"gpu-report-{month}-summary.csv", args.gpus, minutes, args.every)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
