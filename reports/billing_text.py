"""The billing commands for a person: `billing sync` per source (what was read and what it cost, then the
bill's GPU lines by deployment), `billing import` and `billing status` (`auditor.bills`): money to the
cent once, the parts summing to the total shown, unknown as `—`, the cost counted named above every
figure."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from auditor.billing_result import BillingSyncResult, SyncedSource
from auditor.bills import BillImportResult, BillingStatusResult, cost_metric_words
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


def _line(out: Console, text: str) -> None:
    out.print(text, highlight=False, markup=False, soft_wrap=True)


def bill_import_text(result: BillImportResult, out: Console) -> None:
    lines = result.lines
    periods = ", ".join(f"{p:%Y-%m}" for p in result.billing_periods) or "none"
    nothing = "" if lines.added or lines.removed or lines.changed else " (nothing changed)"
    _line(
        out,
        f"{result.source}: {result.rows_read:,} rows read, {result.gpu_rows:,} GPU rows, billing periods "
        f"{periods}; lines {lines.added} added, {lines.removed} removed, {lines.changed} changed, "
        f"{lines.unchanged} unchanged{nothing}",
    )
    exact = [d.cost_usd for d in result.deployments] + [result.unattributed_usd]
    shown, total = allocate_cents(exact)
    table = Table(title=f"GPU lines by deployment: {cost_metric_words(result.cost_metric)}")
    table.add_column("deployment")
    table.add_column("cost", justify="right")
    for name, amount in zip(
        [*(d.deployment for d in result.deployments), "unattributed"], shown, strict=True
    ):
        table.add_row(name, format_usd(amount))
    table.add_row("total (the bill's GPU lines)", format_usd(total), end_section=True)
    out.print(table)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86_400:.0f} days ago"


def billing_status_text(result: BillingStatusResult, out: Console) -> None:
    if result.no_billing_data:
        names = ", ".join(result.no_billing_data)
        _line(out, f"no billing data for {names} (cost unknown, not $0; no verdict): run `{result.fix}`")
    if not result.sources:
        _line(
            out,
            f"no billing source configured and no bill imported: run `{result.fix}`, "
            "or add [[billing.sources]]",
        )
        return
    table = Table(title=f"Billing sources: {cost_metric_words(result.cost_metric)}")
    for column in ("source", "kind", "last sync", "days covered", "still estimated", "lines", "unattributed"):
        right = column in {"lines", "unattributed", "still estimated"}
        table.add_column(column, justify="right" if right else "left")
    for s in result.sources:
        covered = "—" if s.first_day is None else f"{s.first_day} … {s.last_day} ({s.days} days)"
        synced = "never" if s.last_sync is None else _ago((result.now - s.last_sync).total_seconds())
        table.add_row(
            s.name,
            (s.kind or "—") + ("" if s.configured else " (not configured)"),
            synced,
            covered,
            f"{s.estimated_days} days",
            f"{s.lines:,}",
            format_usd(s.unattributed_usd),
        )
    out.print(table)
