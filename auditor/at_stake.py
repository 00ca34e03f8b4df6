"""The total at stake of a list of findings: what a finance reader may add up.

A merged list (`rules.merge`: one action per deployment) adds up its recommended savings, each
deployment's at most what it costs a month, so the total can never exceed what the deployments cost.
Runaway spend is money *above* the usual cost, if it continues: shown beside the total, never in it;
a margin (keep self-hosting) is not money at stake at all.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from auditor.model import SAVING_ACTIONS, Action, Finding
from auditor.units import format_usd


@dataclass(frozen=True, slots=True)
class AtStake:
    """The total a list of findings puts at stake: what a finance reader may add up."""

    usd_per_month: Decimal
    """The recommended savings, one action per deployment, each deployment at most what it costs."""
    cost_usd_per_month: Decimal
    """What the deployments with a recommended saving cost a month (the ceiling of the total)."""
    deployments: int
    capped: tuple[str, ...]
    """Deployments whose saving was larger than their cost, counted at their cost."""
    overspend_usd_per_month: Decimal
    """Runaway spend above the usual cost, if it continues: beside the total, not in it."""


def at_stake(findings: Sequence[Finding]) -> AtStake:
    """The total of a merged list: one saving per deployment, capped at what the deployment costs."""
    saving: dict[str, Decimal] = defaultdict(Decimal)
    ceiling: dict[str, Decimal | None] = {}
    overspend = Decimal(0)
    for f in findings:
        if not f.verdict or f.usd_per_month is None or f.usd_per_month <= 0:
            continue
        if f.action is Action.STOP_OVERSPEND:
            overspend += f.usd_per_month
            continue
        if f.action not in SAVING_ACTIONS:
            continue
        owner = f.deployment or f.subject
        saving[owner] += f.usd_per_month
        if f.monthly_cost_usd is not None:
            ceiling[owner] = f.monthly_cost_usd
        else:
            ceiling.setdefault(owner, None)
    total = Decimal(0)
    cost = Decimal(0)
    capped: list[str] = []
    for owner, usd in sorted(saving.items()):
        limit = ceiling.get(owner)
        if limit is not None:
            cost += limit
            if usd > limit:
                usd = limit
                capped.append(owner)
        total += usd
    return AtStake(
        usd_per_month=total,
        cost_usd_per_month=cost,
        deployments=len(saving),
        capped=tuple(capped),
        overspend_usd_per_month=overspend,
    )


def at_stake_line(stake: AtStake) -> str:
    """The line every list of findings ends with."""
    if stake.deployments == 0:
        line = "Total at stake: $0.00/month (no saving recommended)"
    else:
        of = (
            f" of the {format_usd(stake.cost_usd_per_month)}/month they cost"
            if stake.cost_usd_per_month
            else ""
        )
        line = (
            f"Total at stake: {format_usd(stake.usd_per_month)}/month across {stake.deployments} "
            f"deployment{'s' if stake.deployments > 1 else ''}{of}; one action per deployment, "
            "alternatives not added"
        )
        if stake.capped:
            line += f" (capped at the cost of {', '.join(stake.capped)})"
    if stake.overspend_usd_per_month:
        line += (
            f". Runaway spend, if it continues: {format_usd(stake.overspend_usd_per_month)}/month more "
            "(not in the total)"
        )
    return line + "."
