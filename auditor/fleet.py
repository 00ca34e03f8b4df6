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
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from typing import Protocol

from auditor.model import MINUTE_S, GpuSample, ServerSample
from auditor.rollup import minute_floor, rollup_deployments, rollup_gpu
from auditor.store import Store

log = logging.getLogger("auditor.fleet")

LOCK_NAME = "fleet-rollup"


class FleetSource(Protocol):
    """Per-minute samples of a fleet (`collectors.prometheus.FleetReader`)."""

    chunk_minutes: int

    @property
    def requests(self) -> int:
        """Requests sent so far (for the benchmark and the log)."""
        ...

    def read(self, start_minute_ts: int, end_minute_ts: int) -> tuple[list[GpuSample], list[ServerSample]]:
        """Samples of the minutes in [start, end); raises when the source cannot be read."""
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
) -> FleetResult:
    """Read and roll up [start, end) chunk by chunk, replacing each chunk's rows in the store
    (`written(chunk_end)` after each).

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
            gpu_samples, server_samples = source.read(first - margin, after + margin)
            gpu_rows = []
            for _uuid, series in groupby(gpu_samples, key=lambda s: s.gpu_uuid):
                gpu_rows.extend(
                    rollup_gpu(
                        list(series), None, first, after, max_gap_s=max_gap_s, idle_threshold=idle_threshold
                    )
                )
            deployment_rows = rollup_deployments(
                server_samples,
                [],
                gpu_rows,
                first,
                after,
                max_gap_s=max_gap_s,
                capacity_tokens_per_s=capacity_tokens_per_s,
            )
            store.replace_minutes(first, after, gpu_rows, deployment_rows)
            chunks += 1
            gpu_total += len(gpu_rows)
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
