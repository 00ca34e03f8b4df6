"""Fleet mode's bulk roll-up (`auditor.fleet.rollup_block`) against the host path's own rules: for
blocks with gaps, counter resets, missing fields, MIG-like rows (no duty cycle) and a GPU that moves
between deployments, its rows and deployment shares equal `rollup_gpu` and `gpu_shares` run on the
same points as samples — the same numbers to the last bit."""

from __future__ import annotations

import numpy as np
import pytest

from auditor.fleet import GpuBlock, rollup_block
from auditor.model import GpuMinute
from auditor.rollup import gpu_shares, rollup_gpu
from auditor.store import Store

T0 = 1_790_000_000 - 1_790_000_000 % 3600


def _block(seed: int, gpus: int = 12, width: int = 90) -> GpuBlock:
    rng = np.random.default_rng(seed)
    present = rng.random((gpus, width)) < rng.uniform(0.2, 1.0, (gpus, 1))  # sparse rows: gaps

    def field(low: float, high: float, missing: float) -> np.ndarray:
        values = rng.uniform(low, high, (gpus, width)).round(3)
        values[(rng.random((gpus, width)) < missing) | ~present] = np.nan
        return values

    util = field(0, 100, 0.1)
    util[:1] = np.nan  # a MIG instance: no duty cycle
    sm = field(0, 100, 0.1)
    sm[sm < 10] /= 10  # some idle minutes
    energy = np.cumsum(rng.uniform(0, 500, (gpus, width)), axis=1)
    energy[:, width // 2 :] -= energy[:, width // 2 : width // 2 + 1] - 3.0  # a reset half-way
    energy[(rng.random((gpus, width)) < 0.1) | ~present] = np.nan
    mem = np.rint(field(0, 80_000, 0.2) * (1 << 20))
    deployment = rng.integers(-1, 3, (gpus, 1)).repeat(width, axis=1).astype(np.int32)
    deployment[1:2, width // 3 :] = 2  # moved to another deployment
    deployment[~present] = -1
    # A point with no field known is not a point.
    values = (util, sm, energy, mem)
    present &= ~np.all([np.isnan(v) for v in values], axis=0)
    return GpuBlock(
        start_minute_ts=T0,
        uuids=[f"GPU-{i:04d}" for i in range(gpus)],
        hosts=[f"h{i // 4}" for i in range(gpus)],
        indexes=[i % 4 for i in range(gpus)],
        names=["NVIDIA H100 80GB HBM3"] * gpus,
        deployments=["a", "b", "c"],
        deployment=deployment,
        present=present,
        util_pct=util,
        sm_active_pct=sm,
        tensor_active_pct=np.full((gpus, width), np.nan),
        power_w=field(60, 700, 0.1),
        mem_used_bytes=mem,
        mem_total_bytes=np.where(present & (rng.random((gpus, width)) < 0.8), 81_559.0 * (1 << 20), np.nan),
        energy_j=energy,
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_gap_s", [60, 180, 900])
def test_bulk_rollup_equals_the_host_paths_rules(seed: int, max_gap_s: int) -> None:
    block = _block(seed)
    start, end = T0 + 10 * 60, T0 + 80 * 60
    got = rollup_block(block, start, end, max_gap_s=max_gap_s, idle_threshold=0.05)
    samples = block.samples()
    want: list[GpuMinute] = []
    for uuid in block.uuids:
        mine = [s for s in samples if s.gpu_uuid == uuid]
        want.extend(rollup_gpu(mine, None, start, end, max_gap_s=max_gap_s, idle_threshold=0.05))
    rows = [GpuMinute(*t) for t in got.rows.tuples]
    assert rows == want
    assert len(got.rows) == len(want)
    assert got.shares == gpu_shares(want)
    assert got.gpus == len(block.uuids)


def test_an_empty_block_has_no_rows() -> None:
    block = _block(0, gpus=0)
    got = rollup_block(block, T0, T0 + 60 * 60, max_gap_s=180, idle_threshold=0.05)
    assert len(got.rows) == 0 and got.shares == {}


def test_bulk_rows_cross_tuple_batches() -> None:
    block = _block(7, gpus=300)  # ~20k rows: more than one batch of tuples
    got = rollup_block(block, T0, T0 + 90 * 60, max_gap_s=180, idle_threshold=0.05)
    rows = [GpuMinute(*t) for t in got.rows.tuples]
    assert len(rows) == len(got.rows) > 16_384
    assert got.shares == gpu_shares(rows)


def test_bulk_rows_are_stored_as_they_are(store_url: str) -> None:
    """Written in bulk (a COPY on PostgreSQL from 1,000 rows, executemany in batches on SQLite), the
    rows read back the same, NULLs included; past the minute window a whole hour's GPU minutes can
    go once its tiers are written, and the hour reads the same from the tiers."""
    block = _block(3, gpus=40)
    start, end = T0, T0 + 90 * 60
    got = rollup_block(block, start, end, max_gap_s=180, idle_threshold=0.05)
    samples = block.samples()
    want = [
        row
        for uuid in block.uuids
        for row in rollup_gpu([s for s in samples if s.gpu_uuid == uuid], None, start, end, max_gap_s=180,
                              idle_threshold=0.05)
    ]  # fmt: skip
    assert len(got.rows) == len(want) > 1000
    store = Store.open(store_url)
    try:
        store.replace_minutes(start, end, got.rows, [])
        stored = store.gpu_minutes(start, end)
        assert sorted(stored, key=lambda r: (r.gpu_uuid, r.minute_ts)) == want
        hour = store.window_buckets(T0, T0 + 3600, block.deployments)
        # Whole hours only: the hour at the window's end keeps its minutes (a later chunk adds to it).
        dropped = store.drop_gpu_minutes(start, end)
        assert dropped == sum(1 for r in want if r.minute_ts < T0 + 3600) > 0
        assert {r.minute_ts >= T0 + 3600 for r in store.gpu_minutes(start, end)} == {True}
        assert store.window_buckets(T0, T0 + 3600, block.deployments) == hour
    finally:
        store.close()
