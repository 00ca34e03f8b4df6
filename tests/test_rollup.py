"""Roll-ups: counters with resets, gaps as unknown time, minute splitting, idempotence through the store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditor.model import GpuSample, ServerSample
from auditor.rollup import (
    counter_increase,
    minute_of_interval_end,
    rollup_deployments,
    rollup_gpu,
    run_rollup,
    split_by_minute,
)
from auditor.store import Store

T0 = 1_790_000_040  # a whole minute


def gpu(
    ts: float, util: float | None = 50.0, energy_j: float | None = None, sm_active_pct: float | None = None
) -> GpuSample:
    return GpuSample(
        ts=ts,
        host="h1",
        gpu_uuid="GPU-a",
        gpu_index=0,
        deployment="llama",
        util_pct=util,
        energy_j=energy_j,
        sm_active_pct=sm_active_pct,
    )


def server(
    ts: float,
    prompt: float | None,
    generation: float | None,
    running: float | None = 1,
    instance: str = "http://h1:8000/metrics",
) -> ServerSample:
    return ServerSample(
        ts=ts,
        host="h1",
        deployment="llama",
        instance=instance,
        server_kind="vllm",
        prompt_tokens_total=prompt,
        generation_tokens_total=generation,
        requests_running=running,
        requests_waiting=0,
        kv_cache_usage=0.5,
    )


def no_capacity(_: str) -> float | None:
    return None


def test_counter_increase_handles_resets_like_prometheus() -> None:
    assert counter_increase(100, 150) == 50
    assert counter_increase(150, 20) == 20  # restarted: counts from zero again
    assert counter_increase(None, 20) is None
    assert counter_increase(5, None) is None


def test_split_by_minute_and_interval_end() -> None:
    assert list(split_by_minute(T0 + 50, T0 + 70)) == [(T0, 10), (T0 + 60, 10)]
    assert minute_of_interval_end(T0 + 60) == T0  # (a, b] with b on a boundary belongs before it
    assert minute_of_interval_end(T0 + 60.5) == T0 + 60


@given(
    start=st.floats(min_value=0, max_value=10**6, allow_nan=False),
    length=st.floats(min_value=0.001, max_value=10**4, allow_nan=False),
)
def test_split_by_minute_keeps_every_second(start: float, length: float) -> None:
    pieces = list(split_by_minute(start, start + length))
    assert sum(s for _, s in pieces) == pytest.approx(length, rel=1e-9, abs=1e-6)
    assert all(m % 60 == 0 for m, _ in pieces)


def test_gpu_minutes_time_weighted_with_gap_as_unknown() -> None:
    samples = [gpu(T0 + 10 * i, util=0 if i < 3 else 80, energy_j=1000.0 * i) for i in range(7)]
    samples.append(gpu(T0 + 180, util=80, energy_j=9000.0))  # 120 s later: a gap
    rows = rollup_gpu(samples, None, T0, T0 + 240, max_gap_s=30, idle_threshold=0.05)
    first, later = rows[0], rows[-1]
    assert first.minute_ts == T0
    assert first.observed_s == 60  # six 10 s intervals (the first sample only starts the series)
    # Intervals ending at 10, 20 read 0% (idle); those ending 30…60 read 80%.
    assert first.idle_s == 20
    assert first.gpu_util == pytest.approx(80 * 40 / 60 / 100)
    assert first.energy_j == 6000.0
    # The 120 s gap is unknown time, not idle; its energy increase still counts, in the minute it ends.
    assert later.minute_ts == T0 + 120
    assert later.observed_s == 0 and later.idle_s == 0
    assert later.energy_j == 3000.0
    assert all(r.minute_ts != T0 + 60 for r in rows)  # nothing was observed of that minute


def test_gpu_minute_prefers_sm_activity_for_idle() -> None:
    # Busy-polling: NVML says 100%, SM activity says 1%: idle.
    samples = [gpu(T0 + 10 * i, util=100, sm_active_pct=1.0) for i in range(7)]
    (row,) = rollup_gpu(samples, None, T0, T0 + 60, max_gap_s=30, idle_threshold=0.05)
    assert row.idle_s == 60
    assert row.gpu_util == pytest.approx(1.0) and row.sm_active == pytest.approx(0.01)


def test_unsupported_utilization_is_unknown_not_idle() -> None:
    samples = [gpu(T0 + 10 * i, util=None) for i in range(7)]
    (row,) = rollup_gpu(samples, None, T0, T0 + 60, max_gap_s=30, idle_threshold=0.05)
    assert row.observed_s == 60 and row.util_observed_s == 0
    assert row.idle_s == 0 and row.gpu_util is None


def test_tokens_with_a_server_restart_and_an_outage() -> None:
    samples = [
        server(T0 + 0, 1000, 100),
        server(T0 + 10, 1500, 150),
        server(T0 + 20, 200, 30),  # restarted: 200 and 30 tokens since
        server(T0 + 30, 400, 60, running=0),
        # down for 90 s: unknown time; the 500 prompt tokens it served meanwhile are unknown too
        server(T0 + 120, 900, 160, running=0),
        server(T0 + 130, 1000, 170, running=0),
    ]
    rows = rollup_deployments(samples, [], [], T0, T0 + 180, max_gap_s=30, capacity_tokens_per_s=no_capacity)
    by_minute = {r.minute_ts: r for r in rows}
    first = by_minute[T0]
    assert (first.prompt_tokens, first.generation_tokens) == (500 + 200 + 200, 50 + 30 + 30)
    assert first.server_observed_s == 30
    assert first.request_busy_s == 20 and first.request_busy == pytest.approx(2 / 3)
    assert T0 + 60 not in by_minute  # nothing observed, nothing counted: the outage's minute has no row
    after = by_minute[T0 + 120]
    assert (after.prompt_tokens, after.generation_tokens) == (100, 10)  # only the observed 10 s after it
    assert after.server_observed_s == 10
    assert sum(r.prompt_tokens for r in rows) == 1000


def test_tokens_across_a_gap_are_unknown_in_per_token_figures() -> None:
    """Design: tokens in unobserved time are unknown. Counting an outage's increase into the minute it
    ends would pair those tokens with the cost of the observed time alone."""
    steady = [server(T0 + 10 * i, 1000 * i, 0) for i in range(4)]  # 100 tokens/s, observed 30 s
    after_outage = [server(T0 + 600 + 10 * i, 60_000 + 1000 * i, 0) for i in range(4)]  # 570 s unseen
    rows = rollup_deployments(
        steady + after_outage, [], [], T0, T0 + 720, max_gap_s=30, capacity_tokens_per_s=no_capacity
    )
    observed = sum(r.server_observed_s for r in rows)
    tokens = sum(r.prompt_tokens for r in rows)
    assert observed == 60
    assert tokens == 6000  # 100 tokens/s × the 60 observed seconds: the measured rate, not 10× it


def test_two_replicas_add_up() -> None:
    a = [server(T0 + 10 * i, 100 * i, 10 * i, instance="a") for i in range(7)]
    b = [server(T0 + 10 * i, 50 * i, 5 * i, running=0, instance="b") for i in range(7)]
    (row,) = rollup_deployments(
        sorted(a + b, key=lambda s: (s.instance, s.ts)),
        [],
        [],
        T0,
        T0 + 60,
        max_gap_s=30,
        capacity_tokens_per_s=lambda _: 10.0,
    )
    assert row.instances == 2
    assert row.server_observed_s == 120
    assert row.prompt_tokens == 900 and row.generation_tokens == 90
    assert row.request_busy == pytest.approx(0.5)
    assert row.requests_running_mean == pytest.approx(1.0)
    assert row.throughput_util == pytest.approx(990 / 60 / 10)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    yield opened
    opened.close()


def test_run_rollup_is_idempotent_and_window_independent(store: Store) -> None:
    store.add_gpu_samples([gpu(T0 + 10 * i, util=(i * 7) % 100, energy_j=500.0 * i) for i in range(1, 37)])
    store.add_server_samples([server(T0 + 10 * i, 100 * i, 10 * i, running=i % 2) for i in range(1, 37)])
    kwargs = {"max_gap_s": 30.0, "idle_threshold": 0.05, "capacity_tokens_per_s": no_capacity}
    run_rollup(store, T0, T0 + 360, **kwargs)  # type: ignore[arg-type]
    whole_gpu, whole_dep = store.gpu_minutes(T0, T0 + 360), store.deployment_minutes(T0, T0 + 360)
    run_rollup(store, T0, T0 + 360, **kwargs)  # type: ignore[arg-type]
    assert store.gpu_minutes(T0, T0 + 360) == whole_gpu
    assert store.deployment_minutes(T0, T0 + 360) == whole_dep
    # Rolling up minute by minute gives the same rows as one window.
    for minute in range(T0, T0 + 360, 60):
        run_rollup(store, minute, minute + 60, **kwargs)  # type: ignore[arg-type]
    assert store.gpu_minutes(T0, T0 + 360) == whole_gpu
    assert store.deployment_minutes(T0, T0 + 360) == whole_dep
    assert sum(r.prompt_tokens for r in whole_dep) == 3500
    assert sum(r.energy_j or 0 for r in whole_gpu) == 17500.0
    assert sum(r.observed_s for r in whole_gpu) == 350  # from T0+10 to T0+360
    # The GPU minutes carry into the deployment's minutes.
    assert all(r.gpu_observed_s > 0 for r in whole_dep)


def test_run_rollup_rejects_partial_minutes(store: Store) -> None:
    with pytest.raises(ValueError, match="whole minutes"):
        run_rollup(
            store, T0 + 1, T0 + 60, max_gap_s=30, idle_threshold=0.05, capacity_tokens_per_s=no_capacity
        )
