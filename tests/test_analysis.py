"""Costing a window from a real store and config: rated and billed deployments, unattributed spend."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from auditor.analysis import cost_window, local_days, sustained_peak_tokens_per_s
from auditor.config import Config, parse_config
from auditor.costing import DeploymentCost, token_splits
from auditor.gpu_prices import load_gpu_prices
from auditor.model import CostBasis, CostLine, DeploymentMinute, GpuMinute, GpuSample, ServerSample
from auditor.prices import ApiPriceCatalog
from auditor.rollup import run_rollup
from auditor.store import Store

CONFIG = """
timezone = "UTC"
[[deployments]]
name = "llama"
model = "llama-3-70b"
gpu_type = "H100"
gpus = [{ host = "h1", indexes = [0] }]
compare_to = ["openai:gpt-4o"]
active_from = 2026-10-01
active_until = 2026-11-01
[deployments.price]
source = "static"
gpu_hourly_usd = 2.40
[deployments.overheads]
engineering_usd_month = 3100

[[deployments]]
name = "qwen"
model = "qwen"
gpu_type = "A100-40GB"
gpu_count = 8
prometheus_matchers = { app = "qwen" }
[deployments.price]
source = "aws"
tags = { deployment = "qwen" }
"""


def test_a_window_reconciles_with_its_cost_lines(store_url: str) -> None:
    config = parse_config(CONFIG)
    store = Store.open(store_url)
    october = (date(2026, 10, 1), date(2026, 11, 1))
    aws = [
        CostLine(
            day=date(2026, 10, d),
            source="aws",
            account="123456789012",
            resource="i-1",
            usage_type="BoxUsage:p4d.24xlarge",
            amount_usd=Decimal("527.0000001"),
            deployment="qwen",
            gpu_hours=Decimal(192),
            basis=CostBasis.INVOICED,
        )
        for d in range(1, 32)
    ]
    untagged = CostLine(
        day=date(2026, 10, 9),
        source="aws",
        account="123456789012",
        resource="i-untagged",
        usage_type="BoxUsage:g5.xlarge",
        amount_usd=Decimal("24.14"),
    )
    store.replace_cost_lines("aws", "123456789012", *october, [*aws, untagged])
    t0 = datetime(2026, 10, 10, tzinfo=UTC).timestamp()
    store.add_gpu_samples(
        [
            GpuSample(
                ts=t0 + 10 * i, host="h1", gpu_uuid="GPU-1", gpu_index=0, deployment="llama", util_pct=80.0
            )
            for i in range(361)
        ]
    )
    store.add_server_samples(
        [
            ServerSample(
                ts=t0 + 10 * i,
                host="h1",
                deployment="llama",
                instance="i",
                prompt_tokens_total=1000.0 * i,
                generation_tokens_total=100.0 * i,
                requests_running=1,
            )
            for i in range(361)
        ]
    )
    run_rollup(
        store,
        int(t0),
        int(t0) + 3600,
        max_gap_s=30,
        idle_threshold=0.05,
        capacity_tokens_per_s=lambda _: None,
    )

    start, end = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    window = cost_window(store, config, start, end, ApiPriceCatalog(), load_gpu_prices()).window
    llama, qwen = window.deployments
    assert llama.cost_usd == Decimal("2.40") * 24 * 31
    assert llama.overhead_usd == Decimal(3100)
    assert llama.hours.billed == 744 and llama.hours.observed == 1
    assert llama.prompt_tokens == 360_000 and llama.generation_tokens == 36_000
    assert qwen.cost_usd == Decimal("527.0000001") * 31
    assert qwen.hours.billed == 192 * 31
    assert window.unattributed_usd == Decimal("24.14")
    assert window.total_usd == llama.cost_usd + qwen.cost_usd + Decimal("24.14")

    # A month in progress: the static rate bills only up to now, to the second.
    now = datetime(2026, 10, 3, 6, tzinfo=UTC)
    partial = cost_window(
        store, config, start, now, ApiPriceCatalog(), load_gpu_prices(), only=["llama"]
    ).window
    assert partial.deployments[0].cost_usd == Decimal("2.40") * 54
    assert partial.deployments[0].hours.billed == 54
    assert partial.unattributed_usd == 0


def test_local_days_follow_the_time_zone() -> None:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("America/Los_Angeles")
    start = datetime(2026, 10, 1, 7, tzinfo=UTC)  # midnight in Los Angeles
    end = datetime(2026, 11, 1, 7, tzinfo=UTC)
    assert local_days(start, end, tz) == (date(2026, 10, 1), date(2026, 11, 1))


# -- edge cases of the one costing path, on minute rows stored by hand ------------------------------

DAY_CONFIG = """
timezone = "UTC"
[[deployments]]
name = "llama"
model = "llama-3-70b"
gpu_type = "H100"
gpus = [{{ host = "h1", indexes = [{indexes}] }}]
compare_to = ["gpt-4o"]
{capacity}
{active}
[deployments.price]
source = "static"
gpu_hourly_usd = 2.40
[deployments.overheads]
engineering_usd_month = {overhead}
[rules]
utilization_metric = "{metric}"
[prices.api.gpt-4o]
provider = "openai"
input_mtok_usd = 2.5
output_mtok_usd = 10
"""


def _day_config(
    *,
    indexes: str = "0",
    capacity: str = "",
    overhead: int = 0,
    metric: str = "gpu_util",
    active: str = "active_from = 2026-10-05\nactive_until = 2026-10-06",
) -> Config:
    return parse_config(
        DAY_CONFIG.format(indexes=indexes, capacity=capacity, overhead=overhead, metric=metric, active=active)
    )


def _gpu_minute(minute_ts: int, util: float | None) -> GpuMinute:
    return GpuMinute(
        minute_ts=minute_ts,
        host="h1",
        gpu_uuid="GPU-0",
        gpu_index=0,
        deployment="llama",
        observed_s=60,
        util_observed_s=60 if util is not None else 0,
        idle_s=0,
        loaded_s=60,
        gpu_util=util,
        gpu_util_max=util,
        sm_active=None,
        energy_j=None,
        power_mean_w=None,
        mem_used_max_bytes=None,
        mem_total_bytes=None,
    )


def _served_minute(minute_ts: int, prompt: int, generation: int, busy: float | None) -> DeploymentMinute:
    return DeploymentMinute(
        minute_ts=minute_ts,
        deployment="llama",
        instances=1,
        server_observed_s=60,
        prompt_tokens=prompt,
        generation_tokens=generation,
        request_busy_s=60 * (busy or 0),
        requests_running_mean=None,
        requests_waiting_mean=None,
        kv_cache_mean=None,
        kv_cache_max=None,
        gpu_observed_s=60,
        gpu_util=None,
        sm_active=None,
        request_busy=busy,
        throughput_util=None,
    )


def _one_day(
    store: Store, config: Config, gpu: list[GpuMinute], served: list[DeploymentMinute]
) -> DeploymentCost:
    start, end = datetime(2026, 10, 5, tzinfo=UTC), datetime(2026, 10, 6, tzinfo=UTC)
    store.replace_minutes(int(start.timestamp()), int(end.timestamp()), gpu, served)
    window = cost_window(store, config, start, end, ApiPriceCatalog(config.prices.api), load_gpu_prices())
    (cost,) = window.window.deployments
    return cost


def test_a_day_from_summed_minutes(store_url: str) -> None:
    t0 = int(datetime(2026, 10, 5, tzinfo=UTC).timestamp())
    # One GPU at $2.40/h (24 GPU-hours). Observed 12 hours: 6 busy-polling at 100% util with no request
    # running (idle, by the server's metrics), 6 at 50% with requests (busy). 12 hours unknown.
    gpu = [_gpu_minute(t0 + 60 * i, 1.0 if i < 360 else 0.5) for i in range(720)]
    served = [
        _served_minute(t0 + 60 * i, 0 if i < 360 else 1000, 0 if i < 360 else 200, 0 if i < 360 else 1.0)
        for i in range(720)
    ]
    result = _one_day(Store.open(store_url), _day_config(), gpu, served)
    assert result.cost_usd == Decimal("57.60")
    assert (result.hours.billed, result.hours.observed, result.hours.idle) == (
        Decimal(24),
        Decimal(12),
        Decimal(6),
    )
    assert result.hours.unknown == 12
    assert result.idle_cost_usd == Decimal("14.40")
    assert result.prompt_tokens == 360_000 and result.generation_tokens == 72_000
    assert result.utilization == pytest.approx(0.75)
    assert result.measures.request_busy == pytest.approx(0.5)
    assert result.apis[0].usd == Decimal("0.9") + Decimal("0.72")
    # Tokens are known for the 12 observed hours only: $/Mtok and the API comparison use their cost.
    assert result.coverage == Decimal("0.5")
    assert result.observed_cost_usd == Decimal("28.80") == result.unobserved_cost_usd
    assert result.cost_per_mtok_usd == Decimal("28.80") * 1_000_000 / 432_000
    assert result.apis[0].savings_usd == Decimal("28.80") - Decimal("1.62")
    assert result.estimated  # a static rate is a list price, not a bill
    # Capacity was not configured: measured as the best 15-minute mean, 1,200 tokens a minute.
    assert result.capacity_source == "measured"
    assert result.capacity_tokens_per_s == pytest.approx(20.0)


def test_measured_capacity_needs_consecutive_minutes() -> None:
    minutes = [(60 * i, 600) for i in range(14)]
    assert sustained_peak_tokens_per_s(minutes) is None
    minutes.append((60 * 20, 6000))  # after a gap: a new run
    assert sustained_peak_tokens_per_s(minutes) is None
    assert sustained_peak_tokens_per_s(minutes, window=14) == pytest.approx(10.0)


def test_without_server_metrics_tokens_are_unknown_and_no_api_looks_free(store_url: str) -> None:
    t0 = int(datetime(2026, 10, 5, tzinfo=UTC).timestamp())
    config = _day_config(overhead=1000)
    result = _one_day(Store.open(store_url), config, [_gpu_minute(t0, 0.3)], [])
    assert not result.tokens_known
    assert result.apis == []  # not "$0.00 on GPT-4o: moving saves everything"
    served_nothing = _one_day(
        Store.open(store_url), config, [_gpu_minute(t0, 0.3)], [_served_minute(t0, 0, 0, 0.0)]
    )
    assert served_nothing.tokens_known
    assert served_nothing.apis[0].usd == 0  # a server was watched and served nothing: that is a fact


def test_the_direction_split_uses_measured_prefill_and_decode_time(store_url: str) -> None:
    """Where vLLM exposed its phase times, $/Mtok is split by them; a window without them falls back
    to the compared API's price ratio, and says so."""
    t0 = int(datetime(2026, 10, 5, tzinfo=UTC).timestamp())
    gpu = [_gpu_minute(t0 + 60 * i, 0.5) for i in range(60)]
    served = [
        replace(_served_minute(t0 + 60 * i, 1000, 250, 1.0), prefill_s=1.0, decode_s=3.0) for i in range(60)
    ]
    store = Store.open(store_url)
    measured = _one_day(store, _day_config(), gpu, served)
    allocation, usage = token_splits(measured)
    assert (allocation.basis, usage.basis) == ("allocation", "usage")
    for split in (allocation, usage):
        assert split.method == "measured prefill/decode time"
    # A quarter of the time was prefill: input tokens bear a quarter of the observed hour's cost.
    cost = measured.observed_cost_usd
    assert allocation.input_mtok_usd == cost / 4 * 1_000_000 / 60_000
    assert allocation.output_mtok_usd == cost * 3 / 4 * 1_000_000 / 15_000

    unmeasured = _one_day(
        store, _day_config(), gpu, [replace(m, prefill_s=None, decode_s=None) for m in served]
    )
    assert all("price ratio" in s.method for s in token_splits(unmeasured))
