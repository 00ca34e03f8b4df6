"""CSV for finance: the cost lines (FOCUS names), a row per deployment per day, a summary, the totals
and allocations, and the API comparisons.

Every column carries its unit; numbers are written exactly (money unrounded, as the Decimal it is;
token counts as whole numbers), so that every derived figure can be recomputed from the columns it
is derived from; `docs/report.md` defines every column of every file. The formulas:

    cost_per_mtok_usd       = observed_cost_usd × 1e6 / (prompt_tokens + generation_tokens)
    observed_cost_usd       = cost_usd × coverage;   coverage = observed_gpu_hours / billed_gpu_hours (≤ 1)
    idle_cost_usd           = cost_usd × idle_gpu_hours / billed_gpu_hours
    api_usd                 = (prompt_tokens × input_mtok_usd + generation_tokens × output_mtok_usd) / 1e6
    saving_usd              = observed_tco_usd − api_usd  (projected per month only off a calendar month)
    hourly_tco_usd          = tco_usd / active_hours
    breakeven_utilization   = hourly_tco_usd / (capacity_tokens_per_s × 3600 × api_usd / tokens)
    breakeven_tokens_per_month = hourly_tco_usd × month_hours / (api_usd / tokens)
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from auditor.costing import monthly_saving, sum_usd, token_splits
from auditor.model import CostBasis, CostLine, CostMetric
from reports.files import write_atomic
from reports.monthly import DayFigures, DeploymentMonth, MonthReport

LINES_COLUMNS = (
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "BillingCurrency",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ChargeCategory",
    "PricingCategory",
    "ResourceId",
    "SkuId",
    "Tags",
    "x_Deployment",
    "x_Team",
    "x_CostCenter",
    "x_GpuType",
    "x_GpuCount",
    "x_Model",
    "x_PromptTokens",
    "x_GenerationTokens",
    "x_IdleCostUsd",
    "x_PricingBasis",
    "x_Estimated",
    "x_Source",
    "x_Account",
    "x_GpuHours",
)
DAILY_COLUMNS = (
    "deployment",
    "day",
    "cost_usd",
    "billed_gpu_hours",
    "observed_gpu_hours",
    "idle_gpu_hours",
    "idle_cost_usd",
    "tokens_known",
    "prompt_tokens",
    "generation_tokens",
    "tokens",
    "observed_cost_usd",
    "cost_per_mtok_usd",
    "utilization_metric",
    "utilization",
    "gpu_util",
    "sm_active",
    "request_busy",
    "throughput_util",
    "api_model",
    "api_input_mtok_usd",
    "api_output_mtok_usd",
    "api_equivalent_usd",
)
SUMMARY_COLUMNS = (
    "deployment",
    "team",
    "cost_center",
    "month",
    "partial",
    "start",
    "end",
    "window_hours",
    "active_start",
    "active_end",
    "active_hours",
    "month_hours",
    "cost_known",
    "cost_usd",
    "overhead_usd",
    "tco_usd",
    "billed_gpu_hours",
    "observed_gpu_hours",
    "idle_gpu_hours",
    "unknown_gpu_hours",
    "coverage",
    "observed_cost_usd",
    "unobserved_cost_usd",
    "idle_cost_usd",
    "utilization_metric",
    "utilization",
    "gpu_util",
    "sm_active",
    "request_busy",
    "throughput_util",
    "capacity_tokens_per_s",
    "capacity_source",
    "tokens_known",
    "prompt_tokens",
    "generation_tokens",
    "tokens",
    "cost_per_mtok_usd",
    "tco_per_mtok_usd",
    "usage_cost_usd",
    "usage_cost_per_mtok_usd",
    "allocation_input_mtok_usd",
    "allocation_output_mtok_usd",
    "usage_input_mtok_usd",
    "usage_output_mtok_usd",
    "split_method",
    "monthly_budget_usd",
    "budget_used_share",
    "over_budget_usd",
)
TOTALS_COLUMNS = ("scope", "name", "cost_usd", "overhead_usd", "tco_usd", "monthly_budget_usd")
API_COLUMNS = (
    "deployment",
    "api_provider",
    "api_model",
    "input_mtok_usd",
    "output_mtok_usd",
    "prompt_tokens",
    "generation_tokens",
    "api_usd",
    "coverage",
    "observed_tco_usd",
    "saving_usd",
    "saving_basis",
    "saving_per_month",
    "tco_usd",
    "active_hours",
    "month_hours",
    "hourly_tco_usd",
    "capacity_tokens_per_s",
    "blended_usd_per_token",
    "breakeven_utilization",
    "breakeven_tokens_per_month",
)
UNATTRIBUTED = "(unattributed)"
TOTAL = "(total)"
NO_TEAM = "(no team)"
NO_COST_CENTER = "(no cost center)"

Cell = str | int | Decimal | float | bool | None


def cell(value: Cell) -> str:
    """Exact text: a Decimal in plain notation (never 1E+2), a float as its shortest repr, None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _table(columns: Sequence[str], rows: Iterable[Sequence[Cell]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([cell(v) for v in row])
    return out.getvalue()


# -- the finance lines (FOCUS) -------------------------------------------------------------------

_PRICING_CATEGORY = {"static": "Standard", "onprem": "Other"}


def _charge_period(day: date, report: MonthReport) -> tuple[str, str]:
    """The line's local day, clipped to the report's window, as UTC instants (FOCUS: end exclusive)."""
    tz = ZoneInfo(report.timezone)
    following = day + timedelta(days=1)
    start = max(
        datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC), report.start.astimezone(UTC)
    )
    end = min(
        datetime(following.year, following.month, following.day, tzinfo=tz).astimezone(UTC),
        report.end.astimezone(UTC),
    )
    return start.isoformat(), end.isoformat()


def _line_row(
    line: CostLine,
    report: MonthReport,
    d: DeploymentMonth | None,
    day: DayFigures | None,
    first_of_day: bool,
) -> tuple[Cell, ...]:
    start, end = _charge_period(line.day, report)
    if line.charge_period_start_ts is not None and line.charge_period_end_ts is not None:
        start = datetime.fromtimestamp(line.charge_period_start_ts, UTC).isoformat()
        end = datetime.fromtimestamp(line.charge_period_end_ts, UTC).isoformat()
    unknown = d is not None and not d.cost.cost_known  # no billing data: the day's tokens, no cost
    idle: Decimal | None = None
    if day is not None and day.billed_gpu_hours > 0 and not unknown:
        idle = line.amount_usd * min(day.idle_gpu_hours, day.billed_gpu_hours) / day.billed_gpu_hours
    tokens_known = day is not None and day.tokens_known and first_of_day
    tags = {"deployment": d.name, "team": d.config.team, "cost_center": d.config.cost_center} if d else {}
    billed, effective, listed = (
        line.cost(CostMetric.BILLED),
        line.cost(CostMetric.EFFECTIVE),
        line.cost(CostMetric.LIST),
    )
    if effective is None:  # a rated line, or one synced before FOCUS terms: its amount, by its basis
        billed = line.amount_usd if line.basis is CostBasis.INVOICED else None
        effective = line.amount_usd
        listed = line.amount_usd if line.basis is CostBasis.LIST else None
    if unknown:
        billed = effective = listed = None
    pricing = (
        "Committed" if line.basis is CostBasis.AMORTIZED else _PRICING_CATEGORY.get(line.source, "Standard")
    )
    return (
        billed,
        effective,
        listed,
        "USD",
        start,
        end,
        line.charge_category or "Usage",
        line.pricing_category or pricing,
        line.resource,
        line.usage_type,
        json.dumps({k: v for k, v in tags.items() if v is not None}, sort_keys=True),
        d.name if d else None,
        d.config.team if d else None,
        d.config.cost_center if d else None,
        d.config.gpu_type if d else None,
        d.config.billed_gpus if d else None,
        d.config.model if d else None,
        day.prompt_tokens if tokens_known and day else None,
        day.generation_tokens if tokens_known and day else None,
        idle,
        line.basis.value,
        line.estimated or line.basis is CostBasis.LIST,
        line.source,
        line.account,
        line.gpu_hours,
    )


def _overhead_row(d: DeploymentMonth) -> tuple[Cell, ...]:
    c = d.cost
    start = c.active_start.isoformat() if c.active_start else None
    end = c.active_end.isoformat() if c.active_end else None
    tags = {"deployment": d.name, "team": d.config.team, "cost_center": d.config.cost_center}
    return (
        None,
        c.overhead_usd,
        None,
        "USD",
        start,
        end,
        "Adjustment",
        "Other",
        d.name,
        "overheads",
        json.dumps({k: v for k, v in tags.items() if v is not None}, sort_keys=True),
        d.name,
        d.config.team,
        d.config.cost_center,
        d.config.gpu_type,
        d.config.billed_gpus,
        d.config.model,
        None,
        None,
        None,
        "overhead",
        False,
        "config",
        "overheads",
        None,
    )


def lines_rows(report: MonthReport) -> Iterable[Sequence[Cell]]:
    """One row per deployment × day × cost line (tokens on the day's first line, so they sum once),
    one overhead row per deployment with overheads, then every unattributed line."""
    for d in report.deployments:
        days = {day.day: day for day in d.days}
        seen: set[date] = set()
        for line in sorted(d.cost_lines, key=lambda x: x.day):
            first = line.day not in seen
            seen.add(line.day)
            yield _line_row(line, report, d, days.get(line.day), first)
        # A day with tokens but no cost line (a bill not yet synced, traffic outside the configured
        # active period) still carries its tokens, on a line of no cost, so the column sums hold.
        for day in d.days:
            if day.day not in seen and day.tokens_known and day.tokens > 0:
                empty = CostLine(day.day, "none", "", d.name, "no-cost-line", Decimal(0), d.name)
                yield _line_row(empty, report, d, day, True)
        if d.cost.overhead_usd != 0:
            yield _overhead_row(d)
    if not report.filtered_to:
        for line in report.unattributed_lines:
            yield _line_row(line, report, None, None, False)


# -- per day, summary, totals, APIs --------------------------------------------------------------


def daily_rows(d: DeploymentMonth) -> Iterable[Sequence[Cell]]:
    cheapest = d.cost.cheapest_api
    for day in d.days:
        api_usd = dict(day.api_equivalents).get(cheapest.price.ref) if cheapest else None
        m = day.measures
        known = day.tokens_known
        yield (
            d.name,
            day.day.isoformat(),
            day.cost_usd if d.cost.cost_known else None,
            day.billed_gpu_hours,
            day.observed_gpu_hours,
            day.idle_gpu_hours,
            day.idle_cost_usd if d.cost.cost_known else None,
            known,
            day.prompt_tokens if known else None,
            day.generation_tokens if known else None,
            day.tokens if known else None,
            day.observed_cost_usd if d.cost.cost_known else None,
            day.cost_per_mtok_usd if d.cost.cost_known else None,
            d.cost.utilization_metric.value,
            day.utilization,
            m.gpu_util,
            m.sm_active,
            m.request_busy,
            m.throughput_util,
            cheapest.price.ref if cheapest else None,
            cheapest.price.input_mtok_usd if cheapest else None,
            cheapest.price.output_mtok_usd if cheapest else None,
            api_usd,
        )


def unattributed_daily_rows(report: MonthReport) -> Iterable[Sequence[Cell]]:
    by_day: dict[date, Decimal] = defaultdict(Decimal)
    for line in report.unattributed_lines:
        by_day[line.day] += line.amount_usd
    blank: list[Cell] = [None] * (len(DAILY_COLUMNS) - 3)
    for day in sorted(by_day):
        yield (UNATTRIBUTED, day.isoformat(), by_day[day], *blank)


def summary_rows(report: MonthReport) -> Iterable[Sequence[Cell]]:
    """Deployments only: a column sum never double-counts (the totals have their own file)."""
    for d in report.deployments:
        c, m = d.cost, d.cost.measures
        budget = d.config.monthly_budget_usd
        splits = {s.basis: s for s in token_splits(c)}
        allocation, usage = splits.get("allocation"), splits.get("usage")
        yield (
            d.name,
            d.config.team,
            d.config.cost_center,
            report.month,
            report.partial,
            c.start.isoformat(),
            c.end.isoformat(),
            c.window_hours,
            c.active_start.isoformat() if c.active_start else None,
            c.active_end.isoformat() if c.active_end else None,
            c.active_hours,
            c.month_hours,
            c.cost_known,
            c.cost_usd if c.cost_known else None,
            c.overhead_usd,
            c.tco_usd if c.cost_known else None,
            c.hours.billed,
            c.hours.observed,
            c.hours.idle,
            c.hours.unknown,
            c.coverage,
            c.observed_cost_usd if c.cost_known else None,
            c.unobserved_cost_usd if c.cost_known else None,
            c.idle_cost_usd,
            c.utilization_metric.value,
            c.utilization,
            m.gpu_util,
            m.sm_active,
            m.request_busy,
            m.throughput_util,
            c.capacity_tokens_per_s,
            c.capacity_source,
            c.tokens_known,
            c.prompt_tokens if c.tokens_known else None,
            c.generation_tokens if c.tokens_known else None,
            c.tokens if c.tokens_known else None,
            c.cost_per_mtok_usd,
            c.tco_per_mtok_usd,
            c.usage_cost_usd,
            c.usage_cost_per_mtok_usd,
            allocation.input_mtok_usd if allocation else None,
            allocation.output_mtok_usd if allocation else None,
            usage.input_mtok_usd if usage else None,
            usage.output_mtok_usd if usage else None,
            allocation.method if allocation else None,
            budget,
            c.tco_usd / budget if budget and c.cost_known else None,
            max(c.tco_usd - budget, Decimal(0)) if budget is not None and c.cost_known else None,
        )


def totals_rows(report: MonthReport) -> Iterable[Sequence[Cell]]:
    """The report's total, its parts, and the allocation by team and by cost centre with subtotals."""
    deployments = report.deployments

    def group(label: str, key: str, missing: str) -> Iterable[Sequence[Cell]]:
        groups: dict[str, list[DeploymentMonth]] = defaultdict(list)
        for d in deployments:
            groups[getattr(d.config, key) or missing].append(d)
        for name in sorted(groups):
            members = groups[name]
            budgets = [
                d.config.monthly_budget_usd for d in members if d.config.monthly_budget_usd is not None
            ]
            known = all(d.cost.cost_known for d in members)  # one without billing data: unknown
            yield (
                label,
                name,
                sum_usd(d.cost.cost_usd for d in members) if known else None,
                sum_usd(d.cost.overhead_usd for d in members),
                sum_usd(d.cost.tco_usd for d in members) if known else None,
                sum_usd(budgets) if budgets else None,
            )

    for d in deployments:
        yield (
            "deployment",
            d.name,
            d.cost.cost_usd if d.cost.cost_known else None,
            d.cost.overhead_usd,
            d.cost.tco_usd if d.cost.cost_known else None,
            d.config.monthly_budget_usd,
        )
    yield from group("team", "team", NO_TEAM)
    yield from group("cost_center", "cost_center", NO_COST_CENTER)
    attributed = sum_usd(d.cost.cost_usd for d in deployments)
    overheads = sum_usd(d.cost.overhead_usd for d in deployments)
    yield ("attributed", None, attributed, overheads, attributed + overheads, None)
    if not report.filtered_to:
        yield (
            "unattributed",
            UNATTRIBUTED,
            report.unattributed_cost_usd,
            Decimal(0),
            report.unattributed_cost_usd,
            None,
        )
    yield ("total", TOTAL, report.total_cost_usd, overheads, report.total_cost_usd + overheads, None)


def api_rows(report: MonthReport) -> Iterable[Sequence[Cell]]:
    for d in report.deployments:
        c = d.cost
        hourly = c.tco_usd / c.active_hours if c.active_hours > 0 else None
        for a in c.apis:
            saving = monthly_saving(c, a)
            yield (
                d.name,
                a.price.provider,
                a.price.model,
                a.price.input_mtok_usd,
                a.price.output_mtok_usd,
                c.prompt_tokens,
                c.generation_tokens,
                a.usd,
                c.coverage,
                c.observed_tco_usd,
                saving.usd,
                saving.basis,
                saving.per_month,
                c.tco_usd,
                c.active_hours,
                c.month_hours,
                hourly,
                c.capacity_tokens_per_s,
                a.blended_usd_per_token,
                a.breakeven_utilization,
                a.breakeven_tokens_per_month,
            )


def write_csv(report: MonthReport, directory: Path, stem: str) -> list[Path]:
    """`STEM-lines.csv`, `STEM-daily.csv`, `STEM-summary.csv`, `STEM-totals.csv`, `STEM-api.csv`."""
    daily = [row for d in report.deployments for row in daily_rows(d)]
    if not report.filtered_to:
        daily.extend(unattributed_daily_rows(report))
    return [
        write_atomic(directory / f"{stem}-lines.csv", _table(LINES_COLUMNS, lines_rows(report))),
        write_atomic(directory / f"{stem}-daily.csv", _table(DAILY_COLUMNS, daily)),
        write_atomic(directory / f"{stem}-summary.csv", _table(SUMMARY_COLUMNS, summary_rows(report))),
        write_atomic(directory / f"{stem}-totals.csv", _table(TOTALS_COLUMNS, totals_rows(report))),
        write_atomic(directory / f"{stem}-api.csv", _table(API_COLUMNS, api_rows(report))),
    ]
