"""CSV for finance: a row per deployment per day, a summary, and the API comparisons.

Every column carries its unit; numbers are written exactly (money unrounded, as the Decimal it is),
so that every derived figure can be recomputed from the columns it is derived from:

    cost_per_mtok_usd       = cost_usd × 1e6 / (prompt_tokens + generation_tokens)
    idle_cost_usd           = cost_usd × idle_gpu_hours / billed_gpu_hours
    api_usd                 = (prompt_tokens × input_mtok_usd + generation_tokens × output_mtok_usd) / 1e6
    hourly_tco_usd          = tco_usd / window_hours
    breakeven_utilization   = hourly_tco_usd / (capacity_tokens_per_s × 3600 × api_usd / tokens)
    breakeven_tokens_per_month = hourly_tco_usd × 730 / (api_usd / tokens)
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path

from reports.files import write_atomic
from reports.monthly import DeploymentMonth, MonthReport

DAILY_COLUMNS = (
    "deployment",
    "day",
    "cost_usd",
    "billed_gpu_hours",
    "observed_gpu_hours",
    "idle_gpu_hours",
    "idle_cost_usd",
    "prompt_tokens",
    "generation_tokens",
    "tokens",
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
    "month",
    "partial",
    "start",
    "end",
    "window_hours",
    "cost_usd",
    "overhead_usd",
    "tco_usd",
    "billed_gpu_hours",
    "observed_gpu_hours",
    "idle_gpu_hours",
    "unknown_gpu_hours",
    "idle_cost_usd",
    "utilization_metric",
    "utilization",
    "gpu_util",
    "sm_active",
    "request_busy",
    "throughput_util",
    "capacity_tokens_per_s",
    "capacity_source",
    "prompt_tokens",
    "generation_tokens",
    "tokens",
    "cost_per_mtok_usd",
    "tco_per_mtok_usd",
)
API_COLUMNS = (
    "deployment",
    "api_provider",
    "api_model",
    "input_mtok_usd",
    "output_mtok_usd",
    "prompt_tokens",
    "generation_tokens",
    "api_usd",
    "tco_usd",
    "savings_usd",
    "window_hours",
    "hourly_tco_usd",
    "capacity_tokens_per_s",
    "blended_usd_per_token",
    "breakeven_utilization",
    "breakeven_tokens_per_month",
)
UNATTRIBUTED = "(unattributed)"
TOTAL = "(total)"

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


def daily_rows(d: DeploymentMonth) -> Iterable[Sequence[Cell]]:
    cheapest = d.cost.cheapest_api
    for day in d.days:
        api_usd = dict(day.api_equivalents).get(cheapest.price.ref) if cheapest else None
        m = day.measures
        yield (
            d.name,
            day.day.isoformat(),
            day.cost_usd,
            day.billed_gpu_hours,
            day.observed_gpu_hours,
            day.idle_gpu_hours,
            day.idle_cost_usd,
            day.prompt_tokens,
            day.generation_tokens,
            day.tokens,
            day.cost_per_mtok_usd,
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


def summary_rows(report: MonthReport) -> Iterable[Sequence[Cell]]:
    for d in report.deployments:
        c, m = d.cost, d.cost.measures
        yield (
            d.name,
            report.month,
            report.partial,
            c.start.isoformat(),
            c.end.isoformat(),
            c.window_hours,
            c.cost_usd,
            c.overhead_usd,
            c.tco_usd,
            c.hours.billed,
            c.hours.observed,
            c.hours.idle,
            c.hours.unknown,
            c.idle_cost_usd,
            c.utilization_metric.value,
            c.utilization,
            m.gpu_util,
            m.sm_active,
            m.request_busy,
            m.throughput_util,
            c.capacity_tokens_per_s,
            c.capacity_source,
            c.prompt_tokens,
            c.generation_tokens,
            c.tokens,
            c.cost_per_mtok_usd,
            c.tco_per_mtok_usd,
        )
    blank: list[Cell] = [None] * (len(SUMMARY_COLUMNS) - 7)
    window = (report.month, report.partial, report.start.isoformat(), report.end.isoformat(), None)
    yield (UNATTRIBUTED, *window, report.unattributed_cost_usd, *blank)
    yield (TOTAL, *window, report.total_cost_usd, *blank)


def api_rows(report: MonthReport) -> Iterable[Sequence[Cell]]:
    for d in report.deployments:
        c = d.cost
        hourly = c.tco_usd / c.window_hours
        for a in c.apis:
            yield (
                d.name,
                a.price.provider,
                a.price.model,
                a.price.input_mtok_usd,
                a.price.output_mtok_usd,
                c.prompt_tokens,
                c.generation_tokens,
                a.usd,
                c.tco_usd,
                a.savings_usd,
                c.window_hours,
                hourly,
                c.capacity_tokens_per_s,
                a.blended_usd_per_token,
                a.breakeven_utilization,
                a.breakeven_tokens_per_month,
            )


def write_csv(report: MonthReport, directory: Path, stem: str) -> list[Path]:
    """`STEM-daily.csv`, `STEM-summary.csv`, `STEM-api.csv` in directory."""
    daily = (row for d in report.deployments for row in daily_rows(d))
    return [
        write_atomic(directory / f"{stem}-daily.csv", _table(DAILY_COLUMNS, daily)),
        write_atomic(directory / f"{stem}-summary.csv", _table(SUMMARY_COLUMNS, summary_rows(report))),
        write_atomic(directory / f"{stem}-api.csv", _table(API_COLUMNS, api_rows(report))),
    ]
