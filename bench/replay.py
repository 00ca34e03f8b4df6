"""`auditor replay --trace` against pandas reading the same trace and summing it per minute.

Writes Azure-format traces (`TIMESTAMP,ContextTokens,GeneratedTokens`, about 300 requests a minute)
of each size asked for, then runs, each as a whole process as a user would: the pandas baseline
(`read_csv(engine="pyarrow")`, `to_datetime`, `groupby` per minute) and `auditor replay --trace`.
Prints wall time, the ratio, and peak RSS of each. Targets (issue 11): replay at most 1.5× pandas,
peak RSS flat in trace length.

    .venv/bin/python -m bench.replay [--requests 1000000 5000000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

AUDITOR = Path(sys.executable).parent / "auditor"
PANDAS_BASELINE = """
import sys
import pandas as pd
frame = pd.read_csv(sys.argv[1], engine="pyarrow")
minute = pd.to_datetime(frame["TIMESTAMP"]).dt.floor("min")
sums = frame[["ContextTokens", "GeneratedTokens"]].groupby(minute).agg(["count", "sum"])
print(len(sums), int(sums[("ContextTokens", "sum")].sum()))
"""


def write_trace(path: Path, requests: int) -> None:
    rng = np.random.default_rng(1)
    start = pd.Timestamp("2023-11-16 18:15:46")
    gaps_s = rng.exponential(60 / 300, size=requests)
    stamps = start + pd.to_timedelta(np.cumsum(gaps_s), unit="s")
    frame = pd.DataFrame(
        {
            "TIMESTAMP": stamps.strftime("%Y-%m-%d %H:%M:%S.%f"),
            "ContextTokens": rng.integers(1, 4000, size=requests),
            "GeneratedTokens": rng.integers(1, 600, size=requests),
        }
    )
    frame.to_csv(path, index=False)


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one whole process."""
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)  # noqa: S603  (our own commands)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - began
    if status != 0:
        raise SystemExit(f"{' '.join(command[:2])} failed (wait status {status})")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, nargs="+", default=[1_000_000, 5_000_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="auditor-bench-") as scratch:
        for requests in args.requests:
            trace = Path(scratch) / f"trace-{requests}.csv"
            write_trace(trace, requests)
            size_mib = trace.stat().st_size / 2**20
            pandas_s, pandas_mib = min(
                timed([sys.executable, "-c", PANDAS_BASELINE, str(trace)]) for _ in range(2)
            )
            replay_command = [
                str(AUDITOR), "replay", "--trace", str(trace), "--gpus", "8", "--gpu-type", "H100",
                "--gpu-hourly-usd", "3", "--json",
            ]  # fmt: skip
            replay_s, replay_mib = min(timed(replay_command) for _ in range(2))
            ratio = replay_s / pandas_s
            print(
                f"{requests:>10,} requests ({size_mib:,.0f} MiB): pandas {pandas_s:5.2f} s, "
                f"{pandas_mib:,.0f} MiB peak; auditor replay {replay_s:5.2f} s, {replay_mib:,.0f} MiB peak; "
                f"ratio {ratio:.2f}× (target ≤ 1.5×: {'met' if ratio <= 1.5 else 'MISSED'})"
            )


if __name__ == "__main__":
    main()
