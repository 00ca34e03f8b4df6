"""The month for finance: every deployment's costing, day by day, and the bill it reconciles with.

`build_month_report` reads the store once through `auditor.analysis.cost_window` (the
roll-ups summed in SQL) and assembles what every format shows: per deployment the month's
`DeploymentCost`, a row per local day, the utilization heat map by hour of day × weekday, and the
rules' findings (passed in: the composition root runs the rules, a report never does). Months
follow `config.timezone`; a month still in progress ends now and is marked partial.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from auditor.analysis import Bucket, billed_gpu_hours, cost_window, local_days, merged
from auditor.at_stake import AtStake, at_stake, at_stake_line
from auditor.bills import billing_fix_command, cost_metric_words, no_billing_data_line
from auditor.config import Config, DeploymentConfig
from auditor.costing import (
    DeploymentCost,
    UtilizationMeasures,
    api_cost_usd,
    cost_per_mtok_usd,
    elapsed_s,
    hours_from_seconds,
    idle_cost_usd,
    served_tokens_known,
    sum_usd,
)
from auditor.gpu_prices import GpuPrice
from auditor.model import CostLine, CostMetric, Finding, UtilizationMetric
from auditor.prices import ApiPriceCatalog
from auditor.store import Store

MONTH_PATTERN = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

Progress = Callable[[str], None]


MIN_YEAR, MAX_YEAR = 1970, 9998
"""Months a report can cover: no GPU was metered before 1970, and 9999-12 would end in year 10000."""


class MonthError(ValueError):
    """The month asked for cannot be reported (malformed, or not begun)."""


class NoDataError(MonthError):
    """Nothing was paid for and nothing observed in the month: a report would invent its figures."""


@dataclass(frozen=True, slots=True)
class MonthWindow:
    month: str
    start: datetime
    end: datetime
    """The month's end, or now for a month in progress."""
    partial: bool


def month_start(month: str, tz: ZoneInfo) -> datetime:
    """`2026-10` in tz: its first midnight; MonthError for anything that is not a month."""
    match = MONTH_PATTERN.match(month.strip())
    if match is None:
        raise MonthError(f"{month!r} is not a month; write it as YYYY-MM, e.g. 2026-10")
    year, number = int(match.group(1)), int(match.group(2))
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise MonthError(f"{month!r}: the year must be from {MIN_YEAR} to {MAX_YEAR}")
    return datetime(year, number, 1, tzinfo=tz)


def month_window(month: str, tz: ZoneInfo, now: datetime) -> MonthWindow:
    """`2026-10` in tz: [its first midnight, the next month's first midnight), or up to now."""
    start = month_start(month, tz)
    year, number = start.year, start.month
    following = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=tz)
    if now <= start:
        raise MonthError(f"{month} has not begun yet (it is {now.astimezone(tz):%Y-%m-%d %H:%M} in {tz.key})")
    if now < following:
        return MonthWindow(month, start, now, partial=True)
    return MonthWindow(month, start, following, partial=False)


@dataclass(frozen=True, slots=True)
class DayFigures:
    """One deployment's local day."""

    day: date
    cost_usd: Decimal
    billed_gpu_hours: Decimal
    observed_gpu_hours: Decimal
    idle_gpu_hours: Decimal
    prompt_tokens: int
    generation_tokens: int
    tokens_known: bool
    """False for a day without inference-server data: its tokens are unknown, not 0."""
    measures: UtilizationMeasures
    utilization: float | None
    """The month's chosen measure, over this day."""
    api_equivalents: tuple[tuple[str, Decimal], ...]
    """(provider:model, USD) for each API the deployment is compared with."""

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.generation_tokens

    @property
    def coverage(self) -> Decimal | None:
        if self.billed_gpu_hours <= 0:
            return None
        return min(self.observed_gpu_hours / self.billed_gpu_hours, Decimal(1))

    @property
    def observed_cost_usd(self) -> Decimal:
        return self.cost_usd * (self.coverage or Decimal(0))

    @property
    def cost_per_mtok_usd(self) -> Decimal | None:
        """The observed hours' cost per million of their tokens (as the month's figure)."""
        return cost_per_mtok_usd(self.observed_cost_usd, self.tokens) if self.tokens_known else None

    @property
    def idle_cost_usd(self) -> Decimal | None:
        return idle_cost_usd(self.cost_usd, self.idle_gpu_hours, self.billed_gpu_hours)

    @property
    def idle_share(self) -> Decimal | None:
        """Idle cost ÷ cost: the share of the day's spend that bought idle GPU time."""
        idle = self.idle_cost_usd
        return None if idle is None or self.cost_usd == 0 else idle / self.cost_usd

    @property
    def cheapest_api_usd(self) -> Decimal | None:
        return min((usd for _, usd in self.api_equivalents), default=None)


@dataclass(frozen=True, slots=True)
class DeploymentMonth:
    config: DeploymentConfig
    cost: DeploymentCost
    days: list[DayFigures]
    heatmap: list[list[float | None]]
    """heatmap[weekday][hour]: the chosen measure's mean over those local hours (None: never observed)."""
    findings: list[Finding]
    cost_lines: list[CostLine]

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def disagreement(self) -> str | None:
        """The design's warning: NVML says busy while the server says idle."""
        m = self.cost.measures
        if m.gpu_util is not None and m.request_busy is not None and m.gpu_util - m.request_busy > 0.3:
            return (
                f"gpu_util reads {m.gpu_util:.0%} while requests ran only {m.request_busy:.0%} of the time:"
                " the server busy-polls (vLLM does), so gpu_util overstates the work done"
            )
        return None


@dataclass(frozen=True, slots=True)
class MonthReport:
    month: str
    start: datetime
    end: datetime
    partial: bool
    timezone: str
    generated_at: datetime
    deployments: list[DeploymentMonth]
    cost_lines: list[CostLine]
    """Every line the figures were drawn from: the deployments' and the unattributed."""
    other_findings: list[Finding] = field(default_factory=list)
    """Findings about no single deployment of the report (the fleet, a GPU of none)."""
    complete_coverage: float = 0.99
    filtered_to: tuple[str, ...] = ()
    """The deployments a filtered report (`--deployment`) is limited to; empty: the whole report."""
    unfiltered_total_usd: Decimal | None = None
    """A filtered report's whole-month total, for "filtered to X (of $Y total)"."""
    cost_metric: CostMetric = CostMetric.EFFECTIVE
    """Which FOCUS cost the bill-priced deployments count (`billing.cost_metric`): every format names it."""
    billing_fix: str = "auditor billing import FILE…"
    """The command that brings a missing bill in (named where a deployment has no billing data)."""

    @property
    def no_billing_data(self) -> list[str]:
        """Bill-priced deployments without a line in the month: cost unknown (never $0), no verdict."""
        return [d.name for d in self.deployments if not d.cost.cost_known]

    @property
    def no_billing_data_text(self) -> str | None:
        names = self.no_billing_data
        return no_billing_data_line(names, self.month, self.billing_fix) if names else None

    @property
    def cost_metric_text(self) -> str:
        """`bills counted at EffectiveCost (amortized: …)`: said in every format."""
        return "bills counted at " + cost_metric_words(self.cost_metric)

    @property
    def stem(self) -> str:
        """Its files' name: a filtered report's name says so, never that of the full report."""
        base = f"gpu-report-{self.month}"
        return base + "".join(f"-{name}" for name in self.filtered_to)

    @property
    def complete(self) -> bool:
        """A closed month, every deployment observed for at least `report.complete_coverage` of its hours."""
        if self.partial:
            return False
        needed = Decimal(repr(self.complete_coverage))
        for d in self.deployments:
            coverage = d.cost.coverage
            if d.cost.active_hours > 0 and (coverage is None or coverage < needed):
                return False
        return True

    @property
    def local_end(self) -> datetime:
        return self.end.astimezone(ZoneInfo(self.timezone))

    @property
    def total_cost_usd(self) -> Decimal:
        return sum_usd(line.amount_usd for line in self.cost_lines)

    @property
    def unattributed_lines(self) -> list[CostLine]:
        names = {d.name for d in self.deployments}
        return [line for line in self.cost_lines if line.deployment not in names]

    @property
    def unattributed_cost_usd(self) -> Decimal:
        return sum_usd(line.amount_usd for line in self.unattributed_lines)

    @property
    def estimated(self) -> bool:
        return any(d.cost.estimated for d in self.deployments) or any(
            line.estimated for line in self.cost_lines
        )

    @property
    def at_stake(self) -> AtStake:
        """The total at stake of the report's findings: one action per deployment, capped at its cost."""
        return at_stake([*(f for d in self.deployments for f in d.findings), *self.other_findings])

    @property
    def at_stake_text(self) -> str:
        """The line the report's findings end with (issue 12)."""
        return at_stake_line(self.at_stake)


def build_month_report(
    *,
    store: Store,
    config: Config,
    month: str,
    now: datetime,
    api_catalog: ApiPriceCatalog,
    gpu_catalog: Sequence[GpuPrice],
    findings: Sequence[Finding],
    only: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> MonthReport:
    """Assemble the month. `only` limits it to some deployments (their unattributed share is then
    not the report's business: unattributed lines appear only in the whole report)."""
    step = progress or (lambda _: None)
    window = month_window(month, config.tz, now)
    step("summing the month's roll-ups")
    aggregated = cost_window(store, config, window.start, window.end, api_catalog, gpu_catalog, only=only)
    if not aggregated.window.has_data:
        raise NoDataError(f"no data for {window.month}")
    unfiltered_total: Decimal | None = None
    if only is not None:
        whole = cost_window(store, config, window.start, window.end, api_catalog, gpu_catalog)
        unfiltered_total = whole.window.total_usd
    step("assembling days and heat maps")
    months = []
    for cost in aggregated.window.deployments:
        deployment = config.deployment(cost.deployment)
        lines = [line for line in aggregated.window.cost_lines if line.deployment == cost.deployment]
        buckets = aggregated.buckets[cost.deployment]
        capacity = aggregated.capacity_tokens_per_s[cost.deployment]
        months.append(
            DeploymentMonth(
                config=deployment,
                cost=cost,
                days=day_figures(cost, deployment, lines, buckets, capacity, config.tz),
                heatmap=heatmap(buckets, cost.utilization_metric, capacity, config.tz),
                findings=[f for f in findings if f.subject == cost.deployment],
                cost_lines=lines,
            )
        )
    names = {m.name for m in months}
    return MonthReport(
        month=window.month,
        start=window.start,
        end=window.end,
        partial=window.partial,
        timezone=config.timezone,
        generated_at=now.astimezone(UTC),
        deployments=months,
        cost_lines=aggregated.window.cost_lines,
        other_findings=[f for f in findings if f.subject not in names] if only is None else [],
        complete_coverage=config.report.complete_coverage,
        filtered_to=tuple(only or ()),
        unfiltered_total_usd=unfiltered_total,
        cost_metric=config.billing.cost_metric,
        billing_fix=billing_fix_command(config),
    )


def _day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    following = day + timedelta(days=1)
    return (
        datetime(day.year, day.month, day.day, tzinfo=tz),
        datetime(following.year, following.month, following.day, tzinfo=tz),
    )


def day_figures(
    cost: DeploymentCost,
    deployment: DeploymentConfig,
    lines: Sequence[CostLine],
    buckets: Mapping[int, Bucket],
    capacity_tokens_per_s: float | None,
    tz: ZoneInfo,
) -> list[DayFigures]:
    """A row per local day of the window: its cost lines, and the quarter-hours that fall in it."""
    by_day: dict[date, list[Bucket]] = {}
    for bucket_ts, bucket in buckets.items():
        by_day.setdefault(datetime.fromtimestamp(bucket_ts, tz).date(), []).append(bucket)
    first, after_last = local_days(cost.start, cost.end, tz)
    rows = []
    day = first
    while day < after_last:
        day_start, day_end = _day_bounds(day, tz)
        inside_s = Decimal(0)
        if cost.active_start is not None and cost.active_end is not None:
            lo, hi = max(cost.active_start, day_start), min(cost.active_end, day_end)
            inside_s = max(elapsed_s(lo, hi), Decimal(0))
        own = [line for line in lines if line.day == day]
        total = merged(by_day.get(day, []))
        measures = total.measures(capacity_tokens_per_s)
        _, utilization = measures.pick(cost.utilization_metric)
        known = served_tokens_known(total.prompt_tokens, total.generation_tokens, measures)
        rows.append(
            DayFigures(
                day=day,
                cost_usd=sum_usd(line.amount_usd for line in own),
                billed_gpu_hours=billed_gpu_hours(own, inside_s, deployment.billed_gpus),
                observed_gpu_hours=hours_from_seconds(total.gpu_observed_s),
                idle_gpu_hours=hours_from_seconds(total.gpu_idle_s),
                prompt_tokens=total.prompt_tokens,
                generation_tokens=total.generation_tokens,
                tokens_known=known,
                measures=measures,
                utilization=utilization,
                api_equivalents=tuple(
                    (c.price.ref, api_cost_usd(total.prompt_tokens, total.generation_tokens, c.price))
                    for c in cost.apis
                )
                if known
                else (),
            )
        )
        day += timedelta(days=1)
    return rows


def heatmap(
    buckets: Mapping[int, Bucket],
    metric: UtilizationMetric,
    capacity_tokens_per_s: float | None,
    tz: ZoneInfo,
) -> list[list[float | None]]:
    """The measure's mean per (local weekday, local hour), over every such hour of the window."""
    cells: dict[tuple[int, int], Bucket] = {}
    for bucket_ts, bucket in buckets.items():
        local = datetime.fromtimestamp(bucket_ts, tz)
        cells.setdefault((local.weekday(), local.hour), Bucket()).add(bucket)
    grid: list[list[float | None]] = [[None] * 24 for _ in range(7)]
    for (weekday, hour), bucket in cells.items():
        grid[weekday][hour] = bucket.measures(capacity_tokens_per_s).pick(metric)[1]
    return grid


def previous_month(now: datetime) -> str:
    first = now.date().replace(day=1)
    last = first - timedelta(days=1)
    return f"{last.year:04d}-{last.month:02d}"
