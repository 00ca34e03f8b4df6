"""`auditor billing sync` for a person: per source, what was read and what it cost, then the bill's GPU
lines by deployment (money to the cent once, the parts summing to the total shown)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from auditor.billing_result import BillingSyncResult, SyncedSource
from auditor.model import COST_METRIC_COLUMNS, CostMetric
from auditor.units import allocate_cents, format_usd


def _read(source: SyncedSource) -> str:
    if source.first_day is not None and source.last_day is not None:
        return f"{source.days_read} days read ({source.first_day} … {source.last_day})"
    periods = ", ".join(f"{p:%Y-%m}" for p in source.billing_periods) or "none"
    return f"billing periods {periods}"


def _paid(source: SyncedSource) -> str:
    if source.kind != "aws_cost_explorer":
        return "no paid requests"
    return f"{source.requests} paid request(s) ({format_usd(source.requests_usd)})"


def billing_sync_text(result: BillingSyncResult, out: Console) -> None:
    metric = CostMetric(result.cost_metric)
    for source in result.sources:
        lines = source.lines
        changed = lines.added or lines.removed or lines.changed
        estimated = f"; {source.estimated_days} days still estimated" if source.estimated_days else ""
        out.print(
            f"{source.source}: {_read(source)}, {source.rows_read:,} rows, {_paid(source)}; lines "
            f"{lines.added} added, {lines.removed} removed, {lines.changed} changed, {lines.unchanged} "
            f"unchanged{'' if changed else ' (nothing changed)'}{estimated}",
            highlight=False,
            soft_wrap=True,
        )
        for note in source.notes:
            out.print(f"  note: {note}", highlight=False, soft_wrap=True)
        names = list(source.by_deployment)
        exact = [source.by_deployment[n] for n in names] + [source.unattributed_usd]
        if not names and not source.unattributed_usd:
            continue
        shown, total = allocate_cents(exact)
        estimate = " — list-price ESTIMATE" if source.estimate else ""
        table = Table(
            title=f"{source.source} by deployment: {COST_METRIC_COLUMNS[metric]} "
            f"(billing.cost_metric = {metric.value}){estimate}",
            title_justify="left",
        )
        table.add_column("deployment")
        table.add_column("cost", justify="right")
        for name, amount in zip([*names, "unattributed"], shown, strict=True):
            table.add_row(name, format_usd(amount))
        table.add_row("total", format_usd(total), end_section=True)
        out.print(table)
