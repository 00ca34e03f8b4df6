"""The roll-up tiers of simulated minutes, computed in memory.

`auditor replay` and `auditor demo` simulate months of minutes. Writing each minute row and then
summing them back in SQL (`auditor.store._refresh_tiers`) was most of their time, while the report
reads the tiers (GPU-hours, deployment quarter-hours) for every whole hour or quarter-hour and minute
rows only at a window's ragged ends. So the simulation sums its own tiers here, with numpy, and writes
minute rows only where a reader still needs them (`collectors.replay.replay_into_store`).

The rows are the ones `_refresh_tiers` writes from the same minutes, value for value: every sum is
added in minute order starting from 0.0, as SQLite's SUM does (a GPU's minute is added once per GPU,
as the SQL adds each GPU's row), so the floats are the same to the last bit (SQLite 3.43 and later
sum with error compensation: there, to about 1e-15). `tests/test_replay_tiers.py` checks this against
the SQL on random simulations.

Every simulated minute is observed (server and GPUs), with every measure known and no phase times:
the sums here rely on that (`MinuteColumns` has no way to say otherwise; unobserved minutes are refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from auditor.costing import MEASURED_CAPACITY_MINUTES
from auditor.model import MINUTE_S
from auditor.store import BUCKET_S, HOUR_S, TIER_IDLE_LOADED_BELOW, TIER_IDLE_LOADED_MIN_MEM_BYTES

_PER_HOUR = HOUR_S // MINUTE_S
_PER_QUARTER = BUCKET_S // MINUTE_S


@dataclass
class PeakCarry:
    """A deployment's last minutes before the next chunk: a sustained-peak run may start in them."""

    minutes: list[tuple[int, int]] = field(default_factory=list)
    """(minute_ts, tokens served) of at most MEASURED_CAPACITY_MINUTES − 1 minutes, in time order."""


@dataclass(frozen=True, slots=True)
class MinuteColumns:
    """One deployment's minutes in time order, as columns: what each of its GPUs reads (every
    simulated GPU reads the same) and what its server does. Named as `GpuMinute`'s and
    `DeploymentMinute`'s fields."""

    minute_ts: np.ndarray
    observed_s: np.ndarray
    util_observed_s: np.ndarray
    idle_s: np.ndarray
    loaded_s: np.ndarray
    gpu_util: np.ndarray
    gpu_util_max: np.ndarray
    sm_active: np.ndarray
    energy_j: np.ndarray
    mem_used_max_bytes: np.ndarray
    mem_total_bytes: np.ndarray
    instances: np.ndarray
    server_observed_s: np.ndarray
    prompt_tokens: np.ndarray
    generation_tokens: np.ndarray
    request_busy: np.ndarray

    def part(self, first: int, after: int) -> MinuteColumns:
        """Minutes [first, after) by position."""
        return MinuteColumns(*(getattr(self, name)[first:after] for name in self.__slots__))


@dataclass(frozen=True, slots=True)
class TierRows:
    """A chunk's tier rows as tuples in their tables' column order."""

    quarter_hours: list[tuple[Any, ...]]
    """`deployment_quarter_hours` rows."""
    gpu_hours: list[tuple[Any, ...]]
    """`gpu_hours` rows."""


def _sums(grid: np.ndarray, width: int) -> np.ndarray:
    """Per group of `width` consecutive slots, the values added in slot order from 0.0 (SQLite's SUM:
    absent minutes are 0.0 slots, which change no sum). `grid` may stack several series (one per
    row): each is summed alike, in one pass over the slots."""
    rows = grid.reshape(*grid.shape[:-1], -1, width)
    total = np.zeros(rows.shape[:-1], dtype=grid.dtype)
    for column in range(width):
        total += rows[..., column]
    return total


def _added(values: np.ndarray, times: int) -> np.ndarray:
    """`values` added `times` times from 0.0, one by one: the sum of a minute's identical GPU rows."""
    total = np.zeros_like(values)
    for _ in range(times):
        total += values
    return total


def simulated_tiers(
    name: str,
    minutes: MinuteColumns,
    gpu_keys: Sequence[tuple[str, str, int, str]],
    chunk_start_ts: int,
    chunk_end_ts: int,
    carry: PeakCarry,
) -> TierRows:
    """The tier rows of deployment `name`'s minutes in [chunk_start, chunk_end), read alike by each of
    its GPUs (`gpu_keys`: host, UUID, index, deployment). The chunk must hold whole hours (its start
    may be inside the first). `carry` holds the minutes before the chunk a sustained-peak run may
    start in, and is updated for the next chunk."""
    minute_ts = minutes.minute_ts
    if not len(minute_ts):
        return TierRows([], [])
    first_h = chunk_start_ts - chunk_start_ts % HOUR_S
    if chunk_end_ts % HOUR_S or minute_ts[0] < chunk_start_ts or minute_ts[-1] >= chunk_end_ts:
        raise ValueError("a chunk of simulated minutes must end on an hour and hold its minutes")
    hours = (chunk_end_ts - first_h) // HOUR_S
    slot = (minute_ts - first_h) // MINUTE_S
    present = np.zeros(hours * _PER_HOUR, dtype=bool)
    present[slot] = True

    def grid(values: np.ndarray) -> np.ndarray:
        out = np.zeros(hours * _PER_HOUR, dtype=values.dtype)
        out[slot] = values
        return out

    gpus = len(gpu_keys)
    # GPU readings, one GPU's (every simulated GPU reads the same).
    observed = grid(minutes.observed_s)
    util_observed = grid(minutes.util_observed_s)
    loaded = grid(minutes.loaded_s)
    sm_active = grid(minutes.sm_active)
    mem_used = grid(minutes.mem_used_max_bytes)
    known_s = np.where(util_observed > 0, util_observed, 0.0)  # store._known: measure known and weighs
    util_w = grid(minutes.gpu_util) * known_s
    sm_w = sm_active * known_s
    energy = grid(minutes.energy_j)
    # The deployment's server.
    server_observed = grid(minutes.server_observed_s)
    request_busy = grid(minutes.request_busy)
    if (observed[slot] <= 0).any() or (server_observed[slot] <= 0).any():
        raise ValueError("simulated minutes have their GPUs and server observed")
    prompt = grid(minutes.prompt_tokens)
    generation = grid(minutes.generation_tokens)
    instances = grid(minutes.instances)

    # The quarter-hour tier: the GPUs summed per minute (each GPU's row added), then per quarter-hour.
    gpu_observed = _added(observed, gpus)
    *gpu_sums, server_observed_q, request_busy_q, served_wall = _sums(
        np.stack(
            [
                gpu_observed,
                gpu_observed * (1 - request_busy),  # idle where the server is known: no request running
                _added(util_w, gpus),
                _added(known_s, gpus),
                _added(sm_w, gpus),
                _added(known_s, gpus),
                _added(energy, gpus),
                server_observed,
                request_busy * server_observed,
                server_observed / np.where(instances > 1, instances, 1),
            ]
        ),
        _PER_QUARTER,
    )
    server_sums = (server_observed_q, request_busy_q, server_observed_q)
    prompt_sum, generation_sum = (v.reshape(-1, _PER_QUARTER).sum(axis=1) for v in (prompt, generation))
    quarter_minutes = present.reshape(-1, _PER_QUARTER).sum(axis=1)
    tokens = prompt + generation
    peaks = _peaks(minute_ts, tokens[slot], chunk_start_ts, carry)
    quarters = np.flatnonzero(quarter_minutes)
    buckets = (first_h + quarters * BUCKET_S).tolist()
    nothing = [None] * len(buckets)
    quarter_hours = list(
        zip(
            buckets,
            [name] * len(buckets),
            *(s[quarters].tolist() for s in gpu_sums),
            prompt_sum[quarters].tolist(),
            generation_sum[quarters].tolist(),
            *(s[quarters].tolist() for s in server_sums),
            (prompt_sum + generation_sum)[quarters].tolist(),  # served tokens: every minute is served
            served_wall[quarters].tolist(),
            (gpus * quarter_minutes)[quarters].tolist(),  # GPU-minutes observed
            quarter_minutes[quarters].tolist(),  # minutes with a GPU observed
            nothing,  # prefill_s
            nothing,  # decode_s
            [peaks.get(bucket_ts) for bucket_ts in buckets],
            strict=True,
        )
    )

    # The GPU-hour tier, one GPU's sums for each of them; idle-loaded at the rule's defaults
    # (store._idle_loaded_terms): activity (sm_active, known) under the threshold, no request
    # running, a model held.
    idle_loaded = (
        present
        & (sm_active < TIER_IDLE_LOADED_BELOW)
        & ~(request_busy > 0)
        & ((loaded > 0) | (mem_used >= TIER_IDLE_LOADED_MIN_MEM_BYTES))
    )

    def most(values: np.ndarray, absent: Any) -> np.ndarray:
        highest: np.ndarray = np.where(present, values, absent).reshape(-1, _PER_HOUR).max(axis=1)
        return highest

    hour_minutes = present.reshape(-1, _PER_HOUR).sum(axis=1)
    observed_h, util_observed_h, idle_h, loaded_h, util_w_h, known_h, sm_w_h, energy_h = _sums(
        np.stack([observed, util_observed, grid(minutes.idle_s), loaded, util_w, known_s, sm_w, energy]),
        _PER_HOUR,
    )
    util_max_h = most(grid(minutes.gpu_util_max), -np.inf)
    mem_used_h = most(mem_used, -1)
    mem_total_h = most(grid(minutes.mem_total_bytes), -1)
    idle_loaded_h = _sums(np.where(idle_loaded, observed, 0.0), _PER_HOUR)
    working_h = (present & ~idle_loaded).reshape(-1, _PER_HOUR).sum(axis=1)
    hours_seen = np.flatnonzero(hour_minutes)
    per_hour = zip(
        (first_h + hours_seen * HOUR_S).tolist(),
        *(
            v[hours_seen].tolist()
            for v in (
                hour_minutes,
                observed_h,
                util_observed_h,
                idle_h,
                loaded_h,
                util_w_h,
                known_h,
                util_max_h,
                sm_w_h,
                known_h,
                energy_h,
                mem_used_h,
                mem_total_h,
                observed_h,  # activity known: every minute observed
                idle_loaded_h,
                working_h,
            )
        ),
        strict=True,
    )
    gpu_hours = [
        (hour_ts, uuid, deployment, host, index, *values)
        for hour_ts, *values in per_hour
        for host, uuid, index, deployment in gpu_keys
    ]
    return TierRows(quarter_hours, gpu_hours)


def _peaks(
    minute_ts: np.ndarray, tokens: np.ndarray, chunk_start_ts: int, carry: PeakCarry
) -> dict[int, int]:
    """Per quarter-hour of the chunk: the most tokens served in MEASURED_CAPACITY_MINUTES consecutive
    minutes ending in it (`store._refresh_peaks`; every simulated minute is served). Quarter-hours
    where no such run ends are absent."""
    run = MEASURED_CAPACITY_MINUTES
    before = carry.minutes
    ts = np.concatenate([np.array([m for m, _ in before], dtype=np.int64), minute_ts])
    counts = np.concatenate([np.array([t for _, t in before], dtype=np.int64), tokens])
    carry.minutes = list(zip(ts[-(run - 1) :].tolist(), counts[-(run - 1) :].tolist(), strict=True))
    if len(ts) < run:
        return {}
    # Minutes of an unbroken run so far, at each minute.
    breaks = np.flatnonzero(np.diff(ts) != MINUTE_S) + 1
    start_of_run = np.zeros(len(ts), dtype=np.int64)
    start_of_run[breaks] = breaks
    np.maximum.accumulate(start_of_run, out=start_of_run)
    length = np.arange(len(ts)) - start_of_run + 1
    total = np.cumsum(np.concatenate([[0], counts]))
    ends = np.flatnonzero((length >= run) & (ts >= chunk_start_ts))
    if not len(ends):
        return {}
    sums = total[ends + 1] - total[ends + 1 - run]
    buckets = ts[ends] - ts[ends] % BUCKET_S  # in time order: each quarter-hour's ends are one stretch
    firsts = np.flatnonzero(np.concatenate([[True], buckets[1:] != buckets[:-1]]))
    return dict(zip(buckets[firsts].tolist(), np.maximum.reduceat(sums, firsts).tolist(), strict=True))
