"""The roll-up tiers: a window's sums from the quarter-hour tier and the minute rows at its ends equal
the sums of its minutes, before and after the minutes are pruned, in every zone (DST and half- and
quarter-hour offsets included); an existing store migrates in place; re-rolling changes nothing."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, func, insert, select

from auditor.costing import run_totals
from auditor.model import DeploymentMinute, GpuMinute
from auditor.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Bucket,
    Store,
    _minute_buckets,
    deployment_minutes,
    deployment_quarter_hours,
    gpu_hours,
    gpu_minutes,
    merged,
    schema_version,
)

# Twenty days across the end of DST in Europe (Oct 25) and North America (Nov 1), 2026.
SPAN_START = int(datetime(2026, 10, 18, tzinfo=UTC).timestamp())
SPAN_DAYS = 20
SPAN_END = SPAN_START + SPAN_DAYS * 86_400
DEPLOYMENTS = ("llama", "mistral")
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe")

maybe_share = st.none() | st.floats(0, 1)
# Rows crowd into a few hours (the end of DST in Berlin and New York among them), so that windows,
# chunks and quarter-hour edges drawn near them cut through data.
HOT_HOURS = (0, 1, 7 * 24 + 1, 7 * 24 + 2, 14 * 24 + 5, 14 * 24 + 6, 19 * 24 + 23)


def hot_ts(draw: st.DrawFn, spread_s: int = 3600) -> int:
    return SPAN_START + 3600 * draw(st.sampled_from(HOT_HOURS)) + draw(st.integers(-spread_s, 2 * spread_s))


def hot_minute(draw: st.DrawFn) -> int:
    return min(max(SPAN_START, hot_ts(draw) // 60 * 60), SPAN_END - 60)


@st.composite
def gpu_minute(draw: st.DrawFn) -> GpuMinute:
    gpu = draw(st.integers(0, 3))
    observed = draw(st.floats(0, 60))
    return GpuMinute(
        minute_ts=hot_minute(draw),
        host="h",
        gpu_uuid=f"GPU-{gpu}",
        gpu_index=gpu,
        deployment=draw(st.sampled_from((*DEPLOYMENTS, None))),
        observed_s=observed,
        util_observed_s=draw(st.floats(0, observed)),
        idle_s=draw(st.floats(0, observed)),
        loaded_s=draw(st.floats(0, observed)),
        gpu_util=draw(maybe_share),
        gpu_util_max=draw(maybe_share),
        sm_active=draw(maybe_share),
        energy_j=draw(st.none() | st.floats(0, 60_000)),
        power_mean_w=None,
        mem_used_max_bytes=draw(st.none() | st.integers(0, 80 * 2**30)),
        mem_total_bytes=80 * 2**30,
    )


@st.composite
def deployment_minute(draw: st.DrawFn) -> DeploymentMinute:
    instances = draw(st.integers(0, 2))
    return DeploymentMinute(
        minute_ts=hot_minute(draw),
        deployment=draw(st.sampled_from(DEPLOYMENTS)),
        instances=instances,
        server_observed_s=draw(st.floats(0, 60 * max(instances, 1))),
        prompt_tokens=draw(st.integers(0, 10**7)),
        generation_tokens=draw(st.integers(0, 10**6)),
        request_busy_s=0.0,
        requests_running_mean=None,
        requests_waiting_mean=None,
        kv_cache_mean=None,
        kv_cache_max=None,
        gpu_observed_s=0.0,
        gpu_util=None,
        sm_active=None,
        request_busy=draw(maybe_share),
        throughput_util=None,
    )


def minute_answer(store: Store, start_ts: float, end_ts: float) -> dict[str, dict[int, Bucket]]:
    """What summing the minute rows alone gives: the reference the tiers must equal."""
    with store.engine.connect() as conn:
        found = _minute_buckets(conn, start_ts, end_ts, DEPLOYMENTS)
    return {name: found.get(name, {}) for name in DEPLOYMENTS}


def assert_same(got: dict[str, dict[int, Bucket]], expected: dict[str, dict[int, Bucket]]) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].keys() == expected[name].keys(), name
        for bucket_ts, want in expected[name].items():
            have = got[name][bucket_ts]
            for field in Bucket.__dataclass_fields__:
                a, b = getattr(have, field), getattr(want, field)
                assert (a is None) == (b is None), (name, bucket_ts, field)
                if a is not None:
                    assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6), (name, bucket_ts, field, a, b)


def served_peak(rows: list[DeploymentMinute], start: float, end: float, name: str) -> int | None:
    """The best run of MEASURED_CAPACITY_MINUTES consecutive served minutes of `rows` in [start, end)."""
    served = sorted(
        (m.minute_ts, m.prompt_tokens + m.generation_tokens)
        for m in rows
        if m.deployment == name and start <= m.minute_ts < end and m.server_observed_s > 0
    )
    return max((tokens for _, tokens in run_totals(served)), default=None)


def local_midnight(day: date, zone: ZoneInfo) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


gpu_minute_lists = st.lists(gpu_minute(), max_size=80, unique_by=lambda m: (m.gpu_uuid, m.minute_ts))
deployment_minute_lists = st.lists(
    deployment_minute(), max_size=60, unique_by=lambda m: (m.deployment, m.minute_ts)
)
"""A store's worth of GPU and deployment minutes (one row per key), crowded into `HOT_HOURS`."""


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gpu_rows=gpu_minute_lists, deployment_rows=deployment_minute_lists, data=st.data())
def test_a_window_from_the_tiers_equals_its_minutes_before_and_after_pruning(
    gpu_rows: list[GpuMinute], deployment_rows: list[DeploymentMinute], data: st.DataObject
) -> None:
    store = Store.open("sqlite:///:memory:")
    # A stretch of consecutive served minutes (a sustained peak is 15 of them), cut by the odd gap.
    hour = SPAN_START + 3600 * data.draw(st.sampled_from(HOT_HOURS[:-1]))
    run_start = max(SPAN_START, hour + 60 * data.draw(st.integers(-60, 60)))
    run_length, gap = data.draw(st.integers(0, 60)), data.draw(st.integers(0, 90))
    taken = {(m.deployment, m.minute_ts) for m in deployment_rows}
    deployment_rows = deployment_rows + [
        replace(
            data.draw(deployment_minute()),
            minute_ts=minute_ts,
            deployment="llama",
            instances=1,
            server_observed_s=0.0 if minute_ts == run_start + 60 * gap else 60.0,
        )
        for minute_ts in range(run_start, min(run_start + 60 * run_length, SPAN_END), 60)
        if ("llama", minute_ts) not in taken
    ]
    near = sorted({m.minute_ts for m in gpu_rows} | {m.minute_ts for m in deployment_rows}) or [SPAN_START]
    # Written in two chunks that cut through hours and quarter-hours, the later one first, then the
    # earlier one rolled up again (as the daemon re-rolls its trailing minutes): the tiers must not care.
    cut = data.draw(st.sampled_from(near)) + 60 * data.draw(st.integers(0, 14))
    cut = min(max(cut, SPAN_START + 60), SPAN_END - 60)
    for chunk_start, chunk_end in ((cut, SPAN_END), (SPAN_START, cut), (SPAN_START, cut)):
        store.replace_minutes(
            chunk_start,
            chunk_end,
            [m for m in gpu_rows if chunk_start <= m.minute_ts < chunk_end],
            [m for m in deployment_rows if chunk_start <= m.minute_ts < chunk_end],
        )

    # Any window, at any second, near the data: whole quarter-hours from the tier, the ends from the
    # minutes.
    start = data.draw(st.sampled_from(near)) - data.draw(st.integers(0, 899)) + data.draw(st.floats(0, 1))
    end = max(start + 1, data.draw(st.sampled_from(near)) + data.draw(st.integers(1, 900)))
    assert_same(store.window_buckets(start, end, DEPLOYMENTS), minute_answer(store, start, end))
    # The GPUs a deployment runs, counted per minute (runaway spend's baseline), from the same tier.
    inside = [m for m in gpu_rows if start <= m.minute_ts < end and m.observed_s > 0 and m.deployment]
    counts = {
        name: (
            len({m.minute_ts for m in inside if m.deployment == name}),
            sum(1 for m in inside if m.deployment == name),
        )
        for name in DEPLOYMENTS
    }
    assert store.gpu_minute_counts(start, end, DEPLOYMENTS) == counts
    # The sustained peak (measured capacity): from the tier's per-quarter-hour peaks and the minutes
    # at the ends, the same as the best run of the minutes themselves.
    peaks = {name: served_peak(deployment_rows, start, end, name) for name in DEPLOYMENTS}
    assert {name: store.served_peak_tokens(start, end, name) for name in DEPLOYMENTS} == peaks
    around = run_start + data.draw(st.integers(-1800, 1800))
    around_end = around + data.draw(st.integers(900, 4 * 3600))
    assert store.served_peak_tokens(around, around_end, "llama") == served_peak(
        deployment_rows, around, around_end, "llama"
    )

    # A deployment's active period (its first and last observed minute): the tier's first and last
    # quarter-hours, refined by their minutes.
    observed = {
        name: [m.minute_ts for m in gpu_rows if m.deployment == name and m.observed_s > 0]
        + [m.minute_ts for m in deployment_rows if m.deployment == name and m.server_observed_s > 0]
        for name in DEPLOYMENTS
    }
    assert store.activity_bounds(DEPLOYMENTS) == {
        name: (min(minutes), max(minutes) + 60) for name, minutes in observed.items() if minutes
    }

    # One pass: an overlapping window read first (the report's month before the rules' week, or the
    # other way round) leaves the tier rows it read for this one; the answer is the same.
    other_start = data.draw(st.sampled_from(near)) - data.draw(st.integers(0, 3 * 3600))
    other_end = max(other_start + 1, data.draw(st.sampled_from(near)) + data.draw(st.integers(1, 3 * 3600)))
    with store.one_pass():
        store.window_buckets(other_start, other_end, DEPLOYMENTS)
        assert_same(store.window_buckets(start, end, DEPLOYMENTS), minute_answer(store, start, end))
        assert store.gpu_minute_counts(start, end, DEPLOYMENTS) == counts
        assert {name: store.served_peak_tokens(start, end, name) for name in DEPLOYMENTS} == peaks

    # Local days in a zone (whose midnights fall on quarter-hours in UTC): equal to the minutes even
    # once the minutes are gone.
    zone = ZoneInfo(data.draw(st.sampled_from(ZONES)))
    first = data.draw(st.integers(0, SPAN_DAYS - 2))
    last = data.draw(st.integers(first + 1, SPAN_DAYS))
    day0 = datetime.fromtimestamp(SPAN_START, UTC).date()
    window = (local_midnight(day0 + timedelta(first), zone), local_midnight(day0 + timedelta(last), zone))
    expected = minute_answer(store, *window)
    pruned = store.prune(SPAN_END + 30 * 86_400, 48 * 3600, 397 * 86_400, minute_retention_s=14 * 86_400)
    assert pruned["gpu_minutes"] == len(gpu_rows) and pruned["deployment_minutes"] == len(deployment_rows)
    assert_same(store.window_buckets(*window, DEPLOYMENTS), expected)
    store.close()


def test_gpu_hours_keep_each_gpus_own_sums() -> None:
    store = Store.open("sqlite:///:memory:")
    base = SPAN_START + 7200
    rows = [
        GpuMinute(
            minute_ts=base + 60 * i, host="h", gpu_uuid="GPU-0", gpu_index=0, deployment="llama",
            observed_s=60.0, util_observed_s=60.0 if i % 2 else 0.0, idle_s=30.0, loaded_s=60.0,
            gpu_util=0.5 if i % 2 else None, gpu_util_max=0.9, sm_active=None, energy_j=100.0,
            power_mean_w=None, mem_used_max_bytes=i, mem_total_bytes=80,
        )
        for i in range(90)
    ]  # fmt: skip
    store.replace_minutes(base, base + 90 * 60, rows, [])
    with store.engine.connect() as conn:
        hours = conn.execute(select(gpu_hours).order_by(gpu_hours.c.hour_ts)).all()
    assert [(h.hour_ts, h.minutes) for h in hours] == [(base, 60), (base + 3600, 30)]
    assert hours[0].observed_s == 3600.0 and hours[0].idle_s == 1800.0 and hours[0].energy_j == 6000.0
    assert hours[0].gpu_util_s == 1800.0 and hours[0].gpu_util_weighted == 900.0  # known half the time
    assert hours[0].sm_active_s == 0.0 and hours[1].mem_used_max_bytes == 89


def test_an_existing_store_migrates_in_place(tmp_path: Path) -> None:
    """A schema-2 store full of minute rows gets its tiers filled by the migration, and answers a
    window from them as it did from its minutes."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Store.open(url, migrate=False)
    for version, migration in enumerate(MIGRATIONS[:2], start=1):
        with old.engine.begin() as conn:
            migration(conn)
            conn.execute(insert(schema_version).values(version=version, applied_ts=0.0))
    minutes = range(SPAN_START, SPAN_START + 3 * 86_400, 60)
    with old.engine.begin() as conn:
        conn.execute(
            insert(gpu_minutes),
            [
                dict(  # noqa: C408  (a row as a schema-2 store held it)
                     minute_ts=m, host="h", gpu_uuid=f"GPU-{g}", gpu_index=g, deployment="llama",
                     observed_s=60.0, util_observed_s=60.0, idle_s=10.0, loaded_s=60.0, gpu_util=0.3,
                     gpu_util_max=0.5, sm_active=0.2, energy_j=20_000.0, power_mean_w=None,
                     mem_used_max_bytes=None, mem_total_bytes=None)
                for m in minutes
                for g in range(2)
            ],
        )  # fmt: skip
        conn.execute(
            insert(deployment_minutes),
            [
                dict(  # noqa: C408
                     minute_ts=m, deployment="llama", instances=1, server_observed_s=60.0, prompt_tokens=100,
                     generation_tokens=20, request_busy_s=30.0, requests_running_mean=None,
                     requests_waiting_mean=None, kv_cache_mean=None, kv_cache_max=None, gpu_observed_s=120.0,
                     gpu_util=None, sm_active=None, request_busy=0.5, throughput_util=None)
                for m in minutes
            ],
        )  # fmt: skip
    expected = minute_answer(old, SPAN_START + 3600, SPAN_START + 2 * 86_400)
    old.close()
    store = Store.open(url)
    assert store.schema_version() == SCHEMA_VERSION
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(deployment_quarter_hours)).scalar() == 3 * 96
        assert conn.execute(select(func.count()).select_from(gpu_hours)).scalar() == 2 * 3 * 24
    store.prune(SPAN_START + 40 * 86_400, 48 * 3600, 397 * 86_400)
    assert_same(store.window_buckets(SPAN_START + 3600, SPAN_START + 2 * 86_400, DEPLOYMENTS), expected)
    assert expected["llama"]  # the window is not empty
    store.close()


def test_one_pass_reads_each_tier_row_once_and_forgets_on_write() -> None:
    """Within `one_pass`, windows inside what was already read issue no tier query (the rules' 7 and
    21 days inside the report's month); a write through the store makes the next read see it."""
    store = Store.open("sqlite:///:memory:")
    minutes = range(SPAN_START, SPAN_START + 3 * 86_400, 60)
    rows = [
        GpuMinute(
            minute_ts=m, host="h", gpu_uuid="GPU-0", gpu_index=0, deployment="llama", observed_s=60.0,
            util_observed_s=60.0, idle_s=0.0, loaded_s=60.0, gpu_util=0.5, gpu_util_max=0.5,
            sm_active=None, energy_j=None, power_mean_w=None, mem_used_max_bytes=None, mem_total_bytes=None,
        )
        for m in minutes
    ]  # fmt: skip
    store.replace_minutes(SPAN_START, SPAN_START + 3 * 86_400, rows, [])
    tier_queries: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "deployment_quarter_hours" in statement:
            tier_queries.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    month = (SPAN_START + 1, SPAN_START + 3 * 86_400 - 1)
    with store.one_pass():
        whole = store.window_buckets(*month, DEPLOYMENTS)
        assert len(tier_queries) == 1
        week = store.window_buckets(SPAN_START + 86_400 + 7, SPAN_START + 2 * 86_400 + 7, DEPLOYMENTS)
        assert store.gpu_minute_counts(SPAN_START + 3600, SPAN_START + 7200, DEPLOYMENTS)["llama"] == (60, 60)
        assert len(tier_queries) == 1  # both answered from what the month read
        assert_same(week, minute_answer(store, SPAN_START + 86_400 + 7, SPAN_START + 2 * 86_400 + 7))
        # the minute at the window's start is out
        assert merged(whole["llama"].values()).gpu_observed_s == 3 * 86_400 - 60
        store.replace_minutes(SPAN_START, SPAN_START + 60, [], [])  # the first minute is gone
        again = store.window_buckets(SPAN_START, SPAN_START + 3600, DEPLOYMENTS)
        assert merged(again["llama"].values()).gpu_observed_s == 3600 - 60
        assert len(tier_queries) > 1
    store.close()


def test_a_store_without_peaks_gets_them_from_the_minutes_kept(tmp_path: Path) -> None:
    """Schema 6 adds each quarter-hour's sustained peak to the tier, filled from the minutes still there,
    so a window's measured capacity is there once its minutes are pruned."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = Store.open(url)
    minutes = range(SPAN_START, SPAN_START + 3600, 60)
    served = [
        DeploymentMinute(
            minute_ts=m, deployment="llama", instances=1, server_observed_s=60.0, prompt_tokens=100 + i,
            generation_tokens=20, request_busy_s=30.0, requests_running_mean=None, requests_waiting_mean=None,
            kv_cache_mean=None, kv_cache_max=None, gpu_observed_s=0.0, gpu_util=None, sm_active=None,
            request_busy=0.5, throughput_util=None,
        )
        for i, m in enumerate(minutes)
    ]  # fmt: skip
    store.replace_minutes(SPAN_START, SPAN_START + 3600, [], served)
    best = sum(100 + i + 20 for i in range(45, 60))  # the last 15 minutes
    assert store.served_peak_tokens(SPAN_START, SPAN_START + 3600, "llama") == best
    with store.engine.begin() as conn:  # as a schema-5 store holds it: no peaks
        conn.execute(deployment_quarter_hours.update().values(served_peak_tokens=None))
        conn.execute(schema_version.delete().where(schema_version.c.version >= 6))  # the peaks and after
    store.close()
    store = Store.open(url)
    assert store.schema_version() == SCHEMA_VERSION
    store.prune(SPAN_START + 40 * 86_400, 48 * 3600, 397 * 86_400)
    # Whole quarter-hours from the tier: the run ending in the last one, though its minutes are gone.
    assert store.served_peak_tokens(SPAN_START, SPAN_START + 3600, "llama") == best
    store.close()


def test_the_minute_window_shrinks_for_a_fleet_past_its_row_budget() -> None:
    """Unset, minutes are kept 14 days, fewer when the GPUs seen in the last day would pass
    `minute_rows_max` GPU minutes, never under 2 days; a configured number of days is kept as is."""
    store = Store.open("sqlite:///:memory:")
    now = SPAN_START + 86_400
    rows = [
        GpuMinute(
            minute_ts=now - 3600, host="h", gpu_uuid=f"GPU-{g}", gpu_index=g, deployment="llama",
            observed_s=60.0, util_observed_s=60.0, idle_s=0.0, loaded_s=60.0, gpu_util=0.5, gpu_util_max=0.5,
            sm_active=None, energy_j=None, power_mean_w=None, mem_used_max_bytes=None, mem_total_bytes=None,
        )
        for g in range(3)
    ]  # fmt: skip
    store.replace_minutes(now - 3600, now - 3540, rows, [])
    day = 86_400
    assert store.minute_retention_s(now, None, 3 * 1440 * 5) == 5 * day  # 3 GPUs: 5 days fit
    assert store.minute_retention_s(now, None, 10**9) == 14 * day
    assert store.minute_retention_s(now, None, 1000) == 2 * day
    assert store.minute_retention_s(now, 30, 1000) == 30 * day
    assert store.minute_retention_s(now + 2 * day, None, 1000) == 14 * day  # no GPU seen lately
    store.close()
