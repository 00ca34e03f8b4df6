"""The design's formulas: hand arithmetic from the design's own figures, and properties (hypothesis)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditor.costing import (
    GpuHours,
    WhatIf,
    api_cost_usd,
    blended_price_per_token,
    breakeven_tokens_per_month,
    breakeven_utilization,
    cost_per_mtok_usd,
    day_hours,
    elapsed_hours,
    hours_from_seconds,
    idle_cost_usd,
    month_hours,
    prorate_monthly_usd,
    split_by_direction,
)
from auditor.prices import ApiPrice

GPT_4O = ApiPrice("openai", "gpt-4o", Decimal("2.5"), Decimal(10), None, "test")
HAIKU = ApiPrice("anthropic", "claude-3-5-haiku", Decimal("0.8"), Decimal(4), None, "test")
TOGETHER_70B = ApiPrice("together", "llama-3-70b", Decimal("0.9"), Decimal("0.9"), None, "test")
UTC_ZONE = ZoneInfo("UTC")

tokens = st.integers(min_value=0, max_value=10**13)
money = st.decimals(min_value=0, max_value=10**7, places=6, allow_nan=False, allow_infinity=False)
prices = st.builds(
    ApiPrice,
    st.just("p"),
    st.just("m"),
    st.decimals(min_value=Decimal("0.01"), max_value=100, places=4),
    st.decimals(min_value=Decimal("0.01"), max_value=100, places=4),
    st.none(),
    st.just("test"),
)


def test_design_figures_api_equivalents() -> None:
    # 100M input + 20M output a month: GPT-4o $450, Haiku $160, Together $108.
    assert api_cost_usd(100_000_000, 20_000_000, GPT_4O) == Decimal(450)
    assert api_cost_usd(100_000_000, 20_000_000, HAIKU) == Decimal(160)
    assert api_cost_usd(100_000_000, 20_000_000, TOGETHER_70B) == Decimal(108)


def test_design_figures_self_hosted_month() -> None:
    what_if = WhatIf(100_000_000, 20_000_000, 2, Decimal("2.50"), Decimal(720), Decimal(0), 30_000)
    assert what_if.monthly_usd == Decimal(3600)
    comparisons = {c.price.model: c for c in what_if.compare([GPT_4O, TOGETHER_70B])}
    # Blended GPT-4o price at this mix: $450 / 120M tokens = $3.75 per Mtok → 960M tokens a month.
    assert comparisons["gpt-4o"].breakeven_tokens_per_month == Decimal(960_000_000)
    assert comparisons["llama-3-70b"].breakeven_tokens_per_month == Decimal(4_000_000_000)
    # $5/h ÷ (30,000 tok/s × 3600 s × $3.75e-6 a token = $405/h of API traffic at full load): 1.23%.
    assert comparisons["gpt-4o"].breakeven_utilization == Decimal(5) / Decimal(405)
    # The same volume as a share of capacity: 960M / (30,000 × 3600 × 720).
    assert comparisons["gpt-4o"].breakeven_utilization == Decimal(960_000_000) / (30_000 * 3600 * 720)
    assert comparisons["gpt-4o"].savings_usd == Decimal(3150)


def test_what_if_utilization_and_tco() -> None:
    what_if = WhatIf(100_000_000, 20_000_000, 2, Decimal("2.50"), Decimal(720), Decimal(25_000), 30_000)
    assert what_if.monthly_tco_usd == Decimal(28_600)
    assert what_if.utilization is not None
    assert float(what_if.utilization) == pytest.approx(120e6 / (30_000 * 3600 * 720))


def test_cost_per_mtok_is_unknown_without_tokens() -> None:
    assert cost_per_mtok_usd(Decimal(100), 0) is None
    assert cost_per_mtok_usd(Decimal(3600), 120_000_000) == Decimal(30)


@given(cost=money, n=st.integers(min_value=1, max_value=10**13))
def test_cost_per_token_times_tokens_is_cost(cost: Decimal, n: int) -> None:
    per_mtok = cost_per_mtok_usd(cost, n)
    assert per_mtok is not None
    assert abs(per_mtok * n / 1_000_000 - cost) <= Decimal("1e-15") * max(cost, Decimal(1))


@given(p=tokens, g=tokens, k=st.integers(min_value=0, max_value=1000), price=prices)
def test_api_equivalent_is_linear_in_tokens(p: int, g: int, k: int, price: ApiPrice) -> None:
    assert api_cost_usd(k * p, k * g, price) == k * api_cost_usd(p, g, price)
    assert api_cost_usd(p, g, price) == api_cost_usd(p, 0, price) + api_cost_usd(0, g, price)


@given(
    hourly=st.decimals(min_value=Decimal("0.01"), max_value=10_000, places=4),
    capacity=st.floats(min_value=1, max_value=1e6),
    p=st.integers(min_value=1, max_value=10**12),
    g=st.integers(min_value=0, max_value=10**12),
    price=prices,
)
def test_breakeven_utilization_times_capacity_and_price_is_hourly_cost(
    hourly: Decimal, capacity: float, p: int, g: int, price: ApiPrice
) -> None:
    blended = blended_price_per_token(p, g, price)
    share = breakeven_utilization(hourly, capacity, blended)
    assert share is not None and blended is not None
    recomputed = share * Decimal(repr(capacity)) * 3600 * blended
    assert abs(recomputed - hourly) <= Decimal("1e-18") * hourly


@given(monthly=money, p=st.integers(min_value=1, max_value=10**12), g=tokens, price=prices)
def test_breakeven_volume_costs_the_same_on_the_api(
    monthly: Decimal, p: int, g: int, price: ApiPrice
) -> None:
    blended = blended_price_per_token(p, g, price)
    volume = breakeven_tokens_per_month(monthly, blended)
    assert volume is not None and blended is not None
    assert abs(volume * blended - monthly) <= Decimal("1e-18") * max(monthly, Decimal(1))


@given(
    billed_s=st.integers(min_value=0, max_value=10**8),
    observed_share=st.floats(min_value=0, max_value=1),
    idle_share=st.floats(min_value=0, max_value=1),
)
def test_idle_busy_unknown_add_up_to_billed(billed_s: int, observed_share: float, idle_share: float) -> None:
    billed = hours_from_seconds(billed_s)
    observed = hours_from_seconds(billed_s * observed_share)
    hours = GpuHours(billed=billed, observed=min(observed, billed), idle=hours_from_seconds(0))
    hours = GpuHours(
        billed=hours.billed, observed=hours.observed, idle=(hours.observed * Decimal(idle_share))
    )
    assert hours.idle + hours.busy + hours.unknown == hours.billed


@given(cost=money, idle_share=st.decimals(min_value=0, max_value=1, places=6))
def test_idle_cost_is_the_idle_share_of_cost(cost: Decimal, idle_share: Decimal) -> None:
    billed = Decimal(1440)
    result = idle_cost_usd(cost, billed * idle_share, billed)
    assert result is not None
    assert abs(result - cost * idle_share) <= Decimal("1e-18") * max(cost, Decimal(1))
    assert idle_cost_usd(cost, Decimal(1), Decimal(0)) is None


def test_prorated_overhead_is_exact_for_a_calendar_month_and_split_across_two() -> None:
    tz = ZoneInfo("Europe/Berlin")
    october = (datetime(2026, 10, 1, tzinfo=tz), datetime(2026, 11, 1, tzinfo=tz))
    assert prorate_monthly_usd(Decimal(25_000), *october, tz) == Decimal(25_000)
    # October has 745 hours in Berlin (DST ends on the 25th); 372.5 of them follow the 16th, 12:30.
    half = prorate_monthly_usd(Decimal(1000), datetime(2026, 10, 16, 12, 30, tzinfo=tz), october[1], tz)
    full = prorate_monthly_usd(Decimal(1000), october[0], datetime(2026, 12, 1, tzinfo=tz), tz)
    assert full == Decimal(2000)
    assert half == Decimal(500)


def test_day_hours_follow_daylight_saving_time() -> None:
    tz = ZoneInfo("America/New_York")
    assert day_hours(date(2026, 3, 8), tz) == 23
    assert day_hours(date(2026, 11, 1), tz) == 25
    assert day_hours(date(2026, 11, 2), tz) == 24


@given(
    cost=money,
    p=st.integers(min_value=1, max_value=10**12),
    g=st.integers(min_value=1, max_value=10**12),
    price=prices,
)
def test_a_split_by_price_ratio_sums_to_the_cost_and_keeps_the_ratio(
    cost: Decimal, p: int, g: int, price: ApiPrice
) -> None:
    split = split_by_direction(cost, p, g, basis="allocation", price=price)
    assert split.input_mtok_usd is not None and split.output_mtok_usd is not None
    total = (split.input_mtok_usd * p + split.output_mtok_usd * g) / 1_000_000
    # Decimal carries 28 digits; a division then a product at 10^12 tokens leaves far less than a cent.
    assert abs(total - cost) <= Decimal("1e-12") * max(cost, Decimal(1))
    if cost > 0:
        ratio = split.input_mtok_usd / split.output_mtok_usd
        assert abs(ratio - price.input_mtok_usd / price.output_mtok_usd) <= Decimal("1e-12") * max(
            ratio, Decimal(1)
        )
    assert "price ratio" in split.method


def test_a_split_by_measured_time_follows_prefill_and_decode() -> None:
    split = split_by_direction(Decimal(100), 1_000_000, 250_000, basis="usage", prefill_s=1.0, decode_s=3.0)
    assert split.input_mtok_usd == Decimal(25) and split.output_mtok_usd == Decimal(300)
    assert split.method == "measured prefill/decode time"


@pytest.mark.parametrize(
    ("tz", "month", "hours"),
    [("Europe/Berlin", 10, 745), ("Europe/Berlin", 3, 743), ("Australia/Lord_Howe", 4, Decimal("720.5"))],
)
def test_elapsed_hours_are_real_hours(tz: str, month: int, hours: Decimal) -> None:
    zone = ZoneInfo(tz)
    start, end = datetime(2026, month, 1, tzinfo=zone), datetime(2026, month + 1, 1, tzinfo=zone)
    assert elapsed_hours(start, end) == hours
    assert month_hours(start, zone) == hours
