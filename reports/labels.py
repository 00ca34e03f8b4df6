"""Words every format of the report shares, so that none can say more than the figures support.

A filtered report never claims to reconcile; a month in progress says "so far" and ends in the
configured zone; a month under `report.complete_coverage` is not "complete"; a saving says what it
is over; the hours without data are shown as a gap, never as zero tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from auditor.bills import is_bill_priced
from auditor.costing import DeploymentCost, Saving, sum_usd
from auditor.model import CostLine
from auditor.units import allocate_cents, cents, format_saving, format_share, format_usd
from reports.monthly import MonthReport


def report_state(report: MonthReport) -> str:
    """`complete month, UTC`, `partial month: so far, up to 2026-10-14 09:30 America/Los_Angeles`, …"""
    if report.partial:
        return f"partial month: so far, up to {report.local_end:%Y-%m-%d %H:%M} {report.timezone}"
    if not report.complete:
        return (
            f"closed month, {report.timezone}; not complete: some deployment was observed under "
            f"{format_share(report.complete_coverage)} of its paid-for hours"
        )
    return f"complete month, {report.timezone}"


def total_line(report: MonthReport) -> str:
    so_far = " so far" if report.partial else ""
    shown = shown_costs(report)
    if report.filtered_to:
        names = ", ".join(report.filtered_to)
        return (
            f"filtered to {names} (of {format_usd(report.unfiltered_total_usd)} total): "
            f"{format_usd(shown.total)}{so_far}"
        )
    return (
        f"total billed{so_far} {format_usd(shown.total)} (reconciles with the cost lines), "
        f"of which unattributed {format_usd(shown.unattributed)}"
    )


def saving_words(saving: Saving) -> str:
    return format_saving(saving)


def gap_text(cost: DeploymentCost) -> str | None:
    """ "93.2 hours unobserved: $412.80 of cost without token data", or None when fully observed."""
    coverage = cost.coverage
    if coverage is None or coverage >= 1 or cost.active_hours <= 0:
        return None
    unobserved_h = cost.active_hours - cost.observed_hours
    return (
        f"{unobserved_h:,.1f} hours unobserved ({format_share(1 - coverage)}):"
        f" {format_usd(cost.unobserved_cost_usd if cost.cost_known else None)} of cost without token data;"
        " $/Mtok and API comparisons use the observed hours"
    )


@dataclass(frozen=True, slots=True)
class ShownCosts:
    """The report's costs as every format shows them: rounded once, parts summing to the total."""

    deployments: dict[str, Decimal | None]
    """None: a bill-priced deployment with no billing data (shown "—", never $0.00)."""
    unattributed: Decimal
    total: Decimal
    unattributed_lines: list[Decimal]
    """Each unattributed line, shown so that they sum to `unattributed`."""
    overheads: dict[str, Decimal]

    def tco(self, name: str) -> Decimal | None:
        """A deployment's TCO as shown: its shown cost plus its shown overheads (None: no billing data)."""
        cost = self.deployments[name]
        return None if cost is None else cost + self.overheads[name]


def shown_costs(report: MonthReport) -> ShownCosts:
    known = [d for d in report.deployments if d.cost.cost_known]
    parts, total = allocate_cents([*(d.cost.cost_usd for d in known), report.unattributed_cost_usd])
    lines, _ = allocate_cents([line.amount_usd for line in report.unattributed_lines])
    deployments: dict[str, Decimal | None] = {d.name: None for d in report.deployments}
    deployments.update(zip([d.name for d in known], parts[: len(known)], strict=True))
    return ShownCosts(
        deployments=deployments,
        unattributed=parts[-1],
        total=total,
        unattributed_lines=lines,
        overheads={d.name: cents(d.cost.overhead_usd) for d in report.deployments},
    )


def header_notes(report: MonthReport) -> list[str]:
    """What the header says besides the total: the deployments without billing data and the command
    that fixes it, and which bill cost is counted (where any deployment is priced by a bill)."""
    notes = []
    if report.no_billing_data_text:
        notes.append(report.no_billing_data_text)
    if any(is_bill_priced(d.config) for d in report.deployments) or any(
        line.effective_cost is not None for line in report.cost_lines
    ):
        notes.append(report.cost_metric_text)
    notes.extend(bill_reconciliations(report))
    return notes


def bill_reconciliations(report: MonthReport) -> list[str]:
    """Per bill source: its lines in the month = the deployments' share + the unattributed, to the cent
    (`bill aws-focus: $2,773.23 = qwen-32b $2,700.80 + unattributed $72.43`)."""
    names = {d.name for d in report.deployments}
    by_source: dict[str, list[CostLine]] = {}
    for line in report.cost_lines:
        if line.effective_cost is not None or line.billing_period_start_ts is not None:
            by_source.setdefault(line.source, []).append(line)
    notes = []
    for source, lines in sorted(by_source.items()):
        owners = sorted({x.deployment for x in lines if x.deployment in names}, key=str)
        amounts = [sum_usd(x.amount_usd for x in lines if x.deployment == o) for o in owners]
        amounts.append(sum_usd(x.amount_usd for x in lines if x.deployment not in names))
        shown, total = allocate_cents(amounts)
        parts = [f"{o} {format_usd(v)}" for o, v in zip(owners, shown, strict=False)]
        parts.append(f"unattributed {format_usd(shown[-1])}")
        notes.append(f"bill {source}: {format_usd(total)} = " + " + ".join(parts))
    return notes
