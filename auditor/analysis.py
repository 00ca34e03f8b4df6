"""Cost a window for every configured deployment, from the store and the config.

This is where the store's roll-ups and cost lines meet the config's deployments and prices: the
one entry point rules and reports use. Static and on-prem deployments get their cost lines from
their configured rates (so they need no billing sync); cloud deployments from the synced bill.
Cost lines attributed to no configured deployment are *unattributed*: shown, never dropped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Select, and_, case, func, select

from auditor.config import Config, DeploymentConfig, OnPremPrice, StaticPrice
from auditor.costing import (
    HOURS_PER_MONTH,
    MEASURED_CAPACITY_MINUTES,
    DeploymentCost,
    GpuHours,
    UtilizationMeasures,
    compare_apis,
    cost_deployment,
    hours_from_seconds,
    prorate_monthly_usd,
    served_tokens_known,
    sum_usd,
)
from auditor.gpu_prices import GpuPrice
from auditor.model import MINUTE_S, CostLine, GpuMinute, UtilizationMetric
from auditor.prices import ApiPrice, ApiPriceCatalog
from auditor.rates import onprem_cost_lines, static_cost_lines
from auditor.store import Store
from auditor.store import deployment_minutes as deployment_minutes_table
from auditor.store import gpu_minutes as gpu_minutes_table


@dataclass(frozen=True, slots=True)
class WindowCost:
    """Every deployment's costing over [start, end), and the bill they were drawn from."""

    start: datetime
    end: datetime
    deployments: list[DeploymentCost]
    cost_lines: list[CostLine]
    """Every line the figures were drawn from, rated and billed: the report's reconciliation."""

    @property
    def total_usd(self) -> Decimal:
        return sum_usd(line.amount_usd for line in self.cost_lines)

    @property
    def unattributed_usd(self) -> Decimal:
        names = {d.deployment for d in self.deployments}
        return sum_usd(line.amount_usd for line in self.cost_lines if line.deployment not in names)


def local_days(start: datetime, end: datetime, tz: ZoneInfo) -> tuple[date, date]:
    """The calendar days (in tz) the window touches, as [first, last + 1)."""
    first = start.astimezone(tz).date()
    last_instant = end - timedelta(microseconds=1)
    return first, last_instant.astimezone(tz).date() + timedelta(days=1)


def _day_fraction(day: date, start: datetime, end: datetime, tz: ZoneInfo) -> Decimal:
    """The share of a local day inside [start, end): 1 for whole days, less at a window's ragged ends."""
    day_start = datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)
    following = day + timedelta(days=1)
    day_end = datetime(following.year, following.month, following.day, tzinfo=tz).astimezone(UTC)
    inside = min(end, day_end) - max(start, day_start)
    # In whole microseconds: truncating to seconds loses up to a second at each end of a window that
    # crosses midnight, which shows in a one-hour window's rate.
    micro = timedelta(microseconds=1)
    return Decimal(max(inside // micro, 0)) / Decimal((day_end - day_start) // micro)


def _clip(lines: Sequence[CostLine], start: datetime, end: datetime, tz: ZoneInfo) -> list[CostLine]:
    """Rated lines scaled to the part of their day inside the window (a month in progress ends today, now)."""
    clipped = []
    for line in lines:
        share = _day_fraction(line.day, start, end, tz)
        if share == 1:
            clipped.append(line)
        elif share > 0:
            clipped.append(
                replace(
                    line,
                    amount_usd=line.amount_usd * share,
                    usage_hours=None if line.usage_hours is None else line.usage_hours * share,
                    gpu_hours=None if line.gpu_hours is None else line.gpu_hours * share,
                )
            )
    return clipped


def energy_j_by_day(minutes: Sequence[GpuMinute], tz: ZoneInfo) -> dict[date, float]:
    by_day: dict[date, float] = defaultdict(float)
    for m in minutes:
        if m.energy_j is not None:
            by_day[datetime.fromtimestamp(m.minute_ts, tz).date()] += m.energy_j
    return dict(by_day)


def rated_cost_lines(
    deployment: DeploymentConfig,
    start: datetime,
    end: datetime,
    tz: ZoneInfo,
    gpu_catalog: Sequence[GpuPrice],
    gpu_minutes: Sequence[GpuMinute],
) -> list[CostLine]:
    """Lines from a configured rate (static or on-prem) over the window; none for a billed (cloud) source."""
    first, after_last = local_days(start, end, tz)
    if isinstance(deployment.price, StaticPrice):
        lines = static_cost_lines(deployment, first, after_last, tz, gpu_catalog)
    elif isinstance(deployment.price, OnPremPrice):
        lines = onprem_cost_lines(deployment, first, after_last, tz, energy_j_by_day(gpu_minutes, tz))
    else:
        return []
    return _clip(lines, start, end, tz)


def billed_to(billed: Sequence[CostLine], deployment: DeploymentConfig) -> list[CostLine]:
    """The synced bill's lines attributed to a deployment (one priced by a cloud bill, not a rate)."""
    return [line for line in billed if line.deployment == deployment.name]


def unattributed_lines(billed: Sequence[CostLine], config: Config) -> list[CostLine]:
    """Lines attributed to no configured deployment: shown in every total, never dropped."""
    configured = {d.name for d in config.deployments}
    return [line for line in billed if line.deployment not in configured]


def cost_window(
    store: Store,
    config: Config,
    start: datetime,
    end: datetime,
    api_catalog: ApiPriceCatalog,
    gpu_catalog: Sequence[GpuPrice],
    *,
    only: Sequence[str] | None = None,
) -> WindowCost:
    """Cost every configured deployment (or those named in `only`) over [start, end), row by row.

    The reference implementation: `cost_window_aggregated` gives the same figures from SQL sums, and
    is what the report, rules and exporter use; tests hold the two to each other."""
    tz = config.tz
    first, after_last = local_days(start, end, tz)
    billed = store.cost_lines(first, after_last)
    start_ts, end_ts = start.timestamp(), end.timestamp()
    costs: list[DeploymentCost] = []
    lines: list[CostLine] = []
    for deployment in config.deployments:
        if only is not None and deployment.name not in only:
            continue
        gpu_minutes = store.gpu_minutes(start_ts, end_ts, deployment.name)
        own = rated_cost_lines(deployment, start, end, tz, gpu_catalog, gpu_minutes) or billed_to(
            billed, deployment
        )
        lines.extend(own)
        costs.append(
            cost_deployment(
                deployment=deployment.name,
                start=start,
                end=end,
                tz=tz,
                cost_lines=own,
                gpu_minutes=gpu_minutes,
                deployment_minutes=store.deployment_minutes(start_ts, end_ts, deployment.name),
                billed_gpus=deployment.billed_gpus,
                overhead_usd_month=deployment.overheads.total_usd_month,
                api_prices=_prices(api_catalog, deployment.compare_to),
                capacity_tokens_per_s=deployment.capacity_tokens_per_s,
                utilization_metric=config.rules.utilization_metric,
            )
        )
    if only is None:
        lines.extend(unattributed_lines(billed, config))
    return WindowCost(start=start, end=end, deployments=costs, cost_lines=lines)


def _prices(catalog: ApiPriceCatalog, refs: Sequence[str]) -> list[ApiPrice]:
    # `auditor config check` has already rejected unknown names; prices are looked up again here
    # because a catalog refresh may have changed them since.
    return [catalog.get(ref) for ref in refs]


# -- the aggregated path: the same figures, summed in SQL -------------------------------------------
#
# A month of minute roll-ups for a fleet is millions of rows: loading each as a Python object is too
# slow and too big. Here the database sums them by deployment and quarter-hour (every time zone's
# offset is a whole number of quarter-hours, so a quarter-hour lies in one local hour and one local
# day), and Python folds the quarter-hours into days, hours of the week, and the window. The figures
# are those of `cost_deployment` on the same rows (floats may differ in their last bits: the sums
# are taken in another order).

BUCKET_S = 900


@dataclass(slots=True)
class Bucket:
    """Sums over one deployment's minutes in one quarter-hour (or any union of quarter-hours)."""

    gpu_observed_s: float = 0.0
    gpu_idle_s: float = 0.0
    gpu_util_weighted: float = 0.0
    gpu_util_s: float = 0.0
    sm_active_weighted: float = 0.0
    sm_active_s: float = 0.0
    energy_j: float | None = None
    prompt_tokens: int = 0
    generation_tokens: int = 0
    server_observed_s: float = 0.0
    request_busy_weighted: float = 0.0
    request_busy_s: float = 0.0
    served_tokens: int = 0
    """Tokens of the minutes a server was observed in (the numerator of throughput_util)."""
    served_wall_s: float = 0.0

    def add(self, other: Bucket) -> None:
        self.gpu_observed_s += other.gpu_observed_s
        self.gpu_idle_s += other.gpu_idle_s
        self.gpu_util_weighted += other.gpu_util_weighted
        self.gpu_util_s += other.gpu_util_s
        self.sm_active_weighted += other.sm_active_weighted
        self.sm_active_s += other.sm_active_s
        if other.energy_j is not None:
            self.energy_j = (self.energy_j or 0.0) + other.energy_j
        self.prompt_tokens += other.prompt_tokens
        self.generation_tokens += other.generation_tokens
        self.server_observed_s += other.server_observed_s
        self.request_busy_weighted += other.request_busy_weighted
        self.request_busy_s += other.request_busy_s
        self.served_tokens += other.served_tokens
        self.served_wall_s += other.served_wall_s

    def measures(self, capacity_tokens_per_s: float | None) -> UtilizationMeasures:
        """The four measures over these minutes, as `costing.utilization_measures` defines them."""
        throughput = None
        if capacity_tokens_per_s and self.served_wall_s > 0:
            throughput = self.served_tokens / self.served_wall_s / capacity_tokens_per_s
        return UtilizationMeasures(
            gpu_util=_ratio(self.gpu_util_weighted, self.gpu_util_s),
            sm_active=_ratio(self.sm_active_weighted, self.sm_active_s),
            request_busy=_ratio(self.request_busy_weighted, self.request_busy_s),
            throughput_util=throughput,
        )


def _ratio(total: float, seconds: float) -> float | None:
    return total / seconds if seconds > 0 else None


def merged(buckets: Iterable[Bucket]) -> Bucket:
    total = Bucket()
    for bucket in buckets:
        total.add(bucket)
    return total


def _known(value: ColumnElement[Any], weight: ColumnElement[Any]) -> ColumnElement[Any]:
    """`weight` where the measure is known and weighs something, else 0 (costing's `_weighted`)."""
    return case((and_(value.is_not(None), weight > 0), weight), else_=0.0)


def _gpu_bucket_query(start_ts: float, end_ts: float, names: Sequence[str]) -> Select[Any]:
    g, dm = gpu_minutes_table, deployment_minutes_table
    util_s = _known(g.c.gpu_util, g.c.util_observed_s)
    sm_s = _known(g.c.sm_active, g.c.util_observed_s)
    # First per deployment-minute (the GROUP BY follows the (deployment, minute_ts) index: no sort),
    # then one join per deployment-minute, not per GPU-minute, for the idle rule.
    per_minute = (
        select(
            g.c.deployment.label("deployment"),
            g.c.minute_ts.label("minute_ts"),
            func.sum(g.c.observed_s).label("observed_s"),
            func.sum(g.c.idle_s).label("idle_s"),
            func.sum(func.coalesce(g.c.gpu_util, 0.0) * util_s).label("util_w"),
            func.sum(util_s).label("util_s"),
            func.sum(func.coalesce(g.c.sm_active, 0.0) * sm_s).label("sm_w"),
            func.sum(sm_s).label("sm_s"),
            func.sum(g.c.energy_j).label("energy_j"),
        )
        .where(g.c.minute_ts >= start_ts, g.c.minute_ts < end_ts, g.c.deployment.in_(names))
        .group_by(g.c.deployment, g.c.minute_ts)
        .subquery("per_minute")
    )
    m = per_minute.c
    bucket = (m.minute_ts - m.minute_ts % BUCKET_S).label("bucket")
    # The idle rule: no request running where the server is known, else under the idle threshold.
    idle = case((dm.c.request_busy.is_not(None), m.observed_s * (1 - dm.c.request_busy)), else_=m.idle_s)
    return (
        select(
            m.deployment,
            bucket,
            func.sum(m.observed_s),
            func.sum(idle),
            func.sum(m.util_w),
            func.sum(m.util_s),
            func.sum(m.sm_w),
            func.sum(m.sm_s),
            func.sum(m.energy_j),
        )
        .select_from(
            per_minute.outerjoin(dm, and_(dm.c.deployment == m.deployment, dm.c.minute_ts == m.minute_ts))
        )
        .group_by(m.deployment, bucket)
    )


def _server_bucket_query(start_ts: float, end_ts: float, names: Sequence[str]) -> Select[Any]:
    dm = deployment_minutes_table
    bucket = (dm.c.minute_ts - dm.c.minute_ts % BUCKET_S).label("bucket")
    served = dm.c.server_observed_s > 0
    busy_s = _known(dm.c.request_busy, dm.c.server_observed_s)
    instances = case((dm.c.instances > 1, dm.c.instances), else_=1)
    return (
        select(
            dm.c.deployment,
            bucket,
            func.sum(dm.c.prompt_tokens),
            func.sum(dm.c.generation_tokens),
            func.sum(dm.c.server_observed_s),
            func.sum(func.coalesce(dm.c.request_busy, 0.0) * busy_s),
            func.sum(busy_s),
            func.sum(case((served, dm.c.prompt_tokens + dm.c.generation_tokens), else_=0)),
            func.sum(case((served, dm.c.server_observed_s / instances), else_=0.0)),
        )
        .where(dm.c.minute_ts >= start_ts, dm.c.minute_ts < end_ts, dm.c.deployment.in_(names))
        .group_by(dm.c.deployment, bucket)
    )


def minute_buckets(
    store: Store, start_ts: float, end_ts: float, names: Sequence[str]
) -> dict[str, dict[int, Bucket]]:
    """Per deployment, per quarter-hour (its start, epoch seconds): the sums of its minutes."""
    result: dict[str, dict[int, Bucket]] = {name: {} for name in names}
    if not names:
        return result
    with store.engine.connect() as conn:
        for row in conn.execute(_gpu_bucket_query(start_ts, end_ts, names)):
            b = result[row[0]].setdefault(int(row[1]), Bucket())
            b.gpu_observed_s = float(row[2] or 0.0)
            b.gpu_idle_s = float(row[3] or 0.0)
            b.gpu_util_weighted, b.gpu_util_s = float(row[4] or 0.0), float(row[5] or 0.0)
            b.sm_active_weighted, b.sm_active_s = float(row[6] or 0.0), float(row[7] or 0.0)
            b.energy_j = None if row[8] is None else float(row[8])
        for row in conn.execute(_server_bucket_query(start_ts, end_ts, names)):
            b = result[row[0]].setdefault(int(row[1]), Bucket())
            b.prompt_tokens, b.generation_tokens = int(row[2] or 0), int(row[3] or 0)
            b.server_observed_s = float(row[4] or 0.0)
            b.request_busy_weighted, b.request_busy_s = float(row[5] or 0.0), float(row[6] or 0.0)
            b.served_tokens, b.served_wall_s = int(row[7] or 0), float(row[8] or 0.0)
    return result


def served_minutes(store: Store, start_ts: float, end_ts: float, name: str) -> list[tuple[int, int]]:
    """(minute_ts, tokens) of the minutes a server was observed in: for the measured capacity."""
    dm = deployment_minutes_table
    query = (
        select(dm.c.minute_ts, dm.c.prompt_tokens + dm.c.generation_tokens)
        .where(
            dm.c.deployment == name,
            dm.c.minute_ts >= start_ts,
            dm.c.minute_ts < end_ts,
            dm.c.server_observed_s > 0,
        )
        .order_by(dm.c.minute_ts)
    )
    with store.engine.connect() as conn:
        return [(int(ts), int(tokens)) for ts, tokens in conn.execute(query)]


def sustained_peak_tokens_per_s(
    minutes: Sequence[tuple[int, int]], window: int = MEASURED_CAPACITY_MINUTES
) -> float | None:
    """`costing.measured_capacity_tokens_per_s` over (minute_ts, tokens) pairs in time order."""
    best: float | None = None
    run: list[int] = []
    previous_ts: int | None = None
    for minute_ts, tokens in minutes:
        if previous_ts is not None and minute_ts != previous_ts + MINUTE_S:
            run = []
        run.append(tokens)
        previous_ts = minute_ts
        if len(run) >= window:
            rate = sum(run[-window:]) / (window * MINUTE_S)
            best = rate if best is None else max(best, rate)
    return best


def energy_j_by_local_day(buckets: Mapping[int, Bucket], tz: ZoneInfo) -> dict[date, float]:
    by_day: dict[date, float] = defaultdict(float)
    for bucket_ts, bucket in buckets.items():
        if bucket.energy_j is not None:
            by_day[datetime.fromtimestamp(bucket_ts, tz).date()] += bucket.energy_j
    return dict(by_day)


@dataclass(frozen=True, slots=True)
class AggregatedWindow:
    """`cost_window`'s result, and the quarter-hour sums it was drawn from (for per-day figures)."""

    window: WindowCost
    buckets: dict[str, dict[int, Bucket]]
    capacity_tokens_per_s: dict[str, float | None]


def cost_window_aggregated(
    store: Store,
    config: Config,
    start: datetime,
    end: datetime,
    api_catalog: ApiPriceCatalog,
    gpu_catalog: Sequence[GpuPrice],
    *,
    only: Sequence[str] | None = None,
) -> AggregatedWindow:
    """`cost_window` with its roll-ups summed in SQL: the same figures, for a fleet's month."""
    tz = config.tz
    if (end - start).total_seconds() <= 0:
        raise ValueError("the window must end after it starts")
    first, after_last = local_days(start, end, tz)
    billed = store.cost_lines(first, after_last)
    start_ts, end_ts = start.timestamp(), end.timestamp()
    chosen = [d for d in config.deployments if only is None or d.name in only]
    sums = minute_buckets(store, start_ts, end_ts, [d.name for d in chosen])
    costs: list[DeploymentCost] = []
    lines: list[CostLine] = []
    capacities: dict[str, float | None] = {}
    for deployment in chosen:
        buckets = sums[deployment.name]
        own = _rated_from_buckets(deployment, start, end, tz, gpu_catalog, buckets) or billed_to(
            billed, deployment
        )
        lines.extend(own)
        capacity = deployment.capacity_tokens_per_s
        source = "configured" if capacity is not None else None
        if capacity is None:
            capacity = sustained_peak_tokens_per_s(served_minutes(store, start_ts, end_ts, deployment.name))
            source = "measured" if capacity is not None else None
        capacities[deployment.name] = capacity
        costs.append(
            deployment_cost_from_sums(
                deployment=deployment,
                start=start,
                end=end,
                tz=tz,
                cost_lines=own,
                total=merged(buckets.values()),
                capacity_tokens_per_s=capacity,
                capacity_source=source,
                api_prices=_prices(api_catalog, deployment.compare_to),
                utilization_metric=config.rules.utilization_metric,
            )
        )
    if only is None:
        lines.extend(unattributed_lines(billed, config))
    return AggregatedWindow(
        window=WindowCost(start=start, end=end, deployments=costs, cost_lines=lines),
        buckets=sums,
        capacity_tokens_per_s=capacities,
    )


def _rated_from_buckets(
    deployment: DeploymentConfig,
    start: datetime,
    end: datetime,
    tz: ZoneInfo,
    gpu_catalog: Sequence[GpuPrice],
    buckets: Mapping[int, Bucket],
) -> list[CostLine]:
    first, after_last = local_days(start, end, tz)
    if isinstance(deployment.price, StaticPrice):
        lines = static_cost_lines(deployment, first, after_last, tz, gpu_catalog)
    elif isinstance(deployment.price, OnPremPrice):
        lines = onprem_cost_lines(deployment, first, after_last, tz, energy_j_by_local_day(buckets, tz))
    else:
        return []
    return _clip(lines, start, end, tz)


def billed_gpu_hours(cost_lines: Sequence[CostLine], window_s: float, billed_gpus: int) -> Decimal:
    """The cost lines' own GPU-hours where they state them, else the configured GPUs over the window."""
    stated = [line.gpu_hours for line in cost_lines if line.gpu_hours is not None]
    return sum_usd(stated) if stated else hours_from_seconds(window_s) * billed_gpus


def deployment_cost_from_sums(
    *,
    deployment: DeploymentConfig,
    start: datetime,
    end: datetime,
    tz: ZoneInfo,
    cost_lines: Sequence[CostLine],
    total: Bucket,
    capacity_tokens_per_s: float | None,
    capacity_source: str | None,
    api_prices: Sequence[ApiPrice],
    utilization_metric: UtilizationMetric,
) -> DeploymentCost:
    """`costing.cost_deployment`, from sums instead of rows."""
    window_s = (end - start).total_seconds()
    cost_usd = sum_usd(line.amount_usd for line in cost_lines)
    overhead_usd = prorate_monthly_usd(deployment.overheads.total_usd_month, start, end, tz)
    measures = total.measures(capacity_tokens_per_s)
    metric, utilization = measures.pick(utilization_metric)
    tco = cost_usd + overhead_usd
    hourly = tco / hours_from_seconds(window_s)
    prompt, generation = total.prompt_tokens, total.generation_tokens
    return DeploymentCost(
        deployment=deployment.name,
        start=start,
        end=end,
        cost_usd=cost_usd,
        overhead_usd=overhead_usd,
        hours=GpuHours(
            billed=billed_gpu_hours(cost_lines, window_s, deployment.billed_gpus),
            observed=hours_from_seconds(total.gpu_observed_s),
            idle=hours_from_seconds(total.gpu_idle_s),
        ),
        measures=measures,
        utilization_metric=metric,
        utilization=utilization,
        prompt_tokens=prompt,
        generation_tokens=generation,
        capacity_tokens_per_s=capacity_tokens_per_s,
        capacity_source=capacity_source,
        apis=(
            compare_apis(
                prompt, generation, tco, hourly * HOURS_PER_MONTH, hourly, capacity_tokens_per_s, api_prices
            )
            if served_tokens_known(prompt, generation, measures)
            else []
        ),
        estimated=any(line.estimated or line.basis.value == "list" for line in cost_lines),
    )
