"""`auditor breakeven`'s judgement: GPUs billed by whole instances, and the verdict sentence.

The arithmetic is `auditor.costing.WhatIf`; this module says what it means for the reader.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from auditor.costing import ApiComparison, WhatIf
from auditor.gpu_prices import GpuPrice
from auditor.units import format_tokens, format_usd


@dataclass(frozen=True, slots=True)
class InstanceBilling:
    """GPUs priced from a catalog instance: instances are billed whole."""

    row: GpuPrice
    instances: int

    @property
    def gpus(self) -> int:
        return self.instances * self.row.gpus

    def notes(self, gpus_asked: int | None) -> list[str]:
        row, notes = self.row, []
        if gpus_asked is not None and gpus_asked % row.gpus:
            notes.append(
                f"{row.instance_type} has {row.gpus} GPUs and is billed whole: {self.instances} instance(s), "
                f"{self.gpus} GPUs."
            )
        notes.append(
            f"{row.provider} {row.instance_type} ({row.pricing}, {row.region}): "
            f"{format_usd(row.instance_hourly_usd)}/h, {format_usd(row.gpu_hourly_usd)} per GPU-hour, "
            f"as of {row.as_of.isoformat()} ({row.source_url})"
        )
        return notes


def instance_billing(row: GpuPrice, gpus: int | None) -> InstanceBilling:
    """One instance when no GPU count is asked, else enough whole instances to hold `gpus`."""
    return InstanceBilling(row, 1 if gpus is None else math.ceil(gpus / row.gpus))


def verdict(what_if: WhatIf, comparisons: Sequence[ApiComparison]) -> str:
    """One sentence: the cheapest API against self-hosting's TCO at these volumes, and by how much."""
    volume = format_tokens(what_if.prompt_tokens + what_if.generation_tokens)
    cheapest = min(comparisons, key=lambda c: c.usd)
    tco = what_if.monthly_tco_usd
    name = cheapest.price.ref
    if cheapest.usd < tco:
        breakeven = cheapest.breakeven_tokens_per_month
        where = f"; self-hosting breaks even at {format_tokens(breakeven)} tokens/month" if breakeven else ""
        return (
            f"At {volume} tokens/month, {name} is cheaper: {format_usd(cheapest.usd)} against "
            f"{format_usd(tco)} self-hosted (TCO), saving {format_usd(tco - cheapest.usd)}/month{where}."
        )
    return (
        f"At {volume} tokens/month, self-hosting is cheaper than every API compared: "
        f"{format_usd(tco)} (TCO) against {format_usd(cheapest.usd)} on the cheapest, {name}, "
        f"saving {format_usd(cheapest.usd - tco)}/month."
    )
