"""Roll-up throughput: an hour of 10 s samples for N GPUs and their servers, into a SQLite store.

Prints the insert and roll-up times and rows per second. A figure to watch, not a test.

    .venv/bin/python -m bench.rollup [GPUS]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from auditor.model import GpuSample, ServerSample
from auditor.rollup import run_rollup
from auditor.store import Store

INTERVAL_S = 10
HOUR_S = 3600
T0 = 1_790_000_040


def main(gpus: int = 8) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        store = Store.open(f"sqlite:///{Path(scratch) / 'bench.db'}")
        ticks = range(HOUR_S // INTERVAL_S + 1)
        gpu_samples = [
            GpuSample(ts=T0 + INTERVAL_S * t, host="h1", gpu_uuid=f"GPU-{g}", gpu_index=g, deployment="llama",
                      util_pct=float((t * 7 + g) % 100), power_w=350.0, energy_j=350.0 * INTERVAL_S * t)
            for g in range(gpus)
            for t in ticks
        ]  # fmt: skip
        server_samples = [
            ServerSample(ts=T0 + INTERVAL_S * t, host="h1", deployment="llama", instance="http://h1:8000/metrics",
                         prompt_tokens_total=1000.0 * t, generation_tokens_total=200.0 * t,
                         requests_running=float(t % 3), requests_waiting=0.0, kv_cache_usage=0.4)
            for t in ticks
        ]  # fmt: skip
        started = time.perf_counter()
        store.add_gpu_samples(gpu_samples)
        store.add_server_samples(server_samples)
        inserted = time.perf_counter()
        gpu_rows, deployment_rows = run_rollup(
            store,
            T0,
            T0 + HOUR_S,
            max_gap_s=30,
            idle_threshold=0.05,
            capacity_tokens_per_s=lambda _: 30_000.0,
        )
        rolled = time.perf_counter()
        samples = len(gpu_samples) + len(server_samples)
        print(f"GPUs: {gpus}; samples: {samples:,} (1 h at {INTERVAL_S} s)")
        print(f"insert: {inserted - started:.3f} s ({samples / (inserted - started):,.0f} samples/s)")
        print(
            f"roll-up: {rolled - inserted:.3f} s for {gpu_rows} GPU-minutes and "
            f"{deployment_rows} deployment-minutes ({samples / (rolled - inserted):,.0f} samples/s)"
        )
        store.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
