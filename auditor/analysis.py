"""Cost a window for every configured deployment, from the store and the config.

This is where the store's roll-ups and cost lines meet the config's deployments and prices: the
one entry point rules and reports use. Static and on-prem deployments get their cost lines from
their configured rates (so they need no billing sync); cloud deployments from the synced bill.
Cost lines attributed to no configured deployment are *unattributed*: shown, never dropped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from auditor.config import Config, DeploymentConfig, OnPremPrice, StaticPrice
from auditor.costing import DeploymentCost, cost_deployment, sum_usd
from auditor.gpu_prices import GpuPrice
from auditor.model import CostLine, GpuMinute
from auditor.prices import ApiPrice, ApiPriceCatalog
from auditor.rates import onprem_cost_lines, static_cost_lines
from auditor.store import Store


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
    return Decimal(max(int(inside.total_seconds()), 0)) / Decimal(int((day_end - day_start).total_seconds()))


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
    """Cost every configured deployment (or those named in `only`) over [start, end)."""
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
        own = rated_cost_lines(deployment, start, end, tz, gpu_catalog, gpu_minutes) or [
            line for line in billed if line.deployment == deployment.name
        ]
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
        configured = {d.name for d in config.deployments}
        lines.extend(line for line in billed if line.deployment not in configured)
    return WindowCost(start=start, end=end, deployments=costs, cost_lines=lines)


def _prices(catalog: ApiPriceCatalog, refs: Sequence[str]) -> list[ApiPrice]:
    # `auditor config check` has already rejected unknown names; prices are looked up again here
    # because a catalog refresh may have changed them since.
    return [catalog.get(ref) for ref in refs]
