"""Fleet mode's roll-up: per-minute samples read from a metrics store (Prometheus, through
`collectors.prometheus`) rolled up by `auditor.rollup`'s rules into the same minute rows and tiers as
a host's, so the report, the rules and the digest read a fleet as they read a host.

Windows are rolled up a chunk at a time (the source's `chunk_minutes`), each chunk read with enough
minutes around it that the intervals crossing its edges count their part inside, and written in one
transaction. Several replicas of the auditor may share one PostgreSQL store: a chunk is written only
under the store's `fleet-rollup` lock (a PostgreSQL advisory lock, taken without waiting for a whole
run: the replica holding it rolls up, the others skip that run), and the minute tables' keys refuse a
second copy of a row anyway. A source that does not answer leaves the window unwritten — unknown,
never zeros — and `FleetRollup` reads it again on its next run.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from auditor.model import MINUTE_S, GpuMinute, GpuSample, ServerSample
from auditor.rollup import GpuShare, minute_floor, rollup_deployments
from auditor.store import RecordRows, Store

log = logging.getLogger("auditor.fleet")

LOCK_NAME = "fleet-rollup"


Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class GpuBlock:
    """A fleet's GPUs over a grid of minutes, as arrays: row `i` is the GPU `uuids[i]`, column `k` the
    minute `start_minute_ts + 60 k` — its point, the samples taken in `(m, m + 60]`, stamped `m + 60`
    (`collectors.prometheus`). NaN: not known; `present[i, k]`: the GPU has a point there (some field
    known). Units as in `GpuSample`. A GPU that moved between pods has the deployment of each point
    (`deployment` holds indexes into `deployments`, -1 for none)."""

    start_minute_ts: int
    uuids: list[str]
    hosts: list[str]
    indexes: list[int]
    names: list[str | None]
    deployments: list[str]
    deployment: npt.NDArray[np.int32]
    present: npt.NDArray[np.bool_]
    util_pct: Floats
    sm_active_pct: Floats
    tensor_active_pct: Floats
    power_w: Floats
    mem_used_bytes: Floats
    mem_total_bytes: Floats
    energy_j: Floats

    def samples(self) -> list[GpuSample]:
        """The points as samples (ordered by GPU, then time): what the host path would roll up."""
        out = []
        for i, uuid in enumerate(self.uuids):
            for k in np.flatnonzero(self.present[i]).tolist():

                def known(values: Floats, i: int = i, k: int = k) -> float | None:
                    value = float(values[i, k])
                    return None if math.isnan(value) else value

                mem = known(self.mem_used_bytes)
                total = known(self.mem_total_bytes)
                code = int(self.deployment[i, k])
                out.append(
                    GpuSample(
                        ts=float(self.start_minute_ts + (k + 1) * MINUTE_S),
                        host=self.hosts[i],
                        gpu_uuid=uuid,
                        gpu_index=self.indexes[i],
                        deployment=self.deployments[code] if code >= 0 else None,
                        gpu_name=self.names[i],
                        util_pct=known(self.util_pct),
                        sm_active_pct=known(self.sm_active_pct),
                        tensor_active_pct=known(self.tensor_active_pct),
                        mem_used_bytes=None if mem is None else int(mem),
                        mem_total_bytes=None if total is None else int(total),
                        power_w=known(self.power_w),
                        energy_j=known(self.energy_j),
                    )
                )
        return out


@dataclass(frozen=True)
class BlockRollup:
    """A block's minute rows in a window (tuples in `GpuMinute`'s field order) and what each
    deployment-minute gets from its GPUs."""

    rows: RecordRows[GpuMinute]
    shares: dict[tuple[str, int], GpuShare]
    gpus: int


TUPLE_BATCH = 16_384
"""Rows turned into Python tuples at a time: a chunk's rows as objects would be ~400 bytes each."""


def _tuples(
    columns: list[tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None]], count: int
) -> Iterator[tuple[Any, ...]]:
    """The rows as tuples of plain Python scalars (None where a value is not known)."""
    for first in range(0, count, TUPLE_BATCH):
        batch = []
        for values, known in columns:
            part = values[first : first + TUPLE_BATCH]
            if known is not None:
                part = part.astype(object)
                part[~known[first : first + TUPLE_BATCH]] = None
            batch.append(part.tolist())
        yield from zip(*batch, strict=True)


def rollup_block(
    block: GpuBlock, start_minute_ts: int, end_minute_ts: int, *, max_gap_s: float, idle_threshold: float
) -> BlockRollup:
    """`auditor.rollup.rollup_gpu`'s rules over a whole block at once (each point is a sample stamped
    at its minute's end, so every interval is whole minutes): minute `k` is observed, for 60 s, when
    the point before it and the first point at or after it are no more than `max_gap_s` apart, and
    takes that later point's values; a counter's increase (the value itself after a drop) lands in
    the minute of the later of two consecutive points, gap or not. The same floating-point steps as
    `rollup_gpu`, so the rows are the same numbers."""
    if (start_minute_ts - block.start_minute_ts) % MINUTE_S or (end_minute_ts - start_minute_ts) % MINUTE_S:
        raise ValueError("a roll-up window starts and ends on whole minutes")
    present = block.present
    gpus, width = present.shape
    grid = np.arange(width)
    upto = np.maximum.accumulate(np.where(present, grid, -1), axis=1)  # last point at or before k
    before = np.concatenate([np.full((gpus, 1), -1), upto[:, :-1]], axis=1)  # last point before k
    later = np.minimum.accumulate(np.where(present, grid, width)[:, ::-1], axis=1)[:, ::-1]  # first at/after
    k0 = max(0, (start_minute_ts - block.start_minute_ts) // MINUTE_S)
    k1 = min(width, max(k0, (end_minute_ts - block.start_minute_ts) // MINUTE_S))
    before, later, here = before[:, k0:k1], later[:, k0:k1], present[:, k0:k1]
    observed = (later < width) & (before >= 0) & ((later - before) * MINUTE_S <= max_gap_s)
    b = np.minimum(later, width - 1)

    def at(values: Floats) -> Floats:
        return np.take_along_axis(values, b, axis=1)

    energy = block.energy_j
    energy_b = energy[:, k0:k1]
    energy_a = np.take_along_axis(energy, np.maximum(before, 0), axis=1)
    increase = np.where(energy_b >= energy_a, energy_b - energy_a, energy_b)
    has_increase = here & (before >= 0) & np.isfinite(energy_a) & np.isfinite(energy_b)
    keep = observed | has_increase
    rows_i, rows_k = np.nonzero(keep)

    def pick(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return values[rows_i, rows_k]

    seconds = float(MINUTE_S)
    util = at(block.util_pct) / 100
    sm = at(block.sm_active_pct) / 100
    activity = np.where(np.isnan(sm), util, sm)
    util_known = observed & ~np.isnan(util)
    sm_known = observed & ~np.isnan(sm)
    activity_known = observed & ~np.isnan(activity)
    power = at(block.power_w)
    mem = at(block.mem_used_bytes)
    mem_known = observed & ~np.isnan(mem)
    memory = at(block.mem_total_bytes)
    memory_known = observed & ~np.isnan(memory)
    observed_s = pick(np.where(observed, seconds, 0.0))
    activity_s = pick(np.where(activity_known, seconds, 0.0))
    idle_s = pick(np.where(activity_known & (activity < idle_threshold), seconds, 0.0))
    gpu_util, util_known = pick(util * seconds / seconds), pick(util_known)
    sm_active, sm_known = pick(sm * seconds / seconds), pick(sm_known)
    codes = pick(np.take_along_axis(block.deployment, b, axis=1))
    names = np.array([*block.deployments, None], dtype=object)
    minute_ts = block.start_minute_ts + (rows_k + k0) * MINUTE_S
    # Columns as arrays, with what is known of the nullable ones; tuples are made a batch at a time.
    columns: list[tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None]] = [
        (minute_ts, None),
        (np.array(block.hosts, dtype=object)[rows_i], None),
        (np.array(block.uuids, dtype=object)[rows_i], None),
        (np.array(block.indexes, dtype=np.int64)[rows_i], None),
        (names[codes], None),
        (observed_s, None),
        (activity_s, None),
        (idle_s, None),
        (np.zeros(len(rows_i)), None),  # loaded_s: DCGM has no process list
        (gpu_util, util_known),
        (pick(util), util_known),
        (sm_active, sm_known),
        (pick(increase), pick(has_increase)),
        (pick(power * seconds / seconds), pick(observed & ~np.isnan(power))),
        (np.where(mem_known, mem, 0).astype(np.int64)[rows_i, rows_k], pick(mem_known)),
        (np.where(memory_known, memory, 0).astype(np.int64)[rows_i, rows_k], pick(memory_known)),
    ]
    rows = RecordRows(GpuMinute, _tuples(columns, len(rows_i)), len(rows_i))

    # Each deployment-minute's GPUs, summed in the rows' order (GPU, then minute) as `gpu_shares` sums
    # them, so the figures are the same to the last bit.
    shares: dict[tuple[str, int], GpuShare] = {}
    assigned = codes >= 0
    if assigned.any():
        keys, where = np.unique(codes[assigned] * (k1 - k0) + rows_k[assigned], return_inverse=True)

        def total(values: Floats) -> Floats:
            return np.bincount(where, weights=values[assigned], minlength=len(keys)).astype(np.float64)

        weighted = activity_s > 0
        util_w = util_known & weighted
        sm_w = sm_known & weighted
        observed_total = total(observed_s)
        util_total = total(np.where(util_w, gpu_util * activity_s, 0.0))
        util_seconds = total(np.where(util_w, activity_s, 0.0))
        sm_total = total(np.where(sm_w, sm_active * activity_s, 0.0))
        sm_seconds = total(np.where(sm_w, activity_s, 0.0))
        for j, key in enumerate(keys.tolist()):
            code, k = divmod(key, k1 - k0)
            shares[(block.deployments[code], block.start_minute_ts + (k + k0) * MINUTE_S)] = GpuShare(
                float(observed_total[j]),
                float(util_total[j] / util_seconds[j]) if util_seconds[j] > 0 else None,
                float(sm_total[j] / sm_seconds[j]) if sm_seconds[j] > 0 else None,
            )
    return BlockRollup(rows, shares, gpus)


class FleetSource(Protocol):
    """Per-minute points of a fleet (`collectors.prometheus.FleetReader`)."""

    chunk_minutes: int

    @property
    def requests(self) -> int:
        """Requests sent so far (for the benchmark and the log)."""
        ...

    def read(self, start_minute_ts: int, end_minute_ts: int) -> tuple[GpuBlock, list[ServerSample]]:
        """The GPUs' points and the servers' samples of the minutes in [start, end); raises when the
        source cannot be read."""
        ...


@dataclass(frozen=True, slots=True)
class FleetResult:
    start_minute_ts: int
    end_minute_ts: int
    gpu_rows: int
    deployment_rows: int
    chunks: int
    skipped: bool = False
    """Another replica holds the roll-up lock: the window is left to it, nothing was read."""


def rollup_fleet(
    store: Store,
    source: FleetSource,
    start_minute_ts: int,
    end_minute_ts: int,
    *,
    max_gap_s: float,
    idle_threshold: float,
    capacity_tokens_per_s: Callable[[str], float | None],
    written: Callable[[int], None] | None = None,
    stop: Callable[[], bool] | None = None,
    minute_cut: Callable[[int], float] | None = None,
) -> FleetResult:
    """Read and roll up [start, end) chunk by chunk, replacing each chunk's rows in the store
    (`written(chunk_end)` after each). `minute_cut(gpus)`: where the store's minute window begins
    for that many GPUs; GPU minutes before it are dropped once their hours' tiers are written (a
    backfill of a large fleet; the daemon's prune does it otherwise).

    Raises the source's error at the first chunk it cannot read; the chunks before it are written."""
    if start_minute_ts % MINUTE_S or end_minute_ts % MINUTE_S:
        raise ValueError("a roll-up window starts and ends on whole minutes")
    margin = math.ceil(max_gap_s / MINUTE_S) * MINUTE_S + MINUTE_S
    # Each chunk is read with `margin` on both sides, in one request per query.
    chunk_s = max(MINUTE_S, source.chunk_minutes * MINUTE_S - 2 * margin)
    gpu_total = deployment_total = chunks = 0
    with store.try_lock(LOCK_NAME) as locked:
        if not locked:
            return FleetResult(start_minute_ts, end_minute_ts, 0, 0, 0, skipped=True)
        for first in range(start_minute_ts, end_minute_ts, chunk_s):
            if stop is not None and stop():
                break  # what is written stays; the rest is read on the next run
            after = min(first + chunk_s, end_minute_ts)
            block, server_samples = source.read(first - margin, after + margin)
            gpu = rollup_block(block, first, after, max_gap_s=max_gap_s, idle_threshold=idle_threshold)
            deployment_rows = rollup_deployments(
                server_samples,
                [],
                [],
                first,
                after,
                max_gap_s=max_gap_s,
                capacity_tokens_per_s=capacity_tokens_per_s,
                shares=gpu.shares,
            )
            store.replace_minutes(first, after, gpu.rows, deployment_rows)
            if minute_cut is not None:
                # The tiers of the hours before this chunk's last one are final: past the minute
                # window, their GPU minutes go now rather than at the next prune.
                store.drop_gpu_minutes(start_minute_ts, min(minute_cut(gpu.gpus), after))
            chunks += 1
            gpu_total += len(gpu.rows)
            deployment_total += len(deployment_rows)
            if written is not None:
                written(after)
    return FleetResult(start_minute_ts, end_minute_ts, gpu_total, deployment_total, chunks)


class FleetRollup:
    """The daemon's fleet job: each run re-reads the trailing minutes, and everything since the last
    window that was written (after an outage of Prometheus, or at start: since the store's newest
    minute, at most `catch_up_s` back)."""

    def __init__(
        self,
        store: Store,
        source: FleetSource,
        *,
        reread_s: int,
        max_gap_s: float,
        idle_threshold: float,
        capacity_tokens_per_s: Callable[[str], float | None],
        catch_up_s: int,
    ) -> None:
        self.store = store
        self.source = source
        self.reread_s = reread_s
        self.max_gap_s = max_gap_s
        self.idle_threshold = idle_threshold
        self.capacity_tokens_per_s = capacity_tokens_per_s
        self.catch_up_s = catch_up_s
        self.done_until: int | None = None
        """The end of the last window written: the next run starts no later than this."""
        self.progress: Callable[[], None] | None = None
        """Called after each chunk is written (the daemon's liveness during a long catch-up)."""
        self.stopping = threading.Event()
        """Set at shutdown: a run stops before its next chunk."""

    def window(self, now: float) -> tuple[int, int]:
        end = minute_floor(now)
        start = end - self.reread_s
        if self.done_until is None:
            last = self.store.last_minute_ts()
            self.done_until = max(last, end - self.catch_up_s) if last is not None else end - self.catch_up_s
        return min(start, self.done_until), end

    def run(self, now: float) -> FleetResult:
        start, end = self.window(now)
        result = rollup_fleet(
            self.store,
            self.source,
            start,
            end,
            max_gap_s=self.max_gap_s,
            idle_threshold=self.idle_threshold,
            capacity_tokens_per_s=self.capacity_tokens_per_s,
            written=self._written,
            stop=self.stopping.is_set,
        )
        # After a run another replica did, start again from what the store holds; after a stop, from
        # the last chunk written.
        if result.skipped:
            self.done_until = None
        elif not self.stopping.is_set():
            self.done_until = end
        return result

    def _written(self, chunk_end: int) -> None:
        # Progress survives a failure in a later chunk; the trailing minutes are re-read anyway.
        self.done_until = max(self.done_until or chunk_end, chunk_end)
        if self.progress is not None:
            self.progress()
