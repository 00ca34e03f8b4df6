"""Roll raw samples up into minutes: observed time, utilization, idle time, counter increases.

The rules, which every figure downstream relies on:
- Two consecutive samples of a series no more than `max_gap_s` apart make an *observed* interval
  `(a.ts, b.ts]`, described by the later sample `b` (NVML's utilization is an average over the
  period before the reading). The interval's seconds are split across the minutes it spans.
- Samples further apart leave *unknown* time: not idle, not busy, simply not in `observed_s`.
- A counter's increase between consecutive samples is `b - a`, or `b` when the counter went down
  (a reset: the server or driver restarted), as Prometheus' `increase()` does, and lands in the
  minute the interval ends in. A series' first sample only starts it: what came before it is unknown.
- Across a gap (samples more than `max_gap_s` apart) the increase is real but its time is unknown.
  *Tokens* are not counted there: every per-token figure divides tokens by the cost of the observed
  hours, so tokens of unobserved time would make self-hosting look cheaper than measured; they are
  unknown, like the gap's hours (and so are the prefill/decode seconds, which split those tokens'
  cost). *Energy* is counted (in the minute the gap ends): it is a cost paid
  whether or not it was observed, and an on-prem cost without it would be too low.
- Rolling up a window twice gives the same rows (`run_rollup` replaces the window's rows).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import TypeVar

from auditor.model import MINUTE_S, DeploymentMinute, GpuMinute, GpuSample, ServerSample
from auditor.store import Store

S = TypeVar("S", GpuSample, ServerSample)


def minute_floor(ts: float) -> int:
    return math.floor(ts / MINUTE_S) * MINUTE_S


def minute_of_interval_end(end_ts: float) -> int:
    """The minute holding the end of an interval `(a, end]`: an end on a boundary belongs before it."""
    return (math.ceil(end_ts / MINUTE_S) - 1) * MINUTE_S


def split_by_minute(start_ts: float, end_ts: float) -> Iterator[tuple[int, float]]:
    """(minute_ts, seconds) for each minute the interval (start_ts, end_ts] overlaps."""
    minute = minute_floor(start_ts)
    while minute < end_ts:
        overlap = min(end_ts, minute + MINUTE_S) - max(start_ts, minute)
        if overlap > 0:
            yield minute, overlap
        minute += MINUTE_S


def counter_increase(previous: float | None, current: float | None) -> float | None:
    """Prometheus' increase between two readings: a drop is a reset, after which the counter counts from 0."""
    if previous is None or current is None:
        return None
    return current - previous if current >= previous else current


@dataclass
class _Weighted:
    """A time-weighted mean, and the maximum, of a gauge over the seconds it was known."""

    seconds: float = 0.0
    total: float = 0.0
    maximum: float | None = None

    def add(self, value: float | None, seconds: float) -> None:
        if value is None or seconds <= 0:
            return
        self.seconds += seconds
        self.total += value * seconds
        self.maximum = value if self.maximum is None else max(self.maximum, value)

    @property
    def mean(self) -> float | None:
        return self.total / self.seconds if self.seconds > 0 else None


@dataclass
class _GpuAcc:
    host: str
    gpu_index: int
    deployment: str | None
    observed_s: float = 0.0
    activity_s: float = 0.0
    """Seconds with utilization or SM activity known (a MIG instance has the latter only)."""
    idle_s: float = 0.0
    loaded_s: float = 0.0
    util: _Weighted = field(default_factory=_Weighted)
    sm: _Weighted = field(default_factory=_Weighted)
    power: _Weighted = field(default_factory=_Weighted)
    energy_j: float | None = None
    mem_used_max_bytes: int | None = None
    mem_total_bytes: int | None = None


def _intervals(samples: Sequence[S], previous: S | None) -> Iterator[tuple[S | None, S]]:
    """Consecutive pairs of one series, starting from the sample before the window if there is one."""
    before = previous
    for sample in samples:
        yield before, sample
        before = sample


def _in_window(minute: int, start_minute_ts: int, end_minute_ts: int) -> bool:
    return start_minute_ts <= minute < end_minute_ts


def rollup_gpu(
    samples: Sequence[GpuSample],
    previous: GpuSample | None,
    start_minute_ts: int,
    end_minute_ts: int,
    *,
    max_gap_s: float,
    idle_threshold: float,
) -> list[GpuMinute]:
    """One GPU's samples in time order (`previous`: its last one before them) → its minutes in the window."""
    minutes: dict[int, _GpuAcc] = {}

    def acc(minute: int, sample: GpuSample) -> _GpuAcc:
        if minute not in minutes:
            minutes[minute] = _GpuAcc(sample.host, sample.gpu_index, sample.deployment)
        return minutes[minute]

    for a, b in _intervals(samples, previous):
        if a is None or b.ts <= a.ts:
            continue
        end_minute = minute_of_interval_end(b.ts)
        energy = counter_increase(a.energy_j, b.energy_j)
        if energy is not None and _in_window(end_minute, start_minute_ts, end_minute_ts):
            bucket = acc(end_minute, b)
            bucket.energy_j = (bucket.energy_j or 0.0) + energy
        if b.ts - a.ts > max_gap_s:
            continue
        util = None if b.util_pct is None else b.util_pct / 100
        sm = None if b.sm_active_pct is None else b.sm_active_pct / 100
        activity = sm if sm is not None else util
        for minute, seconds in split_by_minute(a.ts, b.ts):
            if not _in_window(minute, start_minute_ts, end_minute_ts):
                continue
            bucket = acc(minute, b)
            bucket.observed_s += seconds
            bucket.util.add(util, seconds)
            bucket.sm.add(sm, seconds)
            bucket.power.add(b.power_w, seconds)
            if activity is not None:
                bucket.activity_s += seconds
            if activity is not None and activity < idle_threshold:
                bucket.idle_s += seconds
            if (b.process_count or 0) > 0 or (b.process_mem_bytes or 0) > 0:
                bucket.loaded_s += seconds
            if b.mem_used_bytes is not None:
                bucket.mem_used_max_bytes = max(bucket.mem_used_max_bytes or 0, b.mem_used_bytes)
            if b.mem_total_bytes is not None:
                bucket.mem_total_bytes = b.mem_total_bytes

    gpu_uuid = samples[0].gpu_uuid if samples else (previous.gpu_uuid if previous else "")
    return [
        GpuMinute(
            minute_ts=minute,
            host=a.host,
            gpu_uuid=gpu_uuid,
            gpu_index=a.gpu_index,
            deployment=a.deployment,
            observed_s=a.observed_s,
            util_observed_s=a.activity_s,
            idle_s=a.idle_s,
            loaded_s=a.loaded_s,
            gpu_util=a.util.mean,
            gpu_util_max=a.util.maximum,
            sm_active=a.sm.mean,
            energy_j=a.energy_j,
            power_mean_w=a.power.mean,
            mem_used_max_bytes=a.mem_used_max_bytes,
            mem_total_bytes=a.mem_total_bytes,
        )
        for minute, a in sorted(minutes.items())
    ]


@dataclass
class _ServerAcc:
    instances: set[str] = field(default_factory=set)
    observed_s: float = 0.0
    busy_known_s: float = 0.0
    busy_s: float = 0.0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefill_s: float | None = None
    decode_s: float | None = None
    running_by_instance: dict[str, _Weighted] = field(default_factory=lambda: defaultdict(_Weighted))
    waiting_by_instance: dict[str, _Weighted] = field(default_factory=lambda: defaultdict(_Weighted))
    kv: _Weighted = field(default_factory=_Weighted)


def _tokens(increase: float | None) -> int:
    return 0 if increase is None else round(increase)


def _plus(total: float | None, increase: float | None) -> float | None:
    """A sum of counter increases where known: None only while no increase is known."""
    return total if increase is None else (total or 0.0) + increase


def _rollup_server_series(
    samples: Sequence[ServerSample],
    previous: ServerSample | None,
    start_minute_ts: int,
    end_minute_ts: int,
    max_gap_s: float,
    minutes: dict[int, _ServerAcc],
) -> None:
    for a, b in _intervals(samples, previous):
        if a is None or b.ts <= a.ts:
            continue
        if b.ts - a.ts > max_gap_s:
            continue  # unknown time: its tokens are unknown too (module docstring)
        end_minute = minute_of_interval_end(b.ts)
        if _in_window(end_minute, start_minute_ts, end_minute_ts):
            bucket = minutes.setdefault(end_minute, _ServerAcc())
            bucket.instances.add(b.instance)
            bucket.prompt_tokens += _tokens(counter_increase(a.prompt_tokens_total, b.prompt_tokens_total))
            bucket.generation_tokens += _tokens(
                counter_increase(a.generation_tokens_total, b.generation_tokens_total)
            )
            bucket.prefill_s = _plus(
                bucket.prefill_s, counter_increase(a.prefill_seconds_total, b.prefill_seconds_total)
            )
            bucket.decode_s = _plus(
                bucket.decode_s, counter_increase(a.decode_seconds_total, b.decode_seconds_total)
            )
        for minute, seconds in split_by_minute(a.ts, b.ts):
            if not _in_window(minute, start_minute_ts, end_minute_ts):
                continue
            bucket = minutes.setdefault(minute, _ServerAcc())
            bucket.instances.add(b.instance)
            bucket.observed_s += seconds
            if b.requests_running is not None:
                bucket.busy_known_s += seconds
                if b.requests_running > 0:
                    bucket.busy_s += seconds
            bucket.running_by_instance[b.instance].add(b.requests_running, seconds)
            bucket.waiting_by_instance[b.instance].add(b.requests_waiting, seconds)
            bucket.kv.add(b.kv_cache_usage, seconds)


def _sum_of_means(by_instance: dict[str, _Weighted]) -> float | None:
    means = [w.mean for w in by_instance.values() if w.mean is not None]
    return sum(means) if means else None


def _weighted_mean(pairs: Iterable[tuple[float | None, float]]) -> float | None:
    acc = _Weighted()
    for value, seconds in pairs:
        acc.add(value, seconds)
    return acc.mean


@dataclass(frozen=True, slots=True)
class GpuShare:
    """A deployment-minute's GPU figures: the sum of its GPUs' observed seconds, and their
    utilization and SM activity weighted by the seconds each was known."""

    observed_s: float
    gpu_util: float | None
    sm_active: float | None


NO_GPUS = GpuShare(0, None, None)


def gpu_shares(gpu_rows: Iterable[GpuMinute]) -> dict[tuple[str, int], GpuShare]:
    """Per (deployment, minute): its GPU rows' share (rows without a deployment count nowhere)."""
    gpus: dict[tuple[str, int], list[GpuMinute]] = defaultdict(list)
    for row in gpu_rows:
        if row.deployment is not None:
            gpus[(row.deployment, row.minute_ts)].append(row)
    return {
        key: GpuShare(
            sum(g.observed_s for g in rows),
            _weighted_mean((g.gpu_util, g.util_observed_s) for g in rows),
            _weighted_mean((g.sm_active, g.util_observed_s) for g in rows),
        )
        for key, rows in gpus.items()
    }


def rollup_deployments(
    server_samples: Sequence[ServerSample],
    previous: Sequence[ServerSample],
    gpu_rows: Sequence[GpuMinute],
    start_minute_ts: int,
    end_minute_ts: int,
    *,
    max_gap_s: float,
    capacity_tokens_per_s: Callable[[str], float | None],
    shares: Mapping[tuple[str, int], GpuShare] | None = None,
) -> list[DeploymentMinute]:
    """Deployments' minutes from their servers' samples (ordered by deployment, instance, time) and
    their GPUs' minutes (or, from a bulk roll-up, `shares`: what `gpu_shares` makes of them). A
    minute with GPUs but no server data has unknown request measures."""
    before = {(s.deployment, s.instance): s for s in previous}
    servers: dict[str, dict[int, _ServerAcc]] = defaultdict(dict)
    for (deployment, instance), series in groupby(server_samples, key=lambda s: (s.deployment, s.instance)):
        _rollup_server_series(
            list(series),
            before.get((deployment, instance)),
            start_minute_ts,
            end_minute_ts,
            max_gap_s,
            servers[deployment],
        )

    shares = gpu_shares(gpu_rows) if shares is None else shares

    keys = {(d, m) for d, by_minute in servers.items() for m in by_minute} | set(shares)
    rows = []
    for deployment, minute in sorted(keys):
        server = servers.get(deployment, {}).get(minute, _ServerAcc())
        gpu = shares.get((deployment, minute), NO_GPUS)
        tokens = server.prompt_tokens + server.generation_tokens
        capacity = capacity_tokens_per_s(deployment)
        rows.append(
            DeploymentMinute(
                minute_ts=minute,
                deployment=deployment,
                instances=len(server.instances),
                server_observed_s=server.observed_s,
                prompt_tokens=server.prompt_tokens,
                generation_tokens=server.generation_tokens,
                request_busy_s=server.busy_s,
                requests_running_mean=_sum_of_means(server.running_by_instance),
                requests_waiting_mean=_sum_of_means(server.waiting_by_instance),
                kv_cache_mean=server.kv.mean,
                kv_cache_max=server.kv.maximum,
                gpu_observed_s=gpu.observed_s,
                gpu_util=gpu.gpu_util,
                sm_active=gpu.sm_active,
                request_busy=server.busy_s / server.busy_known_s if server.busy_known_s > 0 else None,
                throughput_util=(
                    tokens / MINUTE_S / capacity if capacity is not None and server.observed_s > 0 else None
                ),
                prefill_s=server.prefill_s,
                decode_s=server.decode_s,
            )
        )
    return rows


def run_rollup(
    store: Store,
    start_minute_ts: int,
    end_minute_ts: int,
    *,
    max_gap_s: float,
    idle_threshold: float,
    capacity_tokens_per_s: Callable[[str], float | None],
) -> tuple[int, int]:
    """Roll up [start, end) from the store's raw samples and replace that window's rows.

    Returns (GPU-minute rows, deployment-minute rows). Samples up to `max_gap_s` past the end are
    read too, so an interval that straddles the end counts its part inside; a window rolled up
    before those samples arrived is completed by rolling it up again (the daemon re-rolls its
    trailing minutes each time)."""
    if start_minute_ts % MINUTE_S or end_minute_ts % MINUTE_S:
        raise ValueError("a roll-up window starts and ends on whole minutes")
    gpu_before = {s.gpu_uuid: s for s in store.last_gpu_samples_before(start_minute_ts)}
    gpu_rows: list[GpuMinute] = []
    for uuid, series in groupby(
        store.gpu_samples(start_minute_ts, end_minute_ts + max_gap_s), key=lambda s: s.gpu_uuid
    ):
        gpu_rows.extend(
            rollup_gpu(
                list(series),
                gpu_before.get(uuid),
                start_minute_ts,
                end_minute_ts,
                max_gap_s=max_gap_s,
                idle_threshold=idle_threshold,
            )
        )
    deployment_rows = rollup_deployments(
        store.server_samples(start_minute_ts, end_minute_ts + max_gap_s),
        store.last_server_samples_before(start_minute_ts),
        gpu_rows,
        start_minute_ts,
        end_minute_ts,
        max_gap_s=max_gap_s,
        capacity_tokens_per_s=capacity_tokens_per_s,
    )
    store.replace_minutes(start_minute_ts, end_minute_ts, gpu_rows, deployment_rows)
    return len(gpu_rows), len(deployment_rows)
