"""Costing a window from a real store and config: rated and billed deployments, unattributed spend."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from auditor.analysis import cost_window, local_days
from auditor.config import parse_config
from auditor.gpu_prices import load_gpu_prices
from auditor.model import CostBasis, CostLine, GpuSample, ServerSample
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
    window = cost_window(store, config, start, end, ApiPriceCatalog(), load_gpu_prices())
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
    partial = cost_window(store, config, start, now, ApiPriceCatalog(), load_gpu_prices(), only=["llama"])
    assert partial.deployments[0].cost_usd == Decimal("2.40") * 54
    assert partial.deployments[0].hours.billed == 54
    assert partial.unattributed_usd == 0


def test_local_days_follow_the_time_zone() -> None:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("America/Los_Angeles")
    start = datetime(2026, 10, 1, 7, tzinfo=UTC)  # midnight in Los Angeles
    end = datetime(2026, 11, 1, 7, tzinfo=UTC)
    assert local_days(start, end, tz) == (date(2026, 10, 1), date(2026, 11, 1))
