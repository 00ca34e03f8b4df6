"""`auditor billing`: cloud bills in: import FOCUS files, and what the store holds of each source.

`billing import FILE…` reads FOCUS 1.0-1.2 exports (CSV, CSV.gz, Parquet, or folders of them), keeps
their GPU lines, attributes them to deployments and replaces each billing period they hold; `billing
status` shows, per source, the last sync, the days covered and still estimated, and what is
unattributed. Every figure says which cost it counts (`billing.cost_metric`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from auditor.bills import billing_fix_command, cost_metric_words, is_bill_priced
from auditor.cli.common import (
    CONTEXT,
    ConfigOption,
    JsonOption,
    app,
    console,
    gpu_catalog,
    open_store,
    program,
    require_config,
    warn,
)
from auditor.config import Config
from auditor.store import Store
from auditor.units import allocate_cents, format_usd
from collectors.focus_sources import BillingResult, import_files, import_source_name

billing_app = typer.Typer(
    help="Cloud bills: import FOCUS files, and what the store holds of each billing source.",
    no_args_is_help=True,
    context_settings=CONTEXT,
)
app.add_typer(billing_app, name="billing")


def metric_words(config: Config) -> str:
    """The cost every billing figure counts, as reports name it."""
    return cost_metric_words(config.billing.cost_metric)


def _usd(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def result_json(result: BillingResult, config: Config) -> dict[str, Any]:
    return {
        "source": result.source,
        "kind": result.kind,
        "origin": result.origin,
        "cost_metric": config.billing.cost_metric.value,
        "rows_read": result.rows_read,
        "gpu_rows": result.gpu_rows,
        "billing_periods": [p.isoformat() for p in result.periods],
        "lines": {
            "added": result.change.added,
            "removed": result.change.removed,
            "changed": result.change.changed,
            "unchanged": result.change.unchanged,
        },
        "gpu_lines_usd": _usd(result.gpu_lines_usd),
        "by_deployment": {name: _usd(v) for name, v in result.usd_by_deployment.items() if name is not None},
        "unattributed_usd": _usd(result.usd_by_deployment.get(None, Decimal(0))),
        "warnings": result.warnings,
    }


def print_result(result: BillingResult, config: Config) -> None:
    """A sync's or an import's summary: rows read, lines changed, $ by deployment (summing to the bill)."""
    change = result.change
    periods = ", ".join(f"{p:%Y-%m}" for p in result.periods) or "none"
    print(
        f"{result.source}: {result.rows_read:,} rows read, {result.gpu_rows:,} GPU rows, "
        f"billing periods {periods}; "
        f"lines {change.added} added, {change.removed} removed, {change.changed} changed, "
        f"{change.unchanged} unchanged" + ("" if change.changed_anything else " (nothing changed)")
    )
    names = sorted(n for n in result.usd_by_deployment if n is not None)
    exact = [result.usd_by_deployment[n] for n in names] + [result.usd_by_deployment.get(None, Decimal(0))]
    shown, total = allocate_cents(exact)
    table = Table(title=f"GPU lines by deployment: {metric_words(config)}")
    table.add_column("deployment")
    table.add_column("cost", justify="right")
    for name, amount in zip([*names, "unattributed"], shown, strict=True):
        table.add_row(name, format_usd(amount))
    table.add_row("total (the bill's GPU lines)", format_usd(total), end_section=True)
    console().print(table)


@billing_app.command("import")
def import_command(
    files: Annotated[list[Path], typer.Argument(help="FOCUS files (.csv, .csv.gz, .parquet) or folders.")],
    config_path: ConfigOption = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="The billing source these files belong to (default: the one FOCUS source configured)."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Import FOCUS bill exports: their GPU lines, attributed to deployments; each billing period they
    hold replaces the one stored. Re-importing the same files changes nothing."""
    config = require_config(config_path)
    name = import_source_name(config, source)
    catalog = gpu_catalog()
    store = open_store(config)
    try:
        result = import_files(store, config, files, catalog, source=name)
    finally:
        store.close()
    for warning in result.warnings:
        warn(warning)
    if as_json:
        print(json.dumps(result_json(result, config), indent=2))
        return
    print_result(result, config)


# -- status -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceStatus:
    name: str
    kind: str | None
    """None: lines in the store from a source no longer configured."""
    last_sync_ts: float | None
    first_day: date | None
    last_day: date | None
    days: int
    estimated_days: int
    lines: int
    unattributed_usd: Decimal | None


def source_statuses(store: Store, config: Config) -> list[SourceStatus]:
    coverage = {c.source: c for c in store.cost_line_coverage()}
    last_sync: dict[str, float] = {}
    for sync in store.billing_syncs():
        last_sync[sync.source] = sync.synced_ts
    configured = {s.name: s.kind for s in config.billing.sources}
    names = list(configured) + sorted(
        n for n in (set(coverage) | set(last_sync)) if n not in configured and n not in {"static", "onprem"}
    )
    metric = config.billing.cost_metric
    out = []
    for name in names:
        cov = coverage.get(name)
        unattributed: Decimal | None = None
        if cov is not None:
            lines = store.cost_lines(cov.first_day, cov.last_day + timedelta(days=1), source=name)
            known = {d.name for d in config.deployments}
            unattributed = sum(
                (x.costed(metric).amount_usd for x in lines if x.deployment not in known), Decimal(0)
            )
        out.append(
            SourceStatus(
                name=name,
                kind=configured.get(name, "import" if name in last_sync else None),
                last_sync_ts=last_sync.get(name),
                first_day=cov.first_day if cov else None,
                last_day=cov.last_day if cov else None,
                days=cov.days if cov else 0,
                estimated_days=cov.estimated_days if cov else 0,
                lines=cov.lines if cov else 0,
                unattributed_usd=unattributed,
            )
        )
    return out


def unbilled_deployments(config: Config) -> list[str]:
    """Deployments priced by a bill: without lines they have *no billing data*, never $0."""
    return [d.name for d in config.deployments if is_bill_priced(d)]


@billing_app.command("status")
def status_command(config_path: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Per billing source: the last sync or import, the days covered, the days still estimated (the
    provider may revise them), and the cost no deployment claims."""
    config = require_config(config_path)
    store = open_store(config, read_only=True)
    try:
        statuses = source_statuses(store, config)
    finally:
        store.close()
    now = time.time()
    if as_json:
        print(
            json.dumps(
                {
                    "cost_metric": config.billing.cost_metric.value,
                    "sources": [
                        {
                            "name": s.name,
                            "kind": s.kind,
                            "configured": s.kind is not None and s.kind != "import",
                            "last_sync": _iso(s.last_sync_ts),
                            "first_day": s.first_day.isoformat() if s.first_day else None,
                            "last_day": s.last_day.isoformat() if s.last_day else None,
                            "days": s.days,
                            "estimated_days": s.estimated_days,
                            "lines": s.lines,
                            "unattributed_usd": _usd(s.unattributed_usd),
                        }
                        for s in statuses
                    ],
                },
                indent=2,
            )
        )
        return
    if not statuses:
        names = unbilled_deployments(config)
        print(
            "no billing source configured and no bill imported"
            + (f": {', '.join(names)} ha{'s' if len(names) == 1 else 've'} no billing data" if names else "")
            + f"; run `{billing_fix_command(config, program())}`, or add [[billing.sources]] to the config"
        )
        return
    table = Table(title=f"Billing sources: {metric_words(config)}")
    for column in ("source", "kind", "last sync", "days covered", "still estimated", "lines", "unattributed"):
        table.add_column(
            column, justify="right" if column in {"lines", "unattributed", "still estimated"} else "left"
        )
    for s in statuses:
        covered = "—" if s.first_day is None else f"{s.first_day} … {s.last_day} ({s.days} days)"
        table.add_row(
            s.name,
            s.kind or "(not configured)",
            "never" if s.last_sync_ts is None else _ago(now - s.last_sync_ts),
            covered,
            f"{s.estimated_days} days",
            f"{s.lines:,}",
            format_usd(s.unattributed_usd),
        )
    console().print(table)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86_400:.0f} days ago"
