"""Cost lines from configured rates: a static hourly price, or owned (on-prem) hardware.

Cloud bills come from their collectors; these are the deployments whose price the config states.
A static rate bills every hour of every day, idle or not: that is what a reserved GPU costs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import date, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from auditor.config import DeploymentConfig, OnPremPrice, StaticPrice
from auditor.costing import day_hours
from auditor.gpu_prices import GpuPrice, find_gpu_price
from auditor.model import CostBasis, CostLine

JOULES_PER_KWH = Decimal(3_600_000)


class RateError(ValueError):
    """A configured rate cannot be priced (an instance type the catalog does not know, say)."""


def gpu_hourly_usd(price: StaticPrice, catalog: Sequence[GpuPrice]) -> Decimal:
    """The static price per GPU-hour, from the rate given or the catalog's instance price."""
    if price.gpu_hourly_usd is not None:
        return price.gpu_hourly_usd
    catalog_row = None
    if price.instance_type is not None:
        catalog_row = find_gpu_price(catalog, price.instance_type, pricing=price.pricing)
    instance_hourly = price.instance_hourly_usd
    if instance_hourly is None:
        if catalog_row is None:
            raise RateError("no rate: set gpu_hourly_usd, instance_hourly_usd or instance_type")
        instance_hourly = catalog_row.instance_hourly_usd
    gpus = price.gpus_per_instance or (catalog_row.gpus if catalog_row else None)
    if not gpus:
        raise RateError("instance_hourly_usd needs gpus_per_instance")
    return instance_hourly / gpus


def days(start_day: date, end_day: date) -> Iterator[date]:
    """Each day in [start_day, end_day)."""
    day = start_day
    while day < end_day:
        yield day
        day += timedelta(days=1)


def static_cost_lines(
    deployment: DeploymentConfig,
    start_day: date,
    end_day: date,
    tz: ZoneInfo,
    catalog: Sequence[GpuPrice],
) -> list[CostLine]:
    """One line a day: the deployment's GPUs × the hours of that day (in tz) × the GPU-hour rate."""
    if not isinstance(deployment.price, StaticPrice):
        raise RateError(f"deployment {deployment.name!r} is not priced by a static rate")
    rate = gpu_hourly_usd(deployment.price, catalog)
    lines = []
    for day in days(start_day, end_day):
        gpu_hours = day_hours(day, tz) * deployment.billed_gpus
        lines.append(
            CostLine(
                day=day,
                source="static",
                account="static",
                resource=deployment.name,
                usage_type=f"{deployment.gpu_type} GPU-hours",
                amount_usd=rate * gpu_hours,
                deployment=deployment.name,
                usage_hours=gpu_hours,
                gpu_hours=gpu_hours,
                basis=CostBasis.LIST,
            )
        )
    return lines


def onprem_cost_lines(
    deployment: DeploymentConfig,
    start_day: date,
    end_day: date,
    tz: ZoneInfo,
    energy_j_by_day: Mapping[date, float],
) -> list[CostLine]:
    """Owned GPUs: the purchase spread evenly over the amortization months (each month's share split
    over its days), hosting likewise, and each day's measured energy × $/kWh × PUE."""
    price = deployment.price
    if not isinstance(price, OnPremPrice):
        raise RateError(f"deployment {deployment.name!r} is not priced as on-prem hardware")
    monthly = price.purchase_usd / price.amortization_months + price.hosting_usd_month
    lines = []
    for day in days(start_day, end_day):
        gpu_hours = day_hours(day, tz) * deployment.billed_gpus
        lines.append(
            CostLine(
                day=day,
                source="onprem",
                account="onprem",
                resource=deployment.name,
                usage_type="amortization and hosting",
                amount_usd=monthly / _days_in_month(day),
                deployment=deployment.name,
                usage_hours=gpu_hours,
                gpu_hours=gpu_hours,
                basis=CostBasis.AMORTIZED,
            )
        )
        energy_j = energy_j_by_day.get(day)
        if energy_j:
            kwh = Decimal(repr(float(energy_j))) / JOULES_PER_KWH
            lines.append(
                CostLine(
                    day=day,
                    source="onprem",
                    account="onprem",
                    resource=deployment.name,
                    usage_type="energy",
                    amount_usd=kwh * price.kwh_usd * Decimal(repr(price.pue)),
                    deployment=deployment.name,
                    usage_hours=kwh,
                    basis=CostBasis.AMORTIZED,
                )
            )
    return lines


def _days_in_month(day: date) -> int:
    following = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return (following - day.replace(day=1)).days
