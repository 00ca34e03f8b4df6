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

Minute roll-ups are written straight into the store (`Store.replace_minutes`), a day at a time:
a month of one deployment takes seconds.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from zoneinfo import ZoneInfo

from auditor.model import MINUTE_S, DeploymentMinute, GpuMinute
from auditor.store import Store

TRACE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BUNDLED_TRACE = "azure_conv_10min.csv"
DAY_S = 86_400
GIB = 1024**3


class TraceError(ValueError):
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


def parse_trace(lines: Iterable[str], source: str) -> list[Request]:
    """Requests from the Azure trace's CSV, in time order."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or tuple(h.strip().lstrip("\ufeff") for h in header) != TRACE_COLUMNS:
        raise TraceError(f"{source}: the first line must be {','.join(TRACE_COLUMNS)} (got {header})")
    requests = []
    for number, row in enumerate(reader, start=2):
        if not row:
            continue
        try:
            ts_text, prompt, generated = row
            request = Request(_parse_timestamp(ts_text), int(prompt), int(generated))
        except ValueError:
            raise TraceError(
                f"{source}: line {number}: expected 'YYYY-MM-DD HH:MM:SS.fff,prompt tokens,generated tokens'"
                f" (got {','.join(row)!r})"
            ) from None
        if request.prompt_tokens < 0 or request.generation_tokens < 0:
            raise TraceError(f"{source}: line {number}: token counts must be 0 or more")
        requests.append(request)
    if not requests:
        raise TraceError(f"{source}: the trace holds no requests")
    return sorted(requests, key=lambda r: r.ts)


def read_trace(path: Path) -> list[Request]:
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return parse_trace(handle, str(path))
    except OSError as exc:
        raise TraceError(f"{path}: cannot be read: {exc.strerror}") from None


def bundled_trace() -> list[Request]:
    """Ten minutes of the Azure conversation trace, shipped with the package (CC-BY-4.0: data/SOURCE.md)."""
    text = files("collectors").joinpath("data", BUNDLED_TRACE).read_text(encoding="utf-8")
    return parse_trace(text.splitlines(), BUNDLED_TRACE)


def minute_loads(requests: Sequence[Request], start_ts: float | None = None) -> list[MinuteLoad]:
    """Requests summed per minute; with `start_ts`, shifted so the first minute starts there."""
    if not requests:
        return []
    first_minute = math.floor(requests[0].ts / MINUTE_S) * MINUTE_S
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


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def _shape(local: datetime, shape: TrafficShape) -> float:
    hour = local.hour + local.minute / 60
    distance = min(abs(hour - shape.peak_hour), 24 - abs(hour - shape.peak_hour))
    daily = shape.night_share + (1 - shape.night_share) * math.exp(-((distance / 4.5) ** 2))
    weekly = shape.weekend_share if local.weekday() >= 5 else 1.0
    return daily * weekly


def generate_loads(
    start_ts: int, end_ts: int, tz: ZoneInfo, shape: TrafficShape, sizes: Sequence[Request]
) -> Iterator[MinuteLoad]:
    """Minute loads over [start_ts, end_ts): the shape's rate, Poisson arrivals, request sizes drawn
    from `sizes` (a real trace's), by their mean and spread."""
    if not sizes:
        raise ValueError("the generator needs request sizes (a trace) to draw from")
    rng = random.Random(shape.seed)  # noqa: S311  (a simulation, not a secret)
    n = len(sizes)
    mean_p = sum(r.prompt_tokens for r in sizes) / n
    mean_g = sum(r.generation_tokens for r in sizes) / n
    std_p = math.sqrt(sum((r.prompt_tokens - mean_p) ** 2 for r in sizes) / n)
    std_g = math.sqrt(sum((r.generation_tokens - mean_g) ** 2 for r in sizes) / n)
    # Scale so that a weekday's mean rate is the one asked for.
    weekday = datetime(2026, 1, 5, tzinfo=tz)  # a Monday
    day_mean = sum(_shape(weekday.replace(hour=h), shape) for h in range(24)) / 24
    base = shape.mean_requests_per_min / day_mean
    burst_left = 0
    first = math.ceil(start_ts / MINUTE_S) * MINUTE_S
    for minute in range(first, end_ts, MINUTE_S):
        if minute % 3600 == 0 and rng.random() < shape.burst_chance_per_hour:
            burst_left = shape.burst_minutes
        factor = shape.burst_factor if burst_left > 0 else 1.0
        burst_left = max(0, burst_left - 1)
        local = datetime.fromtimestamp(minute, tz)
        count = _poisson(rng, base * _shape(local, shape) * factor)
        prompt = generated = 0
        if count:
            spread = math.sqrt(count)
            prompt = max(count, round(count * mean_p + rng.gauss(0, spread * std_p)))
            generated = max(count, round(count * mean_g + rng.gauss(0, spread * std_g)))
        yield MinuteLoad(minute, count, prompt, generated)


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


@dataclass
class _Queue:
    prompt: int = 0
    generation: int = 0
    requests: int = 0


def _draining(loads: Iterable[MinuteLoad], queue: _Queue) -> Iterator[MinuteLoad]:
    """The loads, then quiet minutes until what still waits has been served: nothing is lost."""
    last: int | None = None
    for load in loads:
        last = load.minute_ts
        yield load
    while last is not None and queue.prompt + queue.generation > 0:
        last += MINUTE_S
        yield MinuteLoad(last, 0, 0, 0)


def simulate(
    loads: Iterable[MinuteLoad], deployment: SimulatedDeployment
) -> Iterator[tuple[list[GpuMinute], DeploymentMinute]]:
    """Each minute's GPU rows and deployment row, following the batching model above; past the last
    load, quiet minutes until the queue is empty (every request that arrived is served)."""
    capacity_per_min = deployment.capacity_tokens_per_s * MINUTE_S
    queue = _Queue()
    for load in _draining(loads, queue):
        queue.prompt += load.prompt_tokens
        queue.generation += load.generation_tokens
        queue.requests += load.requests
        pending = queue.prompt + queue.generation
        share = 1.0 if pending <= capacity_per_min else capacity_per_min / pending
        served_p, served_g = math.floor(queue.prompt * share), math.floor(queue.generation * share)
        served_requests = queue.requests if share == 1.0 else math.floor(queue.requests * share)
        queue.prompt -= served_p
        queue.generation -= served_g
        queue.requests -= served_requests
        latency_s = 0.0
        if served_requests:
            latency_s = (
                served_p / served_requests / deployment.prefill_tokens_per_s
                + served_g / served_requests / deployment.decode_tokens_per_s
            )
        running = served_requests * latency_s / MINUTE_S
        busy = 1.0 if queue.requests else 1 - math.exp(-running)
        throughput = (served_p + served_g) / capacity_per_min
        fill = min(1.0, throughput / busy) if busy > 0 else 0.0
        sm_active = busy * (0.25 + 0.75 * fill)
        gpu_util = max(busy, deployment.busy_poll_util)
        power_w = deployment.idle_power_w + (deployment.max_power_w - deployment.idle_power_w) * sm_active
        kv = min(0.99, running * (served_p + served_g) / max(served_requests, 1) / deployment.kv_cache_tokens)
        gpu_rows = [
            GpuMinute(
                minute_ts=load.minute_ts,
                host=deployment.host,
                gpu_uuid=f"GPU-sim-{deployment.name}-{index}",
                gpu_index=index,
                deployment=deployment.name,
                observed_s=60.0,
                util_observed_s=60.0,
                idle_s=60.0 * (1 - busy),
                loaded_s=60.0,
                gpu_util=gpu_util,
                gpu_util_max=1.0 if busy > 0 else gpu_util,
                sm_active=sm_active,
                energy_j=power_w * MINUTE_S,
                power_mean_w=power_w,
                mem_used_max_bytes=deployment.mem_used_bytes,
                mem_total_bytes=deployment.mem_total_bytes,
            )
            for index in range(deployment.gpus)
        ]
        row = DeploymentMinute(
            minute_ts=load.minute_ts,
            deployment=deployment.name,
            instances=1,
            server_observed_s=60.0,
            prompt_tokens=served_p,
            generation_tokens=served_g,
            request_busy_s=60.0 * busy,
            requests_running_mean=running,
            requests_waiting_mean=float(queue.requests),
            kv_cache_mean=kv,
            kv_cache_max=min(1.0, kv * 1.5),
            gpu_observed_s=60.0 * deployment.gpus,
            gpu_util=gpu_util,
            sm_active=sm_active,
            request_busy=busy,
            throughput_util=throughput,
        )
        yield gpu_rows, row


def replay_into_store(
    store: Store,
    runs: Sequence[tuple[Iterable[MinuteLoad], SimulatedDeployment]],
    chunk_s: int = DAY_S,
) -> tuple[int, int]:
    """Simulate each (traffic, deployment) and write their roll-ups together, a chunk (a day) per
    transaction; returns (GPU rows, deployment rows) written.

    Each chunk *replaces* every roll-up row of its minutes (`Store.replace_minutes`): replaying twice
    gives the same store, and deployments replayed into one store must be replayed in one call."""
    streams = [iter(simulate(loads, deployment)) for loads, deployment in runs]
    heads: list[tuple[list[GpuMinute], DeploymentMinute] | None] = [next(s, None) for s in streams]
    counts = [0, 0]
    while any(h is not None for h in heads):
        chunk_start = min(h[1].minute_ts for h in heads if h is not None)
        chunk_end = chunk_start - chunk_start % chunk_s + chunk_s
        gpu_rows: list[GpuMinute] = []
        rows: list[DeploymentMinute] = []
        for index, stream in enumerate(streams):
            head = heads[index]
            while head is not None and head[1].minute_ts < chunk_end:
                gpu_rows.extend(head[0])
                rows.append(head[1])
                head = next(stream, None)
            heads[index] = head
        store.replace_minutes(chunk_start, chunk_end, gpu_rows, rows)
        counts[0] += len(gpu_rows)
        counts[1] += len(rows)
    return counts[0], counts[1]
