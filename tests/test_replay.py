"""Replaying traffic against a simulated deployment: the Azure trace, the generator, the batching model."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from auditor.store import Store
from collectors.replay import (
    MAX_BACKLOG_MINUTES,
    MAX_REQUESTS_PER_MIN,
    MAX_SPAN_DAYS,
    MAX_TOKENS_PER_REQUEST,
    MinuteLoad,
    ReplayError,
    Request,
    SimulatedDeployment,
    TraceError,
    TrafficShape,
    _timestamp_ns,
    _trace_batches,
    bundled_trace,
    check_gpu_minutes,
    generate_loads,
    generated_loads,
    minute_loads,
    read_trace_loads,
    replay_into_store,
    simulate,
    window_ends,
)

TRACE = Path(__file__).parent / "fixtures" / "azure_llm_trace" / "conv_10min.csv"


def test_the_azure_trace_is_read_whole() -> None:
    requests = bundled_trace()
    assert len(requests) == 2863
    assert requests[0].prompt_tokens == 374 and requests[0].generation_tokens == 44
    assert requests[0].ts == pytest.approx(datetime(2023, 11, 16, 18, 15, 46, 680590, tzinfo=UTC).timestamp())
    loads = read_trace_loads(TRACE)
    assert loads == minute_loads(requests)  # the package ships the same slice
    assert sum(m.requests for m in loads) == 2863
    assert sum(m.prompt_tokens for m in loads) == sum(r.prompt_tokens for r in requests)
    assert [m.minute_ts - loads[0].minute_ts for m in loads] == [60 * i for i in range(len(loads))]
    shifted = read_trace_loads(TRACE, start_ts=1_800_000_000)
    assert shifted[0].minute_ts == 1_800_000_000 - 1_800_000_000 % 60
    assert [m.requests for m in shifted] == [m.requests for m in loads]


def test_the_bundled_trace_reads_as_arrow_reads_it_to_the_nanosecond() -> None:
    """`bundled_trace` parses the shipped CSV without Arrow (the demo's start-up): the same requests,
    the same float timestamps, as the trace reader's Arrow batches give."""
    batches = list(_trace_batches(TRACE, "conv_10min.csv"))
    arrow = sorted(
        (
            Request(ts_ns / 1e9, prompt, generated)
            for batch in batches
            for ts_ns, prompt, generated in zip(
                batch.column(0).cast("int64").to_pylist(),
                batch.column(1).to_pylist(),
                batch.column(2).to_pylist(),
                strict=True,
            )
        ),
        key=lambda r: r.ts,
    )
    assert bundled_trace() == arrow
    assert len({r.ts for r in arrow}) > 2800  # timestamps to the sub-second, not whole seconds
    assert _timestamp_ns("2023-11-16 18:15:46.6805900") == 1_700_158_546_680_590_000
    assert _timestamp_ns("2023-11-16 18:15:46") == 1_700_158_546_000_000_000


def test_a_trace_read_in_many_small_blocks_or_shuffled_or_as_parquet_sums_the_same(tmp_path: Path) -> None:
    import pandas as pd

    whole = read_trace_loads(TRACE)
    assert read_trace_loads(TRACE, block_bytes=4096) == whole  # about 30 blocks
    frame = pd.read_csv(TRACE)
    shuffled = tmp_path / "shuffled.csv"
    frame.sample(frac=1.0, random_state=1).to_csv(shuffled, index=False)
    assert read_trace_loads(shuffled, block_bytes=4096) == whole
    parquet = tmp_path / "trace.parquet"
    frame.assign(TIMESTAMP=pd.to_datetime(frame["TIMESTAMP"])).to_parquet(parquet, engine="pyarrow")
    assert read_trace_loads(parquet, block_bytes=4096) == whole


HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,prompt,generated\n", "the first line must be"),
        (HEADER + "2023-11-16 18:15:46.6,12\n", "line 2"),
        (HEADER + "2023-11-16 18:15:46.6,1,2\nyesterday,1,2\n", "line 3"),
        (HEADER + "2023-11-16 18:15:46,-1,2\n", "line 2: token counts must be 0 or more"),
        (HEADER + "2023-11-16 18:15:46,1,100000000000000000000\n", "line 2: more than 10,000,000"),
        (HEADER + f"2023-11-16 18:15:46,{MAX_TOKENS_PER_REQUEST + 1},2\n", "line 2: more than 10,000,000"),
        (HEADER + "2023-11-16 18:15:46,1,2\n2031-11-16 18:15:46,1,2\n", f"{MAX_SPAN_DAYS}-day limit"),
        (HEADER, "no requests"),
    ],
)
def test_a_bad_trace_is_named_with_its_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(ReplayError, match=message) as caught:
        read_trace_loads(path)
    assert "\n" not in str(caught.value)


def test_a_binary_file_is_said_to_be_one_in_one_line(tmp_path: Path) -> None:
    for name, data in (("gz", b"\x1f\x8b\x08\x00" + bytes(range(256)) * 40), ("zeros", b"\x00" * 5000)):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(TraceError, match="not a text CSV file") as caught:
            read_trace_loads(path)
        assert "\n" not in str(caught.value)


def test_a_missing_trace_says_so(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot be read"):
        read_trace_loads(tmp_path / "nope.csv")


def test_generated_traffic_and_simulation_are_bounded() -> None:
    end = datetime(2026, 11, 1, tzinfo=UTC)
    for rate, days, message in (
        (1e9, 30, "--requests-per-min"),
        (float("nan"), 30, "--requests-per-min"),
        (0.0, 30, "--requests-per-min"),
        (10.0, 100_000, "--days"),
        (10.0, 0, "--days"),
    ):
        with pytest.raises(ReplayError, match=message):
            generated_loads(rate, days, end, ZoneInfo("UTC"))
    loads = generated_loads(MAX_REQUESTS_PER_MIN, 1, end, ZoneInfo("UTC"))
    with pytest.raises(ReplayError, match="GPU-minutes"):
        check_gpu_minutes(100_000, loads)
    # Far more traffic than one GPU serves: the backlog would take years to simulate; said at once.
    small = SimulatedDeployment("d", "L4", 1, capacity_tokens_per_s=10.0)
    with pytest.raises(ReplayError, match="cannot serve this traffic"):
        sum(1 for _ in simulate(loads, small))
    fits = [MinuteLoad(0, 1, 10 * 60 * (MAX_BACKLOG_MINUTES - 10), 0)]
    assert len(list(simulate(fits, small))) > MAX_BACKLOG_MINUTES - 10  # just within: simulated whole


def test_the_generator_has_a_daily_and_weekly_shape_and_bursts() -> None:
    tz = ZoneInfo("UTC")
    start = int(datetime(2026, 10, 5, tzinfo=tz).timestamp())  # a Monday
    loads = list(generate_loads(start, start + 14 * 86_400, tz, TrafficShape(40, seed=3), bundled_trace()))
    assert len(loads) == 14 * 1440

    def mean(select: list[MinuteLoad]) -> float:
        return sum(m.requests for m in select) / len(select)

    def local(m: MinuteLoad) -> datetime:
        return datetime.fromtimestamp(m.minute_ts, tz)

    weekday = [m for m in loads if local(m).weekday() < 5]
    weekend = [m for m in loads if local(m).weekday() >= 5]
    afternoon = [m for m in weekday if 13 <= local(m).hour < 16]
    night = [m for m in weekday if 2 <= local(m).hour < 5]
    assert mean(weekday) == pytest.approx(40, rel=0.15)
    assert mean(weekend) < 0.5 * mean(weekday)
    assert mean(afternoon) > 3 * mean(night)

    # Bursts: `burst_factor` times the traffic while they last.
    def requests(**burst: float) -> int:
        shaped = TrafficShape(40, seed=3, **burst)  # type: ignore[arg-type]
        return sum(
            m.requests for m in generate_loads(start, start + 14 * 86_400, tz, shaped, bundled_trace())
        )

    always, never = requests(burst_chance_per_hour=1.0, burst_minutes=60), requests(burst_chance_per_hour=0.0)
    assert always / never == pytest.approx(4.0, rel=0.05)
    assert never < sum(m.requests for m in loads) < always
    # Request sizes follow the trace's (about 1,000 prompt and 250 generated tokens a request).
    per_request = sum(m.prompt_tokens for m in loads) / sum(m.requests for m in loads)
    trace = bundled_trace()
    assert per_request == pytest.approx(sum(r.prompt_tokens for r in trace) / len(trace), rel=0.05)
    again = list(generate_loads(start, start + 86_400, tz, TrafficShape(40, seed=3), bundled_trace()))
    assert again == loads[:1440]  # seeded: the same month every time
    later = list(
        generate_loads(
            start + 3 * 86_400 + 600, start + 5 * 86_400, tz, TrafficShape(40, seed=3), bundled_trace()
        )
    )
    assert later == loads[3 * 1440 + 10 : 5 * 1440]  # and a day's traffic whatever span it is drawn in


def test_the_batching_model_queues_over_capacity_and_loses_nothing() -> None:
    deployment = SimulatedDeployment("d", "H100", 2, capacity_tokens_per_s=100.0, busy_poll_util=1.0)
    loads = [
        MinuteLoad(60 * i, 10, 9_000, 3_000) if i < 5 else MinuteLoad(60 * i, 0, 0, 0) for i in range(30)
    ]
    minutes = list(simulate(loads, deployment))
    served = sum(row.prompt_tokens + row.generation_tokens for _, row in minutes)
    assert served == 5 * 12_000  # everything that arrived is served, later
    beyond = list(simulate(loads[:5], deployment))
    assert len(beyond) == 10  # past the last load, until the queue is empty
    assert sum(row.prompt_tokens + row.generation_tokens for _, row in beyond) == 5 * 12_000
    first = minutes[0][1]
    assert first.throughput_util == pytest.approx(1.0)  # 6,000 tokens a minute, the capacity
    assert first.requests_waiting_mean and first.requests_waiting_mean > 0
    assert first.request_busy == 1.0
    quiet = minutes[-1]
    assert quiet[1].request_busy == 0.0 and quiet[1].throughput_util == 0.0
    # NVML reads 100% while the server busy-polls; sm_active shows that nothing ran.
    assert quiet[0][0].gpu_util == 1.0 and quiet[0][0].sm_active == 0.0
    assert quiet[0][0].idle_s == 60.0
    assert len(quiet[0]) == 2 and {g.gpu_index for g in quiet[0]} == {0, 1}


def test_light_load_is_mostly_idle_time() -> None:
    deployment = SimulatedDeployment("d", "H100", 1, capacity_tokens_per_s=5000.0)
    gpus, row = next(iter(simulate([MinuteLoad(0, 1, 1000, 200)], deployment)))
    latency = 1000 / deployment.prefill_tokens_per_s + 200 / deployment.decode_tokens_per_s
    assert row.request_busy == pytest.approx(1 - math.exp(-latency / 60))
    assert row.throughput_util == pytest.approx(1200 / 300_000)
    assert gpus[0].sm_active is not None and row.request_busy is not None
    assert gpus[0].sm_active < row.request_busy
    assert gpus[0].energy_j == pytest.approx(gpus[0].power_mean_w * 60)  # type: ignore[operator]


def test_replaying_a_month_into_a_store_is_idempotent(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'r.db'}")
    tz = ZoneInfo("UTC")
    start = int(datetime(2026, 10, 1, tzinfo=tz).timestamp())
    end = start + 3 * 86_400

    def runs() -> list[tuple[list[MinuteLoad], SimulatedDeployment]]:
        return [
            (
                list(generate_loads(start, end, tz, TrafficShape(5), bundled_trace())),
                SimulatedDeployment("a", "H100", 2, 4000.0),
            ),
            (
                minute_loads(bundled_trace(), start_ts=start + 3600),
                SimulatedDeployment("b", "L4", 1, 20_000.0),
            ),
        ]

    counts = replay_into_store(store, runs())
    assert counts == (3 * 1440 * 2 + 11, 3 * 1440 + 11)
    assert replay_into_store(store, runs()) == counts
    assert len(store.gpu_minutes(start, end, "a")) == 3 * 1440 * 2
    assert len(store.deployment_minutes(start, end, "b")) == 11
    b = store.deployment_minutes(start, end, "b")
    assert sum(m.prompt_tokens for m in b) == sum(r.prompt_tokens for r in bundled_trace())


def test_a_replay_keeps_the_minutes_asked_for_and_the_tiers_of_all(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'r.db'}")
    tz = ZoneInfo("UTC")
    start = int(datetime(2026, 10, 1, tzinfo=tz).timestamp())
    end = start + 3 * 86_400
    loads = list(generate_loads(start, end, tz, TrafficShape(5), bundled_trace()))
    deployment = SimulatedDeployment("a", "H100", 2, 4000.0)
    # As the demo keeps them: a day at each end; the tiers for all of it.
    replay_into_store(store, [(loads, deployment)], minutes_kept=window_ends(start, end, 86_400))
    assert len(store.gpu_minutes(start, end, "a")) == 2 * 1440 * 2
    assert not store.gpu_minutes(start + 86_400, end - 86_400, "a")
    assert store.gpu_minute_counts(start, end, ["a"]) == {"a": (3 * 1440, 3 * 1440 * 2)}
    # As a replay keeps them: two hours at each end of its window.
    replay_into_store(store, [(loads, deployment)], minutes_kept=window_ends(start + 420, end))
    kept = store.gpu_minutes(start, end, "a")
    assert {m.minute_ts for m in kept} == set(range(start + 420, start + 2 * 3600 + 420, 60)) | set(
        range(end - 2 * 3600, end, 60)
    )
    assert store.gpu_minute_counts(start, end, ["a"]) == {"a": (3 * 1440, 3 * 1440 * 2)}
