"""A simulation's tiers, summed in memory (`collectors.replay_tiers`), are the rows the store's SQL
sums from the same minutes (`Store.replace_minutes`), to the last bit; and a replay that keeps only
its span's first and last day of minutes costs the same as one that keeps them all."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.analysis import cost_window
from auditor.gpu_prices import load_gpu_prices
from auditor.model import DeploymentMinute, GpuMinute
from auditor.prices import ApiPriceCatalog
from auditor.store import RecordRows, Store
from collectors.replay import (
    COSTING_MINUTES_KEPT_S,
    RULES_MINUTES_KEPT_S,
    MinuteLoad,
    SimulatedDeployment,
    _gpu_keys,
    _simulated_rows,
    replay_config,
    replay_into_store,
    window_ends,
)

START = int(datetime(2026, 10, 31, 20, tzinfo=UTC).timestamp())  # a chunk (UTC day) edge 4 h in
DAY_S = 86_400


@st.composite
def simulated_runs(draw: st.DrawFn) -> list[tuple[list[MinuteLoad], SimulatedDeployment]]:
    """One or two deployments, from a few minutes to a day and a half, starting anywhere in the hours
    before a chunk's (a UTC day's) edge, with a gap or none, idle or loaded up to 1.5× capacity."""
    runs = []
    for name in draw(st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=2, unique=True)):
        rng = draw(st.randoms(use_true_random=False))
        first = START + 60 * draw(st.integers(0, 300))
        minutes = draw(st.integers(1, 2000))
        gap_at, gap = draw(st.integers(0, minutes)), draw(st.sampled_from([0, 1, 14, 90]))
        capacity = draw(st.sampled_from([200.0, 4000.0]))
        load = draw(st.sampled_from([0.0, 0.05, 0.7, 1.5]))  # of capacity
        per_minute = int(capacity * 60 * load)
        loads = []
        for i in range(minutes):
            tokens = rng.randint(0, 2 * per_minute)
            prompt = rng.randint(0, tokens)
            loads.append(
                MinuteLoad(
                    first + 60 * (i + (gap if i >= gap_at else 0)),
                    rng.randint(1, 50) if tokens else 0,
                    prompt,
                    tokens - prompt,
                )
            )
        deployment = SimulatedDeployment(
            name=name,
            gpu_type="H100",
            gpus=draw(st.integers(1, 5)),
            capacity_tokens_per_s=capacity,
            busy_poll_util=draw(st.sampled_from([0.0, 1.0])),
            mem_used_bytes=draw(st.sampled_from([0, 40 * 2**30])),
        )
        runs.append((loads, deployment))
    return runs


def _tables(path: Path) -> dict[str, list[Any]]:
    keys = {
        "gpu_minutes": "gpu_uuid, minute_ts",
        "deployment_minutes": "deployment, minute_ts",
        "gpu_hours": "gpu_uuid, hour_ts",
        "deployment_quarter_hours": "deployment, bucket_ts",
    }
    with sqlite3.connect(path) as db:
        return {
            table: db.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()  # noqa: S608  (test-made SQL)
            for table, key in keys.items()
        }


def _through_sql(store: Store, runs: list[tuple[list[MinuteLoad], SimulatedDeployment]]) -> None:
    """Every minute row written and the tiers summed by the store, a UTC day per transaction."""
    rows: list[tuple[tuple[Any, ...], tuple[Any, ...], list[tuple[str, str, int, str]]]] = [
        (row, tail, _gpu_keys(deployment))
        for loads, deployment in runs
        for row, tail in _simulated_rows(loads, deployment)
    ]
    days = sorted({row[0] - row[0] % DAY_S for row, _, _ in rows})
    for day in days:
        todays = [r for r in rows if day <= r[0][0] < day + DAY_S]
        store.replace_minutes(
            min(row[0] for row, _, _ in todays),
            day + DAY_S,
            RecordRows(GpuMinute, [(row[0], *key, *tail) for row, tail, keys in todays for key in keys]),
            RecordRows(DeploymentMinute, [row for row, _, _ in todays]),
        )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=simulated_runs())
def test_tiers_summed_in_memory_are_the_stores_own(tmp_path_factory: Any, runs: Any) -> None:
    directory = tmp_path_factory.mktemp("tiers")
    by_sql, in_memory = directory / "sql.db", directory / "memory.db"
    _through_sql(Store.open(f"sqlite:///{by_sql}"), runs)
    replay_into_store(Store.open(f"sqlite:///{in_memory}"), runs)
    expected, got = _tables(by_sql), _tables(in_memory)
    for table in expected:
        if PLAIN_SUM:
            assert got[table] == expected[table], table
        else:  # SQLite 3.43+ sums with error compensation: the same figures but for the last bits
            assert [tuple(map(_approx, row)) for row in got[table]] == expected[table], table


PLAIN_SUM = sqlite3.sqlite_version_info < (3, 43, 0)
"""SQLite's SUM adds plainly in row order before 3.43 (what `collectors.replay_tiers` reproduces)."""


def _approx(value: Any) -> Any:
    return pytest.approx(value, rel=1e-12, abs=1e-9) if isinstance(value, float) else value


@pytest.mark.parametrize("kept_s", [RULES_MINUTES_KEPT_S, COSTING_MINUTES_KEPT_S])
@pytest.mark.parametrize("minutes", [4 * 1440, 1440 + 500, 90])
def test_a_replay_keeping_its_ends_costs_what_one_keeping_every_minute_does(
    tmp_path: Path, minutes: int, kept_s: int
) -> None:
    loads = [
        MinuteLoad(START + 7 * 60 + 60 * i, 5 + i % 7, 900 * (5 + i % 7), 150 * (i % 5))
        for i in range(minutes)
    ]
    deployment = SimulatedDeployment("replay", "H100", 2, 100.0)
    results = []
    first_ts, after_ts = loads[0].minute_ts, loads[-1].minute_ts + 60
    for kept in (None, window_ends(first_ts, after_ts, kept_s)):
        url = f"sqlite:///{tmp_path / f'kept-{kept is None}.db'}"
        store = Store.open(url)
        replay_into_store(store, [(loads, deployment)], minutes_kept=kept)
        config = replay_config("replay", "H100", 2, Decimal("2.5"), 100.0, [], url)
        start, end = datetime.fromtimestamp(first_ts, UTC), datetime.fromtimestamp(after_ts, UTC)
        results.append(
            cost_window(store, config, start, end, ApiPriceCatalog(), load_gpu_prices()).window.deployments[0]
        )
    every_minute, ends_only = results
    assert ends_only == every_minute
    assert ends_only.hours.billed > 0 and ends_only.prompt_tokens > 0
