"""Replay request traffic against a simulated deployment: GPU and token roll-ups without a GPU.

The traffic is a request trace (the Azure LLM inference trace's CSV: `TIMESTAMP,ContextTokens,
GeneratedTokens`) or a built-in generator with a daily and weekly shape and bursts. The deployment is
simulated minute by minute with a simple batching model:

- the deployment serves up to `capacity_tokens_per_s × 60` tokens a minute; what it cannot serve
  waits (`requests_waiting`) and is served in the following minutes;
- a request alone takes `prompt / prefill_tokens_per_s + generated / decode_tokens_per_s` seconds;
  by Little's law the mean number running is `arrivals × latency / 60`, and the share of the minute
  with at least one running (`request_busy`) is `1 − e^(−running)` (Poisson arrivals);
- `throughput_util` is tokens served ÷ capacity; `sm_active` is the busy share scaled by how full
  the batches are (a lone request leaves most SMs waiting on memory); NVML's `gpu_util` is the
  share of time any kernel ran, which a busy-polling server (vLLM) holds near 100% even when idle
  (`busy_poll_util`); power follows `sm_active` between idle and board power.

The model runs on numpy columns (only a minute that arrives over capacity starts a queue, simulated
minute by minute until it empties). Its tiers are summed in memory (`collectors.replay_tiers`) and
written a day at a time (`Store.replace_tiers`) with the minute rows of the window's ends only: a
month of three deployments takes about a second.

A trace is read in bounded memory whatever its length: pyarrow's CSV reader (or Parquet, by the
file's magic bytes) streams it in blocks, timestamps are parsed in bulk, and each block is counted
into per-minute arrays (numpy's bincount) before the next is read; only the per-minute sums are kept,
and the span they may cover is limited. Every input that sizes the work has a documented limit
(`MAX_TOKENS_PER_REQUEST`, `MAX_SPAN_DAYS`, `MAX_REQUESTS_PER_MIN`, `MAX_GPU_MINUTES`,
`MAX_BACKLOG_MINUTES`): past it, a one-line `ReplayError` says which and what to do.
"""

from __future__ import annotations

import codecs
import csv
import math
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from auditor.config import Config, DeploymentConfig
from auditor.gpu_prices import GpuPrice
from auditor.model import MINUTE_S, DeploymentMinute, GpuMinute
from auditor.store import RecordRows, Store
from auditor.units import format_usd
from collectors.replay_tiers import MinuteColumns, PeakCarry, TierRows, simulated_tiers

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

TRACE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BUNDLED_TRACE = "azure_conv_10min.csv"
DAY_S = 86_400
GIB = 1024**3

# -- limits on the work an input may ask for (each one a clear error past it) -------------------
MAX_TOKENS_PER_REQUEST = 10_000_000
"""Prompt or generated tokens of one request: ten times the longest context windows offered today."""
MAX_SPAN_DAYS = 400
"""Days a trace (or generated traffic) may span: a year and a month, the store's retention."""
MAX_REQUESTS_PER_MIN = 100_000
"""Mean generated requests a minute (1,667 a second: more than any one deployment serves)."""
MAX_GPU_MINUTES = 20_000_000
"""GPUs × simulated minutes: 8 GPUs for 4.7 years, 64 for 7 months, 1,024 for 13 days."""
MAX_BACKLOG_MINUTES = 7 * 1440
"""Minutes the simulated deployment may need after the traffic ends to serve what still waits."""
TRACE_BLOCK_BYTES = 2**20
"""Bytes of a CSV trace read (and summed) at a time: memory does not grow with the trace's length.
Arrow's streaming reader reads ahead up to 32 blocks: at 16 MiB a block, a 169 MiB trace was held
almost whole (peak RSS grew 100 → 223 MiB from 34 to 169 MiB of trace); at 1 MiB it is 32 MiB at
most, and parsing costs the same CPU."""
_SNIFF_BYTES = 64 * 1024


class ReplayError(ValueError):
    """A replay cannot be done as asked; the message says which input and what to do, in one line."""


class TraceError(ReplayError):
    """The trace cannot be read; the message names the file, the line and what is expected."""


@dataclass(frozen=True, slots=True)
class Request:
    ts: float
    prompt_tokens: int
    generation_tokens: int


@dataclass(frozen=True, slots=True)
class MinuteLoad:
    """The requests that arrived in one minute."""

    minute_ts: int
    requests: int
    prompt_tokens: int
    generation_tokens: int


def _parse_timestamp(text: str) -> float:
    """`2023-11-16 18:15:46.6805900` (UTC, up to 7 fractional digits) → epoch seconds."""
    whole, _, fraction = text.strip().partition(".")
    moment = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return moment.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


_ROW_SHAPE = "'YYYY-MM-DD HH:MM:SS.fff,prompt tokens,generated tokens'"


def _row_problem(row: list[str]) -> str | None:
    """What is wrong with one data row of a CSV trace, or None."""
    try:
        ts_text, prompt_text, generated_text = row
        _parse_timestamp(ts_text)
        prompt, generated = int(prompt_text), int(generated_text)
    except ValueError:
        return f"expected {_ROW_SHAPE} (got {','.join(row)[:120]!r})"
    if prompt < 0 or generated < 0:
        return "token counts must be 0 or more"
    if max(prompt, generated) > MAX_TOKENS_PER_REQUEST:
        return f"more than {MAX_TOKENS_PER_REQUEST:,} tokens in one request (the limit)"
    return None


def _first_bad_line(path: Path, source: str) -> TraceError | None:
    """The first bad row of a CSV trace, found by reading it again line by line: only on the error
    path, after the fast reader refused the file, to name the line."""
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for row in reader:
            if row and (problem := _row_problem(row)) is not None:
                return TraceError(f"{source}: line {reader.line_num}: {problem}")
    return None


def _check_text_header(path: Path, source: str) -> None:
    """A CSV trace is UTF-8 text whose first line names the three columns; a binary file is said to
    be one, in one line, before any parser sees it."""
    with path.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise TraceError(
            f"{source}: not a text CSV file (nor Parquet): a trace is CSV with the columns "
            f"{','.join(TRACE_COLUMNS)}, or a Parquet file with them"
        )
    header = text.splitlines()[0] if text else ""
    names = tuple(h.strip() for h in header.lstrip("\ufeff").split(","))
    if names != TRACE_COLUMNS:
        raise TraceError(f"{source}: the first line must be {','.join(TRACE_COLUMNS)} (got {header[:120]!r})")


def _trace_batches(path: Path, source: str, block_bytes: int = TRACE_BLOCK_BYTES) -> Iterator[pa.RecordBatch]:
    """The trace's rows, a block at a time, as typed Arrow batches (timestamps parsed in bulk)."""
    import pyarrow as pa  # imported here: a second of start-up that only replay needs
    import pyarrow.csv as pa_csv

    types = {TRACE_COLUMNS[0]: pa.timestamp("ns"), TRACE_COLUMNS[1]: pa.int64(), TRACE_COLUMNS[2]: pa.int64()}
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic == b"PAR1":
        import pyarrow.parquet as pq  # only a Parquet trace needs it

        try:
            parquet = pq.ParquetFile(path)
            missing = set(TRACE_COLUMNS) - set(parquet.schema_arrow.names)
            if missing:
                raise TraceError(
                    f"{source}: the Parquet file lacks the column(s) {', '.join(sorted(missing))}"
                )
            for batch in parquet.iter_batches(
                batch_size=max(1, block_bytes // 32), columns=list(TRACE_COLUMNS)
            ):
                yield pa.RecordBatch.from_arrays(
                    [batch.column(i).cast(types[name]) for i, name in enumerate(TRACE_COLUMNS)],
                    names=list(TRACE_COLUMNS),
                )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise TraceError(
                f"{source}: cannot be read as a trace: {str(exc).splitlines()[0][:200]}"
            ) from None
        return
    _check_text_header(path, source)
    try:
        reader = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(block_size=block_bytes),
            convert_options=pa_csv.ConvertOptions(column_types=types, strings_can_be_null=False),
        )
        while True:
            try:
                yield reader.read_next_batch()
            except StopIteration:
                return
    except pa.ArrowInvalid as exc:
        bad = _first_bad_line(path, source)
        if bad is not None:
            raise bad from None
        raise TraceError(f"{source}: cannot be read as a trace: {str(exc).splitlines()[0][:200]}") from None


def _check_span(first_minute_ts: int, last_minute_ts: int, source: str) -> None:
    days = (last_minute_ts - first_minute_ts) / DAY_S
    if days > MAX_SPAN_DAYS:
        raise ReplayError(
            f"{source}: the trace spans {days:,.0f} days, more than the {MAX_SPAN_DAYS}-day limit: "
            "replay a part of it"
        )


def _int64s(column: pa.Array) -> np.ndarray[Any, np.dtype[np.int64]]:
    """A column of 64-bit integers or timestamps (no nulls) as a numpy view of its data buffer.
    Not `Array.to_numpy()`, which imports pandas: a third of a second of start-up."""
    import numpy as np

    data = column.buffers()[1]
    return np.frombuffer(data, dtype=np.int64, count=len(column), offset=column.offset * 8)


class _MinuteSums:
    """Requests and tokens summed per minute into dense arrays over the minutes seen so far (bounded
    by the span limit: 400 days are 576,000 minutes, 14 MB), whatever order the rows come in."""

    def __init__(self, source: str, path: Path) -> None:
        self.source, self.path = source, path
        self.low: int | None = None
        """The first minute held (epoch minutes, not seconds)."""
        self.sums: np.ndarray[Any, np.dtype[np.int64]] | None = None
        """Rows requests, prompt tokens, generated tokens; a column a minute from `low`."""

    def add(self, batch: pa.RecordBatch) -> None:
        import numpy as np

        columns = [batch.column(i) for i in range(3)]
        if any(column.null_count for column in columns):
            raise _first_bad_line(self.path, self.source) or TraceError(
                f"{self.source}: a row has an empty field"
            )
        ts_ns, *tokens = (_int64s(column) for column in columns)
        minutes = ts_ns // (MINUTE_S * 10**9)
        if any(bool((t < 0).any() or (t > MAX_TOKENS_PER_REQUEST).any()) for t in tokens):
            raise _first_bad_line(self.path, self.source) or TraceError(
                f"{self.source}: token counts must be 0 to {MAX_TOKENS_PER_REQUEST:,} a request"
            )
        first, last = int(minutes.min()), int(minutes.max())
        low = first if self.low is None else min(self.low, first)
        high = last if self.sums is None or self.low is None else max(self.low + self.sums.shape[1] - 1, last)
        _check_span(low * MINUTE_S, high * MINUTE_S, self.source)  # before anything is allocated for it
        if self.sums is None or self.low is None:
            self.sums = np.zeros((3, high - low + 1), dtype=np.int64)
        elif low < self.low or high >= self.low + self.sums.shape[1]:
            grown = np.zeros((3, high - low + 1), dtype=np.int64)
            grown[:, self.low - low : self.low - low + self.sums.shape[1]] = self.sums
            self.sums = grown
        self.low = low
        offsets = minutes - first
        width = last - first + 1
        at = slice(first - low, first - low + width)
        self.sums[0, at] += np.bincount(offsets, minlength=width)
        for row, values in enumerate(tokens, start=1):
            # float64 sums of integers are exact below 2**53: a block's rows × 10M tokens stay far under.
            self.sums[row, at] += np.bincount(offsets, weights=values, minlength=width).astype(np.int64)


def read_trace_loads(
    path: Path, start_ts: float | None = None, *, block_bytes: int = TRACE_BLOCK_BYTES
) -> list[MinuteLoad]:
    """A trace's requests summed per minute, every minute from the first to the last (quiet ones
    too: the GPUs are still billed); with `start_ts`, shifted so the first minute starts there.

    CSV (the Azure LLM trace's `TIMESTAMP,ContextTokens,GeneratedTokens`, UTC) or Parquet with those
    columns, in any order of rows. Memory is bounded by the block size and the span limit, not by
    the number of requests."""
    source = str(path)
    sums = _MinuteSums(source, path)
    try:
        for batch in _trace_batches(path, source, block_bytes):
            if batch.num_rows:
                sums.add(batch)
    except OSError as exc:
        raise TraceError(f"{source}: cannot be read: {exc.strerror or exc}") from None
    if sums.sums is None or sums.low is None:
        raise TraceError(f"{source}: the trace holds no requests")
    first = sums.low * MINUTE_S
    shift = 0 if start_ts is None else math.floor(start_ts / MINUTE_S) * MINUTE_S - first
    requests, prompt, generated = (row.tolist() for row in sums.sums)
    return [
        MinuteLoad(first + shift + MINUTE_S * i, *counts)
        for i, counts in enumerate(zip(requests, prompt, generated, strict=True))
    ]


def bundled_trace() -> list[Request]:
    """Ten minutes of the Azure conversation trace, shipped with the package (CC-BY-4.0: data/SOURCE.md):
    2,863 requests, small enough to hold as records (the generator draws request sizes from them).

    Read with the csv module, not Arrow (`_trace_batches`): the demo then needs no pyarrow (a sixth of
    a second of start-up). Its timestamps are parsed to the nanosecond, as Arrow does (tested)."""
    text = files("collectors").joinpath("data", BUNDLED_TRACE).read_text(encoding="ascii")
    rows = csv.reader(text.splitlines()[1:])
    requests = [
        Request(_timestamp_ns(stamp) / 1e9, int(prompt), int(generated)) for stamp, prompt, generated in rows
    ]
    return sorted(requests, key=lambda r: r.ts)


def _timestamp_ns(text: str) -> int:
    """`2023-11-16 18:15:46.6805900` (UTC) as nanoseconds since the epoch."""
    seconds, _, fraction = text.partition(".")
    moment = datetime.fromisoformat(seconds).replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000 + int(fraction.ljust(9, "0")[:9])


def minute_loads(requests: Sequence[Request], start_ts: float | None = None) -> list[MinuteLoad]:
    """Requests (a few, held as records) summed per minute; with `start_ts`, shifted so the first
    minute starts there. A trace file goes through `read_trace_loads` instead."""
    if not requests:
        return []
    first_minute = math.floor(min(r.ts for r in requests) / MINUTE_S) * MINUTE_S
    shift = 0 if start_ts is None else math.floor(start_ts / MINUTE_S) * MINUTE_S - first_minute
    sums: dict[int, list[int]] = {}
    for r in requests:
        minute = math.floor(r.ts / MINUTE_S) * MINUTE_S + shift
        bucket = sums.setdefault(minute, [0, 0, 0])
        bucket[0] += 1
        bucket[1] += r.prompt_tokens
        bucket[2] += r.generation_tokens
    last = max(sums)
    return [
        MinuteLoad(m, *sums.get(m, [0, 0, 0]))  # quiet minutes are minutes too: the GPUs are still billed
        for m in range(min(sums), last + MINUTE_S, MINUTE_S)
    ]


@dataclass(frozen=True, slots=True)
class TrafficShape:
    """The built-in generator: a daily curve peaking in the afternoon, quiet weekends, bursts."""

    mean_requests_per_min: float
    peak_hour: float = 14.0
    night_share: float = 0.15
    """Traffic at the quietest hour, as a share of the peak."""
    weekend_share: float = 0.3
    burst_chance_per_hour: float = 0.03
    burst_factor: float = 4.0
    burst_minutes: int = 20
    seed: int = 7


def _shape(local: datetime, shape: TrafficShape) -> float:
    hour = local.hour + local.minute / 60
    distance = min(abs(hour - shape.peak_hour), 24 - abs(hour - shape.peak_hour))
    daily = shape.night_share + (1 - shape.night_share) * math.exp(-((distance / 4.5) ** 2))
    weekly = shape.weekend_share if local.weekday() >= 5 else 1.0
    return daily * weekly


@dataclass(frozen=True, slots=True)
class LoadColumns:
    """Minute loads as columns (`MinuteLoad`'s fields), in time order: generated traffic, a month of
    minutes without a record each."""

    minute_ts: np.ndarray
    requests: np.ndarray
    prompt_tokens: np.ndarray
    generation_tokens: np.ndarray


def generate_loads(
    start_ts: int, end_ts: int, tz: ZoneInfo, shape: TrafficShape, sizes: Sequence[Request]
) -> Iterator[MinuteLoad]:
    """Minute loads over [start_ts, end_ts): the shape's rate, Poisson arrivals, request sizes drawn
    from `sizes` (a real trace's), by their mean and spread (`generated_columns`, as records)."""
    loads = generated_columns(start_ts, end_ts, tz, shape, sizes)
    return map(
        MinuteLoad,
        loads.minute_ts.tolist(),
        loads.requests.tolist(),
        loads.prompt_tokens.tolist(),
        loads.generation_tokens.tolist(),
    )


def generated_columns(
    start_ts: int, end_ts: int, tz: ZoneInfo, shape: TrafficShape, sizes: Sequence[Request]
) -> LoadColumns:
    """`generate_loads`' traffic as columns. Drawn with numpy a day (UTC) at a time, from a generator
    seeded by the shape's seed and the day: a day's traffic is the same whatever span it is drawn in."""
    import numpy as np

    if not sizes:
        raise ValueError("the generator needs request sizes (a trace) to draw from")
    n = len(sizes)
    mean_p = sum(r.prompt_tokens for r in sizes) / n
    mean_g = sum(r.generation_tokens for r in sizes) / n
    std_p = math.sqrt(sum((r.prompt_tokens - mean_p) ** 2 for r in sizes) / n)
    std_g = math.sqrt(sum((r.generation_tokens - mean_g) ** 2 for r in sizes) / n)
    # Scale so that a weekday's mean rate is the one asked for.
    weekday = datetime(2026, 1, 5, tzinfo=tz)  # a Monday
    day_mean = sum(_shape(weekday.replace(hour=h), shape) for h in range(24)) / 24
    base = shape.mean_requests_per_min / day_mean
    first = math.ceil(start_ts / MINUTE_S) * MINUTE_S
    days: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for day_ts in range(first - first % DAY_S, end_ts, DAY_S):
        minutes = np.arange(day_ts, day_ts + DAY_S, MINUTE_S, dtype=np.int64)  # the whole day, cut below
        rng = np.random.default_rng([shape.seed, day_ts // DAY_S])
        # Each hour may start a burst: `burst_factor` times the traffic for `burst_minutes`.
        hours = np.arange(day_ts, day_ts + DAY_S, 3600, dtype=np.int64)
        bursts = np.concatenate(
            [[day_ts - DAY_S], hours[rng.random(len(hours)) < shape.burst_chance_per_hour]]
        )
        since_burst = minutes - bursts[np.searchsorted(bursts, minutes, side="right") - 1]
        in_burst = since_burst < shape.burst_minutes * 60
        local_ts = minutes + _utc_offsets_s(minutes, tz)
        hour = (local_ts % DAY_S // 3600) + (local_ts % 3600 // 60) / 60
        distance = np.minimum(np.abs(hour - shape.peak_hour), 24 - np.abs(hour - shape.peak_hour))
        daily = shape.night_share + (1 - shape.night_share) * np.exp(-((distance / 4.5) ** 2))
        weekend = (local_ts // DAY_S + 3) % 7 >= 5  # 1970-01-01 was a Thursday (weekday 3)
        rate = base * daily * np.where(weekend, shape.weekend_share, 1.0)
        count = rng.poisson(rate * np.where(in_burst, shape.burst_factor, 1.0))
        spread = np.sqrt(count)
        prompt = np.maximum(
            count, np.rint(count * mean_p + rng.normal(0.0, 1.0, len(count)) * spread * std_p)
        )
        generated = np.maximum(
            count, np.rint(count * mean_g + rng.normal(0.0, 1.0, len(count)) * spread * std_g)
        )
        asked = slice(
            max(first - day_ts, 0) // MINUTE_S,
            (min(end_ts, day_ts + DAY_S) - day_ts + MINUTE_S - 1) // MINUTE_S,
        )
        days.append(
            (minutes[asked], count[asked], prompt[asked].astype(np.int64), generated[asked].astype(np.int64))
        )
    if not days:
        return LoadColumns(*(np.zeros(0, dtype=np.int64) for _ in range(4)))
    return LoadColumns(*(np.concatenate(column) for column in zip(*days, strict=True)))


def _utc_offsets_s(minutes: np.ndarray, tz: ZoneInfo) -> np.ndarray:
    """Each minute's UTC offset in `tz`, in seconds: looked up once per quarter-hour (zones change
    offset on a quarter-hour), and per minute in a quarter-hour whose first and last minutes differ."""
    import numpy as np

    def offset(ts: int) -> int:
        known = datetime.fromtimestamp(ts, tz).utcoffset()
        return int(known.total_seconds()) if known is not None else 0

    first_q = int(minutes[0]) - int(minutes[0]) % 900
    quarters = range(first_q, int(minutes[-1]) + 1, 900)
    at_start = np.array([offset(q) for q in quarters], dtype=np.int64)
    offsets: np.ndarray = at_start[(minutes - first_q) // 900]
    for i, q in enumerate(quarters):
        if offset(q + 840) != at_start[i]:
            inside = (minutes >= q) & (minutes < q + 900)
            offsets[inside] = [offset(int(m)) for m in minutes[inside]]
    return offsets


@dataclass(frozen=True, slots=True)
class SimulatedDeployment:
    """A deployment that exists only here: its GPUs, capacity and how its server behaves."""

    name: str
    gpu_type: str
    gpus: int
    capacity_tokens_per_s: float
    host: str = "sim"
    prefill_tokens_per_s: float = 8000.0
    """One request's prompt processing speed."""
    decode_tokens_per_s: float = 35.0
    """One request's generation speed (a 70B model on H100s: 30–40 tokens/s per stream)."""
    busy_poll_util: float = 0.0
    """NVML's reading when nothing runs: vLLM busy-polls and reads about 1.0."""
    idle_power_w: float = 90.0
    max_power_w: float = 700.0
    mem_total_bytes: int = 80 * GIB
    mem_used_bytes: int = 74 * GIB
    kv_cache_tokens: int = 400_000


def _check_backlog(waiting_tokens: int, capacity_per_min: float) -> None:
    """When the traffic ends with `waiting_tokens` still queued: ReplayError if serving them would take
    more than `MAX_BACKLOG_MINUTES` (the deployment cannot serve the traffic, and simulating its
    backlog would run for as long as it would take). Quiet minutes follow until the queue is empty:
    nothing is lost."""
    backlog_min = waiting_tokens / capacity_per_min
    if backlog_min > MAX_BACKLOG_MINUTES:
        raise ReplayError(
            "the simulated deployment cannot serve this traffic: when it ends, "
            f"{backlog_min / 1440:,.0f} days of work still wait "
            f"(the limit is {MAX_BACKLOG_MINUTES // 1440} days); "
            "give more GPUs or capacity, or less traffic"
        )


@dataclass(frozen=True, slots=True)
class _Simulation:
    """A simulated deployment's minutes: the columns the tiers are summed from, and the server's
    columns only its minute rows hold."""

    deployment: SimulatedDeployment
    minutes: MinuteColumns
    running: np.ndarray
    waiting: np.ndarray
    kv: np.ndarray
    throughput: np.ndarray
    power_w: np.ndarray

    def rows(self, first: int, after: int) -> list[tuple[tuple[Any, ...], tuple[Any, ...]]]:
        """Minutes [first, after) by position: each one's deployment row (`DeploymentMinute`'s fields)
        and GPU tail (`GpuMinute`'s fields after `deployment`)."""
        m, d = self.minutes, self.deployment
        columns = [a[first:after].tolist() for a in (m.minute_ts, m.prompt_tokens, m.generation_tokens)]
        busy, gpu_util, sm_active, idle_s, util_max, energy_j = (
            a[first:after].tolist()
            for a in (m.request_busy, m.gpu_util, m.sm_active, m.idle_s, m.gpu_util_max, m.energy_j)
        )
        running, waiting, kv, throughput, power_w = (
            a[first:after].tolist()
            for a in (self.running, self.waiting, self.kv, self.throughput, self.power_w)
        )
        gpu_observed_s = 60.0 * d.gpus
        return [
            (
                (
                    minute_ts,
                    d.name,
                    1,  # instances
                    60.0,  # server_observed_s
                    served_p,
                    served_g,
                    60.0 * b,  # request_busy_s
                    r,  # requests_running_mean
                    float(w),  # requests_waiting_mean
                    k,  # kv_cache_mean
                    min(1.0, k * 1.5),  # kv_cache_max
                    gpu_observed_s,
                    u,
                    sm,
                    b,  # request_busy
                    t,  # throughput_util
                    None,  # prefill_s
                    None,  # decode_s
                ),
                (60.0, 60.0, idle, 60.0, u, umax, sm, e, pw, d.mem_used_bytes, d.mem_total_bytes),
            )
            for minute_ts, served_p, served_g, b, u, sm, idle, umax, e, r, w, k, t, pw in zip(
                *columns,
                busy,
                gpu_util,
                sm_active,
                idle_s,
                util_max,
                energy_j,
                running,
                waiting,
                kv,
                throughput,
                power_w,
                strict=True,
            )
        ]


def _served(
    prompt: list[int], generation: list[int], requests: list[int], capacity_per_min: float
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Per minute, following the batching model above: (prompt tokens, generated tokens, requests)
    served, and the requests still waiting after it; past the traffic, quiet minutes until what
    still waits is served (nothing is lost).

    Only a minute whose arrivals pass the capacity starts a queue: from it the minutes are simulated
    one by one until the queue is empty again. Every other minute serves what arrived in it."""
    traffic = len(prompt)
    served_p, served_g, served_requests = list(prompt), list(generation), list(requests)
    waiting = [0] * traffic
    floor, after = math.floor, 0
    for start in range(traffic):
        if start < after or prompt[start] + generation[start] <= capacity_per_min:
            continue
        queue_p = queue_g = queue_requests = 0
        i = start
        while True:
            if i < traffic:
                queue_p, queue_g = queue_p + prompt[i], queue_g + generation[i]
                queue_requests += requests[i]
            else:
                if i == traffic:
                    _check_backlog(queue_p + queue_g, capacity_per_min)
                for column in (served_p, served_g, served_requests, waiting):
                    column.append(0)
            pending = queue_p + queue_g
            if pending <= capacity_per_min:
                p, g, r = queue_p, queue_g, queue_requests
            else:
                share = capacity_per_min / pending
                p, g, r = floor(queue_p * share), floor(queue_g * share), floor(queue_requests * share)
            queue_p, queue_g, queue_requests = queue_p - p, queue_g - g, queue_requests - r
            served_p[i], served_g[i], served_requests[i], waiting[i] = p, g, r, queue_requests
            i += 1
            if queue_p + queue_g == 0:
                break
        after = i
    return served_p, served_g, served_requests, waiting


def _simulate(loads: Iterable[MinuteLoad] | LoadColumns, deployment: SimulatedDeployment) -> _Simulation:
    """The deployment's minutes under this traffic (in time order, one load a minute at most),
    following the batching model above; past the last load, quiet minutes until the queue is empty."""
    import numpy as np

    if isinstance(loads, LoadColumns):
        minute_ts = loads.minute_ts
        prompt, generation, requests = (
            c.tolist() for c in (loads.prompt_tokens, loads.generation_tokens, loads.requests)
        )
    else:
        traffic = loads if isinstance(loads, list) else list(loads)
        minute_ts = np.array([load.minute_ts for load in traffic], dtype=np.int64)
        prompt = [load.prompt_tokens for load in traffic]
        generation = [load.generation_tokens for load in traffic]
        requests = [load.requests for load in traffic]
    if len(minute_ts) > 1 and bool((np.diff(minute_ts) <= 0).any()):
        raise ValueError("minute loads must be in time order, one a minute at most")
    capacity_per_min = deployment.capacity_tokens_per_s * MINUTE_S
    served = _served(prompt, generation, requests, capacity_per_min)
    served_p, served_g, served_requests, waiting = (np.array(c, dtype=np.int64) for c in served)
    n = len(served_p)
    if n > len(minute_ts):  # the quiet minutes that served the last queue
        drained = minute_ts[-1] + MINUTE_S * np.arange(1, n - len(minute_ts) + 1, dtype=np.int64)
        minute_ts = np.concatenate([minute_ts, drained])
    per_request = np.maximum(served_requests, 1)
    latency_s = np.where(
        served_requests > 0,
        served_p / per_request / deployment.prefill_tokens_per_s
        + served_g / per_request / deployment.decode_tokens_per_s,
        0.0,
    )
    running = served_requests * latency_s / MINUTE_S
    busy = np.where(waiting > 0, 1.0, 1 - np.exp(-running))
    throughput = (served_p + served_g) / capacity_per_min
    fill = np.where(busy > 0, np.minimum(1.0, throughput / np.where(busy > 0, busy, 1.0)), 0.0)
    sm_active = busy * (0.25 + 0.75 * fill)
    gpu_util = np.maximum(busy, deployment.busy_poll_util)
    power_w = deployment.idle_power_w + (deployment.max_power_w - deployment.idle_power_w) * sm_active
    kv = np.minimum(0.99, running * (served_p + served_g) / per_request / deployment.kv_cache_tokens)
    minute = np.full(n, 60.0)
    return _Simulation(
        deployment,
        MinuteColumns(
            minute_ts=minute_ts,
            observed_s=minute,
            util_observed_s=minute,
            idle_s=60.0 * (1 - busy),
            loaded_s=minute,
            gpu_util=gpu_util,
            gpu_util_max=np.where(busy > 0, 1.0, gpu_util),
            sm_active=sm_active,
            energy_j=power_w * MINUTE_S,
            mem_used_max_bytes=np.full(n, deployment.mem_used_bytes, dtype=np.int64),
            mem_total_bytes=np.full(n, deployment.mem_total_bytes, dtype=np.int64),
            instances=np.ones(n, dtype=np.int64),
            server_observed_s=minute,
            prompt_tokens=served_p,
            generation_tokens=served_g,
            request_busy=busy,
        ),
        running=running,
        waiting=waiting,
        kv=kv,
        throughput=throughput,
        power_w=power_w,
    )


def _simulated_rows(
    loads: Iterable[MinuteLoad], deployment: SimulatedDeployment
) -> list[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """Each minute's deployment row (`DeploymentMinute`'s fields) and what each GPU reads (`GpuMinute`'s
    fields after `deployment`; every simulated GPU reads the same), as plain tuples."""
    simulation = _simulate(loads, deployment)
    return simulation.rows(0, len(simulation.minutes.minute_ts))


def _gpu_keys(deployment: SimulatedDeployment) -> list[tuple[str, str, int, str]]:
    """The first fields of each simulated GPU's rows: host, GPU UUID, index, deployment."""
    return [
        (deployment.host, f"GPU-sim-{deployment.name}-{index}", index, deployment.name)
        for index in range(deployment.gpus)
    ]


def simulate(
    loads: Iterable[MinuteLoad], deployment: SimulatedDeployment
) -> Iterator[tuple[list[GpuMinute], DeploymentMinute]]:
    """Each minute's GPU rows and deployment row, following the batching model above; past the last
    load, quiet minutes until the queue is empty (every request that arrived is served)."""
    keys = _gpu_keys(deployment)
    for row, gpu in _simulated_rows(loads, deployment):
        yield [GpuMinute(row[0], *key, *gpu) for key in keys], DeploymentMinute(*row)


RULES_MINUTES_KEPT_S = DAY_S
"""Minutes the demo keeps at the end of its month: the rules' short windows end there (saturation's
last minutes, runaway spend's live minutes, idle-loaded's day)."""
COSTING_MINUTES_KEPT_S = 2 * 3600
"""Minutes a replay keeps at each end of the window it costs: what the costing reads from minute rows
lies within an hour of its ends (a cut quarter-hour or hour, a sustained peak's 15 minutes, the first
and last minute observed)."""


def window_ends(start_ts: int, end_ts: int, kept_s: int = COSTING_MINUTES_KEPT_S) -> list[tuple[int, int]]:
    """The minutes kept (`replay_into_store`'s `minutes_kept`) for a window [start, end) that only the
    costing will read: `kept_s` at each of its ends, where minute rows still answer once the tiers hold
    the rest."""
    return [(start_ts, min(end_ts, start_ts + kept_s)), (max(start_ts, end_ts - kept_s), end_ts)]


def month_minutes_kept(start_ts: int, end_ts: int) -> list[tuple[int, int]]:
    """The minutes the demo keeps of its month: its last day (`RULES_MINUTES_KEPT_S`), and its first
    hour, whose minutes place the rules' 7- and 21-day windows exactly (`rules.common.window_start`
    takes the oldest minute kept for where the minutes start) and give each deployment's first minute.
    Every file the demo writes is then the same as from a store that kept every minute (checked when
    this was written). What it costs: idle-loaded's history between the two is read from the minute
    rows, which are not there, rather than from the GPU-hour tier."""
    return [(start_ts, start_ts + 3600), (end_ts - RULES_MINUTES_KEPT_S, end_ts)]


def _overlapping(spans: Iterable[tuple[int, int]], start_ts: int, end_ts: int) -> list[tuple[int, int]]:
    """The parts of `spans` inside [start, end), merged where they overlap, in time order."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted((max(a, start_ts), min(b, end_ts)) for a, b in spans):
        if a >= b:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def replay_into_store(
    store: Store,
    runs: Sequence[tuple[Iterable[MinuteLoad] | LoadColumns, SimulatedDeployment]],
    chunk_s: int = DAY_S,
    minutes_kept: Sequence[tuple[int, int]] | None = None,
) -> tuple[int, int]:
    """Simulate each (traffic, deployment) and write their roll-ups together, a chunk (a day) per
    transaction; returns (GPU rows, deployment rows) simulated.

    The tiers (GPU-hours, deployment quarter-hours) are summed here (`collectors.replay_tiers`) for
    every minute simulated; minute rows are written only inside the [start, end) spans of
    `minutes_kept` (every one when None). A caller keeps the ends of the windows it will read, where
    they cut a quarter-hour or an hour (and the rules' last minutes): the store then holds what it
    holds once retention has dropped the minutes between, and costs them the same. Writing every
    minute and summing them back in SQL was most of a replay's time.

    Each chunk *replaces* every roll-up row of its minutes (`Store.replace_tiers`): replaying
    twice gives the same store, and deployments replayed into one store must be replayed in one call."""
    import numpy as np

    simulations = [_simulate(loads, deployment) for loads, deployment in runs]
    keys = [_gpu_keys(deployment) for _, deployment in runs]
    carries = [PeakCarry() for _ in runs]
    done = [0] * len(runs)
    counts = [0, 0]
    while True:
        heads = [
            int(s.minutes.minute_ts[at])
            for s, at in zip(simulations, done, strict=True)
            if at < len(s.minutes.minute_ts)
        ]
        if not heads:
            break
        chunk_start = min(heads)
        chunk_end = chunk_start - chunk_start % chunk_s + chunk_s
        spans = _overlapping(
            [(chunk_start, chunk_end)] if minutes_kept is None else minutes_kept, chunk_start, chunk_end
        )
        tiers = TierRows([], [])
        gpu_rows: list[tuple[Any, ...]] = []
        rows: list[tuple[Any, ...]] = []
        for index, simulation in enumerate(simulations):
            minute_ts = simulation.minutes.minute_ts
            first = done[index]
            after = first + int(np.searchsorted(minute_ts[first:], chunk_end))
            done[index] = after
            if first == after:
                continue
            part = simulated_tiers(
                simulation.deployment.name,
                simulation.minutes.part(first, after),
                keys[index],
                chunk_start,
                chunk_end,
                carries[index],
            )
            tiers.quarter_hours.extend(part.quarter_hours)
            tiers.gpu_hours.extend(part.gpu_hours)
            counts[0] += (after - first) * len(keys[index])
            counts[1] += after - first
            for a, b in spans:
                lo, hi = (first + int(np.searchsorted(minute_ts[first:after], t)) for t in (a, b))
                for row, tail in simulation.rows(lo, hi):
                    rows.append(row)
                    gpu_rows.extend((row[0], *key, *tail) for key in keys[index])
        store.replace_tiers(
            chunk_start,
            chunk_end,
            RecordRows(GpuMinute, gpu_rows),
            RecordRows(DeploymentMinute, rows),
            tiers.quarter_hours,
            tiers.gpu_hours,
        )
    return counts[0], counts[1]


# -- planning: what `auditor replay` and `auditor demo` simulate when not told -------------------

CAPACITY_PER_GPU = {
    "A10G": 1200.0,
    "L4": 1000.0,
    "L40S": 2500.0,
    "A100-40GB": 2500.0,
    "A100-80GB": 3000.0,
    "H100": 4000.0,
    "H200": 5000.0,
}
"""Sustained tokens/s one GPU of each type serves a mid-size model at (prompt + generated, batched):
the planning default when no capacity is given. Measure your own."""

DEFAULT_COMPARE_TO = ("openai:gpt-4o", "together:meta-llama/Llama-3-70b-chat-hf")
"""The API models a replay is compared with when none is named."""


def default_capacity_tokens_per_s(gpu_type: str, gpus: int) -> float:
    """The planning guess for `gpus` GPUs of a type; ReplayError when there is none for the type."""
    per_gpu = next((v for k, v in CAPACITY_PER_GPU.items() if k.lower() == gpu_type.lower()), None)
    if per_gpu is None:
        raise ReplayError(
            f"--capacity-tokens-per-s: no default for {gpu_type!r} ({', '.join(CAPACITY_PER_GPU)});"
            " give the deployment's sustained tokens/s"
        )
    return per_gpu * gpus


def catalog_gpu_hourly_usd(gpu_type: str, catalog: Sequence[GpuPrice]) -> tuple[Decimal, str]:
    """The median on-demand catalog price of a GPU type, and a line saying where it came from."""
    rates = sorted(
        p.gpu_hourly_usd
        for p in catalog
        if p.gpu_type.lower() == gpu_type.lower() and p.pricing == "on_demand"
    )
    if not rates:
        known = sorted({p.gpu_type for p in catalog})
        raise ReplayError(
            f"--gpu-type: no catalog price for {gpu_type!r} ({', '.join(known)}); give --gpu-hourly-usd"
        )
    median = statistics.median(rates)
    return median, (
        f"{gpu_type}: {format_usd(median)}/GPU-hour, the median on-demand price of {len(rates)} catalog rows"
    )


def check_replay_size(gpus: int, capacity_tokens_per_s: float) -> None:
    """The simulated deployment's own limits (one-line ReplayError past them)."""
    if gpus <= 0:
        raise ReplayError("--gpus: must be 1 or more")
    if not (capacity_tokens_per_s > 0 and math.isfinite(capacity_tokens_per_s)):
        raise ReplayError("--capacity-tokens-per-s: must be more than 0 tokens/s")


def check_gpu_minutes(gpus: int, loads: Sequence[MinuteLoad]) -> None:
    """GPUs × minutes to simulate within `MAX_GPU_MINUTES` (each is a row written to the store)."""
    if gpus * len(loads) > MAX_GPU_MINUTES:
        raise ReplayError(
            f"{gpus} GPUs over {len(loads) / 1440:,.1f} days are {gpus * len(loads):,} GPU-minutes"
            f" to simulate, more than the {MAX_GPU_MINUTES:,} limit: replay fewer days or GPUs"
        )


def generated_loads(requests_per_min: float, days: int, end: datetime, tz: ZoneInfo) -> list[MinuteLoad]:
    """`days` of generated traffic up to `end` at a weekday mean of `requests_per_min`, request sizes
    from the bundled trace; ReplayError for a rate or a span past its limit."""
    if not (0 < requests_per_min <= MAX_REQUESTS_PER_MIN and math.isfinite(requests_per_min)):
        raise ReplayError(f"--requests-per-min: must be more than 0 and at most {MAX_REQUESTS_PER_MIN:,}")
    if not 1 <= days <= MAX_SPAN_DAYS:
        raise ReplayError(f"--days: must be 1 to {MAX_SPAN_DAYS}")
    start = end - timedelta(days=days)
    return list(
        generate_loads(
            int(start.timestamp()), int(end.timestamp()), tz, TrafficShape(requests_per_min), bundled_trace()
        )
    )


DEMO_CONFIG = """\
# Written by `auditor demo`: three simulated deployments, two priced at static rates, one by its bill.
timezone = "UTC"

[store]
url = "sqlite:///{db}"

[[deployments]]
name = "llama-70b"
model = "llama-3.3-70b-instruct"
gpu_type = "H100"
gpu_count = 2
prometheus_matchers = {{ deployment = "llama-70b" }}
capacity_tokens_per_s = 8000
compare_to = ["together:meta-llama/Llama-3-70b-chat-hf", "anthropic:claude-3-5-haiku", "openai:gpt-4o"]
[deployments.price]
source = "static"
gpu_hourly_usd = 2.99
[deployments.overheads]
engineering_usd_month = 2000
monitoring_usd_month = 300

[[deployments]]
name = "mistral-7b"
model = "mistral-7b-instruct"
gpu_type = "A10G"
gpu_count = 1
prometheus_matchers = {{ deployment = "mistral-7b" }}
capacity_tokens_per_s = 3000
compare_to = ["together:mistralai/Mistral-7B-Instruct-v0.2", "openai:gpt-4o-mini"]
[deployments.price]
source = "static"
gpu_hourly_usd = 1.006

# Priced by its cloud bill: the FOCUS export the demo writes and imports (`auditor billing import`).
[[deployments]]
name = "qwen-32b"
model = "qwen2.5-32b-instruct"
gpu_type = "A10G"
gpu_count = 4
prometheus_matchers = {{ deployment = "qwen-32b" }}
capacity_tokens_per_s = 2500
compare_to = ["openai:gpt-4o-mini"]
[deployments.price]
source = "focus"
instance_type = "g5.12xlarge"
tags = {{ deployment = "qwen-32b" }}

[billing]
cost_metric = "effective"

[[billing.sources]]
kind = "focus_files"
name = "aws-focus"
paths = ["{bills}"]
"""
"""The demo's config (`{db}`: the store's path; `{bills}`: the folder of its FOCUS bill)."""

DEMO_TRAFFIC = {
    # A 70B model for an internal assistant: office hours, quiet weekends, far below its capacity.
    "llama-70b": (TrafficShape(mean_requests_per_min=9, seed=11), 1.0),
    # A small model behind a busy product feature: most of its capacity, bursts that queue.
    "mistral-7b": (TrafficShape(mean_requests_per_min=90, night_share=0.35, weekend_share=0.7, seed=5), 0.0),
    # A 32B model on a cloud instance under a Savings Plan, its cost from the month's FOCUS bill.
    "qwen-32b": (TrafficShape(mean_requests_per_min=20, seed=23), 0.0),
}
"""Each demo deployment's traffic, and what NVML reads when its server idles (busy-polling)."""


def demo_runs(
    deployments: Sequence[DeploymentConfig], start_ts: int, end_ts: int, tz: ZoneInfo
) -> list[tuple[LoadColumns, SimulatedDeployment]]:
    """The demo's deployments (from its config) with their traffic over [start_ts, end_ts)."""
    sizes = bundled_trace()
    runs: list[tuple[LoadColumns, SimulatedDeployment]] = []
    for deployment in deployments:
        shape, busy_poll = DEMO_TRAFFIC[deployment.name]
        h100 = deployment.gpu_type == "H100"
        simulated = SimulatedDeployment(
            name=deployment.name,
            gpu_type=deployment.gpu_type,
            gpus=deployment.billed_gpus,
            capacity_tokens_per_s=deployment.capacity_tokens_per_s or 1.0,
            busy_poll_util=busy_poll,
            mem_total_bytes=(80 if h100 else 24) * GIB,
            mem_used_bytes=(74 if h100 else 21) * GIB,
            max_power_w=700 if h100 else 300,
        )
        runs.append((generated_columns(start_ts, end_ts, tz, shape, sizes), simulated))
    return runs


def replay_config(
    name: str, gpu_type: str, gpus: int, rate: Decimal, capacity: float, apis: Sequence[str], store_url: str
) -> Config:
    return Config.model_validate(
        {
            "store": {"url": store_url},
            "deployments": [
                {
                    "name": name,
                    "model": "replayed traffic",
                    "gpu_type": gpu_type,
                    "gpu_count": gpus,
                    "prometheus_matchers": {"deployment": name},
                    "price": {"source": "static", "gpu_hourly_usd": rate},
                    "compare_to": list(apis),
                    "capacity_tokens_per_s": capacity,
                }
            ],
        }
    )
