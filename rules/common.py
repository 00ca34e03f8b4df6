"""What several rules share: costed windows, coverage checks, "no verdict", GPU rates, monthly figures,
and the thresholds' two directions (strictly above / below, with hysteresis)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from auditor.analysis import AggregatedWindow, cost_window
from auditor.config import AwsPrice, DeploymentConfig, GcpPrice, OnPremPrice, StaticPrice
from auditor.costing import DeploymentCost, monthly_saving
from auditor.gpu_prices import GpuPrice, find_gpu_price
from auditor.model import Finding, Severity, Window
from auditor.rates import RateError, gpu_hourly_usd
from auditor.store import BUCKET_S
from auditor.units import format_share, format_usd
from rules.contract import RuleContext

# Cloud bills (aws, gcp price sources) reach the store through a billing sync this version does not
# have yet: say what works today.
_NO_BILL_FIX = (
    "no cost lines for it in the store: a static or onprem price in the config gives one; "
    "aws and gcp bills are not synced by this version"
)


def no_verdict(
    rule: str,
    subject: str,
    reason: str,
    figures: Sequence[tuple[str, str]] = (),
    *,
    deployment: str | None = None,
    window: Window | None = None,
) -> Finding:
    """A finding that says the rule could not judge, and why: never a verdict, never an alert."""
    return Finding(
        rule=rule,
        subject=subject,
        deployment=deployment,
        window=window,
        severity=Severity.INFO,
        title=f"{rule}: no verdict for {subject}",
        text=reason,
        usd_per_month=None,
        figures=tuple(figures),
        verdict=False,
    )


def window_start(context: RuleContext, days: float) -> datetime:
    """`days` before now; where that is older than the minute rows kept (a large fleet keeps ~2 days)
    and inside a quarter-hour, the start of that quarter-hour: the tier holds it whole, while the minutes
    that would cut it are gone (summed from the tier's next quarter-hour, up to 15 minutes went
    missing). Where the minutes are kept, exactly `days` before now."""
    start = context.now - timedelta(days=days)
    start_ts = start.timestamp()
    if start_ts % BUCKET_S == 0:
        return start
    if "oldest_minute_ts" not in context.cache:
        context.cache["oldest_minute_ts"] = context.store.oldest_minute_ts()
    kept_from: int | None = context.cache["oldest_minute_ts"]
    if kept_from is not None and start_ts >= kept_from:
        return start
    return datetime.fromtimestamp(start_ts // BUCKET_S * BUCKET_S, tz=start.tzinfo)


def aggregated(context: RuleContext, days: float) -> AggregatedWindow:
    """Every deployment costed over the `days` before now (`window_start`); shared by the rules of one
    evaluation."""
    end = context.now
    start = window_start(context, days)
    key = ("window", start, end)
    if key not in context.cache:
        context.cache[key] = cost_window(
            context.store, context.config, start, end, context.api_catalog, context.gpu_catalog
        )
    window: AggregatedWindow = context.cache[key]
    return window


def costed(context: RuleContext, days: float) -> list[DeploymentCost]:
    return aggregated(context, days).window.deployments


def per_month(usd: Decimal, dc: DeploymentCost, month_h: Decimal) -> Decimal:
    """An amount over the window's active (paid-for) hours, projected over a `month_h`-hour month at
    that rate: TCO, cost. Real hours, never a fixed 730."""
    hours = dc.active_hours
    return usd * month_h / hours if hours > 0 else Decimal(0)


def observed_per_month(usd: Decimal, dc: DeploymentCost, month_h: Decimal) -> Decimal:
    """An amount over the window's *observed* hours (tokens, their API cost), projected over a month:
    tokens of unobserved hours are unknown, so the rate is that of the hours they were counted in."""
    hours = dc.observed_hours
    return usd * month_h / hours if hours > 0 else Decimal(0)


def api_saving_per_month(dc: DeploymentCost, month_h: Decimal) -> Decimal | None:
    """THE saving of moving a deployment to its cheapest comparable API: `auditor.costing.monthly_saving`,
    the one savings figure the report, JSON and digest print too (over a calendar-month window, that
    month's own figure; over the last N days, projected at their rate over the calendar month)."""
    cheapest = dc.cheapest_api
    if cheapest is None:
        return None
    return monthly_saving(dc, cheapest).usd


def savings_basis(dc: DeploymentCost, api_ref: str, month_h: Decimal) -> str:
    """How the API saving was reached, in words (the basis `monthly_saving` states)."""
    cheapest = dc.cheapest_api
    over = monthly_saving(dc, cheapest).basis if cheapest is not None else f"a {month_h:.0f}-hour month"
    return f"TCO of the observed hours − {api_ref}'s price of their tokens, {over}"


def deployment_window(dc: DeploymentCost) -> Window:
    """The window a deployment was judged on, with its observed and billed GPU-hours."""
    return Window(
        start_ts=dc.start.timestamp(),
        end_ts=dc.end.timestamp(),
        observed_h=float(dc.hours.observed),
        expected_h=float(dc.hours.billed),
    )


def fires_below(value: float, enter: float, leave: float, *, firing: bool) -> bool:
    """Fires when `value` is strictly below `enter`; once firing, it holds until strictly above `leave`."""
    return value <= leave if firing else value < enter


def fires_above(value: float, enter: float, leave: float, *, firing: bool) -> bool:
    """Fires when `value` is strictly above `enter`; once firing, it holds until strictly below `leave`."""
    return value >= leave if firing else value > enter


def coverage(dc: DeploymentCost) -> float | None:
    if dc.hours.billed <= 0:
        return None
    return float(dc.hours.observed / dc.hours.billed)


def judgement_problem(dc: DeploymentCost, min_coverage: float, *, needs_tokens: bool) -> str | None:
    """Why this window cannot be judged (too little observed, no cost, no tokens), or None."""
    if dc.active_start is None and dc.cost_known:
        return (
            "no data in the window: nothing was observed in it and no active_from/active_until "
            "in the config covers it"
        )
    share = coverage(dc)
    if share is None:
        return f"no billed GPU-hours in the window ({_NO_BILL_FIX})"
    active = float(dc.active_hours / dc.window_hours) if dc.window_hours > 0 else 0.0
    if active < min_coverage:
        return (
            f"it was active (paid for, by active_from/active_until or its samples) for only "
            f"{format_share(active)} of the window; a verdict needs {format_share(min_coverage)}"
        )
    if share < min_coverage:
        return (
            f"only {format_share(share)} of the window's {dc.hours.billed:.1f} billed GPU-hours "
            "were observed "
            f"(at least {format_share(min_coverage)} needed); the rest is unknown, not idle"
        )
    if dc.utilization is None:
        return f"{dc.utilization_metric.value} is unknown for this deployment over the window"
    if dc.cost_usd <= 0:
        return f"no cost recorded for the window ({_NO_BILL_FIX})"
    if needs_tokens and dc.tokens == 0 and dc.measures.request_busy is None:
        return "token counts are unknown: no inference-server metrics in the window"
    return None


def window_figures(dc: DeploymentCost, month_h: Decimal) -> tuple[tuple[str, str], ...]:
    share = coverage(dc)
    days = (dc.end - dc.start).total_seconds() / 86400
    return (
        (f"utilization ({dc.utilization_metric.value})", format_share(dc.utilization)),
        ("window", f"{round(days, 2):g} days to {dc.end:%Y-%m-%d %H:%M}"),
        ("observed", f"{dc.hours.observed:.1f} of {dc.hours.billed:.1f} GPU-hours ({format_share(share)})"),
        ("cost (TCO) a month", format_usd(per_month(dc.tco_usd, dc, month_h))),
    )


def gpu_rate_in_window(dc: DeploymentCost) -> Decimal | None:
    """What one GPU-hour cost over the window (raw compute), whatever the price source."""
    if dc.hours.billed <= 0 or dc.cost_usd <= 0:
        return None
    return dc.cost_usd / dc.hours.billed


def live_gpu_hourly_usd(
    deployment: DeploymentConfig, catalog: Sequence[GpuPrice], hours_in_month: Decimal
) -> Decimal | None:
    """USD per GPU-hour from the price config and the GPU catalog: what one more running GPU costs now.

    None when the config names no rate (a cloud deployment with neither instance type nor catalog row)."""
    price = deployment.price
    try:
        if isinstance(price, StaticPrice):
            return gpu_hourly_usd(price, catalog)
        if isinstance(price, AwsPrice | GcpPrice) and price.instance_type is not None:
            row = find_gpu_price(catalog, price.instance_type, pricing="on_demand")
            if price.gpus_per_instance is not None:
                return row.instance_hourly_usd / price.gpus_per_instance
            return row.gpu_hourly_usd
    except (RateError, LookupError):
        return None
    if isinstance(price, OnPremPrice):
        monthly = price.purchase_usd / price.amortization_months + price.hosting_usd_month
        return Decimal(monthly / hours_in_month / deployment.billed_gpus)
    return None


def report_command(context: RuleContext) -> str:
    local = context.now.astimezone(context.config.tz)
    return f"auditor report --month {local:%Y-%m}"
