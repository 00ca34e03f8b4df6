"""Cost a window for every configured deployment, from the store and the config.

This is where the store's roll-ups and cost lines meet the config's deployments and prices: the
one entry point rules and reports use. Static and on-prem deployments get their cost lines from
their configured rates (so they need no billing sync); cloud deployments from the synced bill.
Cost lines attributed to no configured deployment are *unattributed*: shown, never dropped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from auditor.config import Config, DeploymentConfig, OnPremPrice, StaticPrice
from auditor.costing import (
    MEASURED_CAPACITY_MINUTES,
    MICROHOUR,
    SECONDS_PER_HOUR,
    DeploymentCost,
    GpuHours,
    compare_apis,
    elapsed_s,
    hours_from_seconds,
    prorate_monthly_usd,
    run_totals,
    served_tokens_known,
    sum_usd,
)
from auditor.gpu_prices import GpuPrice
from auditor.model import MINUTE_S, CostLine, UtilizationMetric
from auditor.prices import ApiPrice, ApiPriceCatalog
from auditor.rates import onprem_cost_lines, static_cost_lines
from auditor.store import Bucket as Bucket
from auditor.store import Store
from auditor.store import merged as merged


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
    def has_data(self) -> bool:
        """Something was paid for or billed in the window: a deployment's active period overlaps it, or
        a cost line falls in it. Without either, a report of it would invent its figures ("no data")."""
        return bool(self.cost_lines) or any(d.active_start is not None for d in self.deployments)

    @property
    def unattributed_usd(self) -> Decimal:
        names = {d.deployment for d in self.deployments}
        return sum_usd(line.amount_usd for line in self.cost_lines if line.deployment not in names)


def local_days(start: datetime, end: datetime, tz: ZoneInfo) -> tuple[date, date]:
    """The calendar days (in tz) the window touches, as [first, last + 1)."""
    first = start.astimezone(tz).date()
    last_instant = end - timedelta(microseconds=1)
    return first, last_instant.astimezone(tz).date() + timedelta(days=1)


_MICROSECOND = timedelta(microseconds=1)


def _day_fraction(day: date, start: datetime, end: datetime, tz: ZoneInfo) -> Decimal:
    """The share of a local day inside [start, end): 1 for whole days, less at a window's ragged ends."""
    day_start = datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)
    following = day + timedelta(days=1)
    day_end = datetime(following.year, following.month, following.day, tzinfo=tz).astimezone(UTC)
    # In UTC and in microseconds: exact, and not the wall-clock difference Python takes within one zone.
    inside = min(end.astimezone(UTC), day_end) - max(start.astimezone(UTC), day_start)
    return Decimal(max(inside // _MICROSECOND, 0)) / Decimal((day_end - day_start) // _MICROSECOND)


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


def billed_to(billed: Sequence[CostLine], deployment: DeploymentConfig) -> list[CostLine]:
    """The synced bill's lines attributed to a deployment (one priced by a cloud bill, not a rate)."""
    return [line for line in billed if line.deployment == deployment.name]


def unattributed_lines(billed: Sequence[CostLine], config: Config) -> list[CostLine]:
    """Lines attributed to no configured deployment: shown in every total, never dropped."""
    configured = {d.name for d in config.deployments}
    return [line for line in billed if line.deployment not in configured]


def _prices(catalog: ApiPriceCatalog, refs: Sequence[str]) -> list[ApiPrice]:
    # `auditor config check` has already rejected unknown names; prices are looked up again here
    # because a catalog refresh may have changed them since.
    return [catalog.get(ref) for ref in refs]


def sustained_peak_tokens_per_s(
    minutes: Sequence[tuple[int, int]], window: int = MEASURED_CAPACITY_MINUTES
) -> float | None:
    """The sustained peak: the highest mean tokens/s over `window` consecutive observed minutes, from
    (minute_ts, tokens) pairs in time order.

    A lower bound of the true capacity (the deployment may never have been pushed to its limit);
    None when fewer consecutive minutes were observed."""
    best = max((tokens for _, tokens in run_totals(minutes, window)), default=None)
    return None if best is None else best / (window * MINUTE_S)


def energy_j_by_local_day(buckets: Mapping[int, Bucket], tz: ZoneInfo) -> dict[date, float]:
    by_day: dict[date, float] = defaultdict(float)
    for bucket_ts, bucket in buckets.items():
        if bucket.energy_j is not None:
            by_day[datetime.fromtimestamp(bucket_ts, tz).date()] += bucket.energy_j
    return dict(by_day)


@dataclass(frozen=True, slots=True)
class AggregatedWindow:
    """`cost_window`'s result: the costing, and the quarter-hour sums it was drawn from (per-day figures)."""

    window: WindowCost
    buckets: dict[str, dict[int, Bucket]]
    capacity_tokens_per_s: dict[str, float | None]


def cost_window(
    store: Store,
    config: Config,
    start: datetime,
    end: datetime,
    api_catalog: ApiPriceCatalog,
    gpu_catalog: Sequence[GpuPrice],
    *,
    only: Sequence[str] | None = None,
) -> AggregatedWindow:
    """Cost every configured deployment (or those named in `only`) over [start, end).

    The one costing path: the report, the rules, the digest, `status` and the exporter all take their
    figures from here. The roll-ups are summed in SQL (the store's `window_buckets`): a fleet's month is
    millions of minute rows. A static or on-prem rate accrues only inside the deployment's active
    period (`active_from`/`active_until`, else its first and last observed minute); a bill's lines are
    taken as they are."""
    tz = config.tz
    if elapsed_s(start, end) <= 0:
        raise ValueError("the window must end after it starts")
    first, after_last = local_days(start, end, tz)
    # The bill's lines, each counting the configured FOCUS cost (EffectiveCost by default).
    metric = config.billing.cost_metric
    billed = [line.costed(metric) for line in store.cost_lines(first, after_last)]
    start_ts, end_ts = start.timestamp(), end.timestamp()
    chosen = [d for d in config.deployments if only is None or d.name in only]
    names = [d.name for d in chosen]
    sums = store.window_buckets(start_ts, end_ts, names)
    bounds = store.activity_bounds(names)
    costs: list[DeploymentCost] = []
    lines: list[CostLine] = []
    capacities: dict[str, float | None] = {}
    for deployment in chosen:
        buckets = sums[deployment.name]
        active = active_window(deployment, bounds.get(deployment.name), start, end, tz)
        rated = is_rated(deployment)
        if rated:
            own = [] if active is None else _rated_from_buckets(deployment, *active, tz, gpu_catalog, buckets)
        else:
            own = billed_to(billed, deployment)
        lines.extend(own)
        capacity = deployment.capacity_tokens_per_s
        source = "configured" if capacity is not None else None
        if capacity is None:
            peak = store.served_peak_tokens(start_ts, end_ts, deployment.name)
            capacity = None if peak is None else peak / (MEASURED_CAPACITY_MINUTES * MINUTE_S)
            source = "measured" if capacity is not None else None
        capacities[deployment.name] = capacity
        costs.append(
            deployment_cost_from_sums(
                deployment=deployment,
                start=start,
                end=end,
                tz=tz,
                active=active,
                cost_lines=own,
                cost_known=rated or bool(own),
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


def is_rated(deployment: DeploymentConfig) -> bool:
    """Priced by a configured rate (static, on-prem), not by a synced bill."""
    return isinstance(deployment.price, StaticPrice | OnPremPrice)


def _instant(value: datetime | date, tz: ZoneInfo) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime(value.year, value.month, value.day, tzinfo=tz)


def active_window(
    deployment: DeploymentConfig,
    observed: tuple[int, int] | None,
    start: datetime,
    end: datetime,
    tz: ZoneInfo,
) -> tuple[datetime, datetime] | None:
    """The part of [start, end) inside the deployment's active period, or None where there is none.

    The period runs from `active_from` (else the first observed minute) to `active_until` (else the
    end of the last observed minute: now, while the daemon runs). Without either, nothing was paid for
    as far as the auditor knows: no cost is invented."""
    since = _instant(deployment.active_from, tz) if deployment.active_from is not None else None
    until = _instant(deployment.active_until, tz) if deployment.active_until is not None else None
    if observed is not None:
        since = since or datetime.fromtimestamp(observed[0], UTC)
        until = until or datetime.fromtimestamp(observed[1], UTC)
    if since is None or until is None:
        return None
    lo = max(start.astimezone(UTC), since.astimezone(UTC))
    hi = min(end.astimezone(UTC), until.astimezone(UTC))
    return (lo, hi) if lo < hi else None


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


def billed_gpu_hours(cost_lines: Sequence[CostLine], active_s: Decimal, billed_gpus: int) -> Decimal:
    """The cost lines' own GPU-hours where they state them, else the configured GPUs over the active time."""
    stated = [line.gpu_hours for line in cost_lines if line.gpu_hours is not None]
    return sum_usd(stated) if stated else (active_s / SECONDS_PER_HOUR).quantize(MICROHOUR) * billed_gpus


def deployment_cost_from_sums(
    *,
    deployment: DeploymentConfig,
    start: datetime,
    end: datetime,
    tz: ZoneInfo,
    active: tuple[datetime, datetime] | None,
    cost_lines: Sequence[CostLine],
    cost_known: bool,
    total: Bucket,
    capacity_tokens_per_s: float | None,
    capacity_source: str | None,
    api_prices: Sequence[ApiPrice],
    utilization_metric: UtilizationMetric,
) -> DeploymentCost:
    """One deployment over [start, end), from its cost lines and the sums of its roll-ups.

    Billed GPU-hours are the cost lines' own where they state them, else the configured GPU count
    over the active part of the window. Overheads accrue over the active part too."""
    active_s = elapsed_s(*active) if active is not None else Decimal(0)
    cost_usd = sum_usd(line.amount_usd for line in cost_lines)
    overhead_usd = (
        prorate_monthly_usd(deployment.overheads.total_usd_month, *active, tz) if active else Decimal(0)
    )
    measures = total.measures(capacity_tokens_per_s)
    metric, utilization = measures.pick(utilization_metric)
    prompt, generation = total.prompt_tokens, total.generation_tokens
    cost = DeploymentCost(
        deployment=deployment.name,
        start=start,
        end=end,
        tz=tz,
        active_start=active[0] if active else None,
        active_end=active[1] if active else None,
        cost_usd=cost_usd,
        cost_known=cost_known,
        overhead_usd=overhead_usd,
        hours=GpuHours(
            billed=billed_gpu_hours(cost_lines, active_s, deployment.billed_gpus),
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
        estimated=any(line.estimated or line.basis.value == "list" for line in cost_lines),
        prefill_s=total.prefill_s,
        decode_s=total.decode_s,
    )
    if not (served_tokens_known(prompt, generation, measures) and cost_known):
        return cost
    # The rate while paid for, over a calendar month of real hours: break-even volumes and projections.
    active_hours = cost.active_hours
    hourly = cost.tco_usd / active_hours if active_hours > 0 else Decimal(0)
    apis = compare_apis(
        prompt,
        generation,
        cost.observed_tco_usd,
        hourly * cost.month_hours,
        hourly,
        capacity_tokens_per_s,
        api_prices,
    )
    return replace(cost, apis=apis)
