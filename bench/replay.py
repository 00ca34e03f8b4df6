"""`auditor replay --trace` against pandas reading the same trace and summing it per minute.

Writes Azure-format traces (`TIMESTAMP,ContextTokens,GeneratedTokens`, about 300 requests a minute)
of each size asked for, then runs, each as a whole process as a user would: the pandas baseline
(`read_csv(engine="pyarrow")`, `to_datetime`, `groupby` per minute, the least a per-minute replay
must do) and `auditor replay --trace`. Prints CPU seconds (the steadier figure on a shared machine)
beside wall time, the ratios in both, and the peak RSS of each. The traces are written by a child process,
so that this one stays small and the children's peak RSS is their own (Linux carries the parent's
over at fork). Targets (issue 11): replay at most 1.5× pandas, peak RSS flat in trace length.

    .venv/bin/python -m bench.replay [--requests 1000000 5000000] [--runs 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.proc import best, load, run

AUDITOR = Path(sys.executable).parent / "auditor"
PANDAS_BASELINE = """
import sys
import pandas as pd
frame = pd.read_csv(sys.argv[1], engine="pyarrow")
minute = pd.to_datetime(frame["TIMESTAMP"]).dt.floor("min")
sums = frame[["ContextTokens", "GeneratedTokens"]].groupby(minute).agg(["count", "sum"])
print(len(sums), int(sums[("ContextTokens", "sum")].sum()))
"""
ONE_BLAS_THREAD = 'import os\nos.environ.setdefault("OPENBLAS_NUM_THREADS", "1")\n'
"""The console script starts numpy's OpenBLAS with one thread (`auditor.__main__`); a pandas script
starts one per core, which spin for a while: 0.2 s of CPU on two cores, counted in the baseline's CPU
time but not in its wall time. The bench runs the baseline both ways and prints both ratios."""
WRITE_TRACE = """
import sys
import numpy as np
import pandas as pd
path, requests = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(1)
start = pd.Timestamp("2023-11-16 18:15:46")
gaps_s = rng.exponential(60 / 300, size=requests)
stamps = start + pd.to_timedelta(np.cumsum(gaps_s), unit="s")
pd.DataFrame(
    {
        "TIMESTAMP": stamps.strftime("%Y-%m-%d %H:%M:%S.%f"),
        "ContextTokens": rng.integers(1, 4000, size=requests),
        "GeneratedTokens": rng.integers(1, 600, size=requests),
    }
).to_csv(path, index=False)
"""


def write_trace(path: Path, requests: int) -> None:
    subprocess.run([sys.executable, "-c", WRITE_TRACE, str(path), str(requests)], check=True)  # noqa: S603


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--runs", type=int, default=2, help="runs of each command (the best is kept)")
    args = parser.parse_args()
    print(f"load average before: {load()}")
    with tempfile.TemporaryDirectory(prefix="auditor-bench-") as scratch:
        for requests in args.requests:
            trace = Path(scratch) / f"trace-{requests}.csv"
            write_trace(trace, requests)
            size_mib = trace.stat().st_size / 2**20
            baseline = [sys.executable, "-c", PANDAS_BASELINE, str(trace)]
            one_thread = [sys.executable, "-c", ONE_BLAS_THREAD + PANDAS_BASELINE, str(trace)]
            replay_command = [
                str(AUDITOR), "replay", "--trace", str(trace), "--gpus", "8", "--gpu-type", "H100",
                "--gpu-hourly-usd", "3", "--json",
            ]  # fmt: skip
            # Alternated, pandas then replay each round: the two bests come from the same minutes of
            # a machine whose speed drifts.
            rounds = [(run(baseline), run(one_thread), run(replay_command)) for _ in range(args.runs)]
            replay = best([r for *_, r in rounds])
            print(f"{requests:>10,} requests ({size_mib:,.0f} MiB): auditor replay {replay}")
            for label, pandas in (
                ("pandas", best([p for p, *_ in rounds])),
                ("pandas, one BLAS thread", best([p for _, p, _ in rounds])),
            ):
                cpu, wall = replay.cpu_s / pandas.cpu_s, replay.wall_s / pandas.wall_s
                print(
                    f"{'':>10} {label:<24} {pandas}: replay {cpu:.2f}× CPU "
                    f"(target ≤ 1.5×: {'met' if cpu <= 1.5 else 'MISSED'}), "
                    f"{wall:.2f}× wall ({'met' if wall <= 1.5 else 'MISSED'})"
                )
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
