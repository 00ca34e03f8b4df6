"""FOCUS import speed and memory: a bill of `--rows` rows in the FOCUS 1.0 sample's shape (its 43
columns, its values), `--gpu-share` of them GPU instance-hours, as Parquet and as CSV.gz.

For each format it runs, each in a fresh process: our read (`FocusImport.read_file`: projected Arrow
batches, the GPU filter in Arrow, exact Decimals, summing per charge period × resource), and a bare
`pandas.read_parquet` / `pandas.read_csv` of the same columns; and prints rows/s, peak RSS, and the
ratio of our time to the bare read's. Targets (issue 10): Parquet at least 1M rows/s; peak RSS under
500 MiB whatever the file size. Then `auditor billing import` of the file as a user runs it (start-up,
read, attribution, the store's transaction) into a new SQLite store, and again (every line unchanged).

    .venv/bin/python -m bench.focus_import [--rows 5000000] [--gpu-share 0.05] [--dir DIR]
        [--keep DIR] [--repeat N]

Each figure comes with CPU seconds (user + system, `resource.getrusage`) beside wall time, and the
ratio to the bare read measured in the same run: on a shared machine the CPU figures are the ones to
trust.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bench.proc import Run, run

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "focus" / "focus_sample.csv"
CHUNK = 250_000
MIB = 1024 * 1024


def _sample() -> pa.Table:
    table = pacsv.read_csv(
        SAMPLE,
        convert_options=pacsv.ConvertOptions(
            column_types={},
            strings_can_be_null=False,
            null_values=[],
        ),
        read_options=pacsv.ReadOptions(autogenerate_column_names=False),
    )
    return table.cast(pa.schema([pa.field(n, pa.string()) for n in table.schema.names]))


def generate(directory: Path, rows: int, gpu_share: float) -> tuple[Path, Path]:
    """The bill as Parquet and CSV.gz, written a chunk at a time (memory stays flat)."""
    sample = _sample()
    description = sample.column("ChargeDescription").to_pylist()
    gpu_rows = np.array([i for i, d in enumerate(description) if " g5." in d or " g3." in d])
    other_rows = np.array([i for i in range(sample.num_rows) if i not in set(gpu_rows.tolist())])
    rng = np.random.default_rng(7)
    parquet_path, csv_path = directory / "bill.parquet", directory / "bill.csv.gz"
    writer = pq.ParquetWriter(str(parquet_path), sample.schema, compression="snappy")
    # zlib's default level, as `gzip` writes (Arrow's own gzip stream writes level 9: 3x slower here).
    sink = gzip.open(csv_path, "wb", compresslevel=6)  # noqa: SIM115  (closed below, after the writer)
    csv_writer = pacsv.CSVWriter(sink, sample.schema)
    hours = np.array([f"2024-09-{d:02d} {h:02d}:00:00" for d in range(1, 31) for h in range(24)])
    ends = np.array(
        [f"2024-09-{d:02d} {h + 1:02d}:00:00" if h < 23 else f"2024-09-{d + 1:02d} 00:00:00"
         for d in range(1, 31) for h in range(24)]
    )  # fmt: skip
    ends[-1] = "2024-10-01 00:00:00"
    written = 0
    while written < rows:
        n = min(CHUNK, rows - written)
        is_gpu = rng.random(n) < gpu_share
        picks = np.where(is_gpu, rng.choice(gpu_rows, n), rng.choice(other_rows, n))
        chunk = sample.take(pa.array(picks))
        hour = rng.integers(0, len(hours), n)
        resource = np.char.add("i-", rng.integers(0, 2_000, n).astype(str))
        columns = {name: chunk.column(name) for name in chunk.schema.names}
        columns["ChargePeriodStart"] = pa.chunked_array([pa.array(hours[hour])])
        columns["ChargePeriodEnd"] = pa.chunked_array([pa.array(ends[hour])])
        columns["ResourceId"] = pa.chunked_array(
            [pa.array(np.where(is_gpu, resource, chunk.column("ResourceId")))]
        )
        table = pa.table([columns[name] for name in sample.schema.names], schema=sample.schema)
        writer.write_table(table)
        csv_writer.write_table(table)
        written += n
    writer.close()
    csv_writer.close()
    sink.close()
    return parquet_path, csv_path


def _peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: reset by exec, unlike getrusage's maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(kind: str, path: str) -> None:
    """Run one measurement in this (fresh) process and print its figures as JSON; imports come first,
    so the time is the read's alone."""
    from zoneinfo import ZoneInfo

    import pandas as pd

    from auditor.gpu_prices import load_gpu_prices
    from collectors.focus import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, FocusImport, GpuMatcher

    skipped = {"ServiceProviderName", "SkuMeter", "x_UsageType"}  # not FOCUS 1.0 columns
    columns = [*REQUIRED_COLUMNS, *(c for c in OPTIONAL_COLUMNS if c not in skipped)]
    matcher = GpuMatcher.build(load_gpu_prices())
    before = _peak_rss_mib()
    cpu_before = _cpu_s()
    start = time.perf_counter()
    by_row = 0
    if kind == "ours":
        read = FocusImport("bench", ZoneInfo("UTC"), {}, matcher, time.time())
        read.read_file(Path(path))
        rows, gpu_rows, lines = read.rows_read, read.gpu_rows, sum(len(x) for x in read.lines().values())
        by_row = read.rows_by_row
    elif path.endswith(".parquet"):
        frame = pd.read_parquet(path, columns=columns, engine="pyarrow")
        rows, gpu_rows, lines = len(frame), 0, 0
    else:
        frame = pd.read_csv(path, usecols=columns, dtype=str, na_values=["NULL"], keep_default_na=True)
        rows, gpu_rows, lines = len(frame), 0, 0
    seconds = time.perf_counter() - start
    cpu = _cpu_s() - cpu_before
    figures = {
        "rows": rows,
        "gpu_rows": gpu_rows,
        "lines": lines,
        "by_row": by_row,
        "s": seconds,
        "cpu_s": cpu,
    }
    print(json.dumps({**figures, "rss_mib": _peak_rss_mib(), "base_mib": before}))


def _cpu_s() -> float:
    """CPU seconds of this process and its children (user + system): the figure a shared machine's
    load does not inflate much, unlike wall time."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def measure(kind: str, path: Path) -> dict[str, float]:
    done = subprocess.run(  # noqa: S603  (this very script, in a fresh process)
        [sys.executable, "-m", "bench.focus_import", "--child", kind, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


AUDITOR = str(Path(sys.executable).parent / "auditor")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--gpu-share", type=float, default=0.05)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write the bill (default: a temp dir)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="measure each format this many times")
    parser.add_argument(
        "--keep", type=Path, default=None, help="reuse (or write) the bill in this folder across runs"
    )
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    if args.keep is not None:
        folder = args.keep / f"bill-{args.rows}-{args.gpu_share}"
        folder.mkdir(parents=True, exist_ok=True)
        _run(folder, args)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        _run(Path(scratch), args)


def _run(folder: Path, args: argparse.Namespace) -> None:
    parquet, csv_gz = folder / "bill.parquet", folder / "bill.csv.gz"
    if not (parquet.exists() and csv_gz.exists() and (folder / "complete").exists()):
        started = time.perf_counter()
        parquet, csv_gz = generate(folder, args.rows, args.gpu_share)
        (folder / "complete").touch()
        took = time.perf_counter() - started
        print(f"generated {args.rows:,} rows ({args.gpu_share:.0%} GPU) in {took:.1f} s")
    sizes = f"Parquet {parquet.stat().st_size / MIB:,.0f} MiB, CSV.gz {csv_gz.stat().st_size / MIB:,.0f} MiB"
    print(
        f"bill: {args.rows:,} rows ({args.gpu_share:.0%} GPU): {sizes}; {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    for label, path in (("Parquet", parquet), ("CSV.gz", csv_gz)):
        for _ in range(args.repeat):
            load = os.getloadavg()[0]
            ours, bare = measure("ours", path), measure("bare", path)
            print(
                f"{label:8} ours: {ours['rows'] / ours['s']:>10,.0f} rows/s wall, "
                f"{ours['rows'] / ours['cpu_s']:>10,.0f} rows/CPU-s ({ours['s']:.2f} s wall, "
                f"{ours['cpu_s']:.2f} s CPU; {ours['gpu_rows']:,.0f} GPU rows -> {ours['lines']:,.0f} "
                f"lines, {ours['by_row']:,.0f} read row by row), peak RSS {ours['rss_mib']:,.0f} MiB "
                f"(after imports {ours['base_mib']:,.0f})"
            )
            print(
                f"{'':8} bare pandas: {bare['rows'] / bare['s']:>10,.0f} rows/s wall, "
                f"{bare['rows'] / bare['cpu_s']:>10,.0f} rows/CPU-s ({bare['s']:.2f} s wall, "
                f"{bare['cpu_s']:.2f} s CPU), peak RSS {bare['rss_mib']:,.0f} MiB | ours/bare: wall "
                f"{ours['s'] / bare['s']:.2f}x, CPU {ours['cpu_s'] / bare['cpu_s']:.2f}x | load {load:.1f}"
            )
            first, again = whole_import(path)
            print(
                f"{'':8} auditor billing import, whole process: {args.rows / first.cpu_s:>10,.0f} rows/CPU-s "
                f"({first}); again, every line unchanged: {again}"
            )


def whole_import(path: Path) -> tuple[Run, Run]:
    """`auditor billing import` as a user runs it (start-up, read, attribution, the store's
    transaction) into a new SQLite store, then the same file again (every line unchanged)."""
    with tempfile.TemporaryDirectory(prefix="auditor-bench-import-") as scratch:
        config = Path(scratch) / "auditor.toml"
        config.write_text(f'[store]\nurl = "sqlite:///{Path(scratch) / "auditor.db"}"\n')
        command = [AUDITOR, "billing", "import", "--config", str(config), str(path)]
        return run(command), run(command)


if __name__ == "__main__":
    main()
