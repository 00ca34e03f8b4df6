"""Cost of one NVML sampling pass (our Python overhead) for 8 fake GPUs, and for the real GPUs if any.

    .venv/bin/python -m bench.sampling [--passes 2000]

Target (issue 3): under 2 ms per pass for 8 GPUs on real NVML. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

from collectors.interface import CollectorUnavailable
from collectors.nvml import GpuDeploymentMap, NvmlCollector, load_pynvml
from tests.hostkit import load_fake_nvml

PROFILES = ("h100_load", "h100_idle", "h200_load", "h200_idle")


def time_passes(collector: NvmlCollector, passes: int) -> list[float]:
    collector.collect()  # init, GPM priming
    timings = []
    for _ in range(passes):
        start = time.perf_counter()
        collector.collect()
        timings.append(time.perf_counter() - start)
    return timings


def report(label: str, timings: list[float]) -> None:
    ms = sorted(t * 1000 for t in timings)
    print(
        f"{label}: {len(ms)} passes, mean {statistics.fmean(ms):.3f} ms, "
        f"median {statistics.median(ms):.3f} ms, "
        f"p99 {ms[int(len(ms) * 0.99) - 1]:.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--passes", type=int, default=2000)
    args = parser.parse_args()
    deployments = GpuDeploymentMap([("bench", "bench-host", None)])
    fake = load_fake_nvml({"gpus": [{"profile": PROFILES[i % 4]} for i in range(8)]})
    collector = NvmlCollector(fake, host="bench-host", deployments=deployments, interval_s=10)
    report(
        "8 fake GPUs (fake pynvml: Python overhead of the collector and the fake)",
        time_passes(collector, args.passes),
    )
    real = NvmlCollector(load_pynvml(), host="bench-host", deployments=deployments, interval_s=10)
    try:
        status = real.status()
        if status.available and status.gpu_count:
            report(f"{status.gpu_count} real GPU(s)", time_passes(real, min(args.passes, 500)))
        else:
            print(f"real NVML: not measured ({status.reason or 'no GPU'})")
    except CollectorUnavailable as exc:
        print(f"real NVML: not measured ({exc.message})")
    finally:
        real.close()


if __name__ == "__main__":
    main()
