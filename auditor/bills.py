"""Words every output uses about bills: which cost it counts, and what to do when a bill is missing.

A deployment priced by its cloud bill (`price.source` aws, gcp or focus) with no lines for a window has
*no billing data*: its cost is unknown, never $0, it gets no verdict, and every output names it with
the command that brings its bill in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from auditor.config import BILLED_PRICE_SOURCES, Config, DeploymentConfig
from auditor.model import COST_METRIC_COLUMNS, CostMetric
from auditor.store import Store

_METRIC_MEANING = {
    CostMetric.EFFECTIVE: "amortized: commitments and upfront fees spread",
    CostMetric.BILLED: "as invoiced",
    CostMetric.LIST: "list prices, before discounts",
}


def cost_metric_words(metric: CostMetric) -> str:
    """`EffectiveCost (amortized: …; billing.cost_metric = effective)`."""
    return f"{COST_METRIC_COLUMNS[metric]} ({_METRIC_MEANING[metric]}; billing.cost_metric = {metric.value})"


def is_bill_priced(deployment: DeploymentConfig) -> bool:
    return deployment.price.source in BILLED_PRICE_SOURCES


def billing_fix_command(config: Config, program: str = "auditor") -> str:
    """The command that brings a missing bill in: a sync where an API source or export is configured,
    else an import of the FOCUS files."""
    if any(s.kind != "focus_files" for s in config.billing.sources):
        return f"{program} billing sync"
    return f"{program} billing import FILE…"


def no_billing_data_line(names: list[str], period: str, fix: str) -> str:
    """The header line of an output where bill-priced deployments have no lines for the period."""
    which = ", ".join(names)
    verb = "has" if len(names) == 1 else "have"
    return (
        f"no billing data: {which} {verb} no bill lines for {period} (cost unknown, not $0; no verdict); "
        f"run `{fix}`"
    )


# -- the billing commands' results (`auditor.output`: JSON keys are the field names) -------------------


@dataclass(frozen=True, slots=True)
class LineChanges:
    """What an import or sync did to the stored lines (a re-import of the same bill: all unchanged)."""

    added: int
    removed: int
    changed: int
    unchanged: int


@dataclass(frozen=True, slots=True)
class DeploymentBill:
    deployment: str
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class BillImportResult:
    """`auditor billing import`: what was read, what changed, and the GPU lines' cost by deployment
    (the counted cost, `cost_metric`, in USD): deployments + unattributed = the bill's GPU lines."""

    source: str
    kind: str
    origin: str
    cost_metric: CostMetric
    rows_read: int
    gpu_rows: int
    billing_periods: list[date]
    lines: LineChanges
    gpu_lines_usd: Decimal
    deployments: list[DeploymentBill]
    unattributed_usd: Decimal
    warnings: list[str]


@dataclass(frozen=True, slots=True)
class BillingSourceStatus:
    name: str
    kind: str | None
    """The configured kind; `import` for files imported under a source no longer configured."""
    configured: bool
    last_sync: datetime | None
    first_day: date | None
    last_day: date | None
    days: int
    estimated_days: int
    """Days the source may still revise (AWS `Estimated`, a billing period not closed yet)."""
    lines: int
    unattributed_usd: Decimal | None


@dataclass(frozen=True, slots=True)
class BillingStatusResult:
    """`auditor billing status`: per source, the last sync, the days covered and still estimated, and
    the cost no deployment claims; and the bill-priced deployments that have no line at all."""

    cost_metric: CostMetric
    sources: list[BillingSourceStatus]
    no_billing_data: list[str]
    fix: str
    now: datetime = field(metadata={"json": False})


def billing_status(
    store: Store, config: Config, now: datetime, program: str = "auditor"
) -> BillingStatusResult:
    """Each configured source (and any source with lines in the store), from the store's lines and syncs."""
    coverage = {c.source: c for c in store.cost_line_coverage()}
    last_sync: dict[str, float] = {}
    for sync in store.billing_syncs():
        last_sync[sync.source] = sync.synced_ts
    configured = {s.name: s.kind for s in config.billing.sources}
    names = list(configured) + sorted(
        n for n in (set(coverage) | set(last_sync)) if n not in configured and n not in {"static", "onprem"}
    )
    metric = config.billing.cost_metric
    known = {d.name for d in config.deployments}
    billed_deployments: set[str] = set()
    sources = []
    for name in names:
        cov = coverage.get(name)
        unattributed: Decimal | None = None
        if cov is not None:
            lines = store.cost_lines(cov.first_day, cov.last_day + timedelta(days=1), source=name)
            billed_deployments.update(x.deployment for x in lines if x.deployment is not None)
            unattributed = sum(
                (x.costed(metric).amount_usd for x in lines if x.deployment not in known), Decimal(0)
            )
        synced = last_sync.get(name)
        sources.append(
            BillingSourceStatus(
                name=name,
                kind=configured.get(name, "import" if name in last_sync else None),
                configured=name in configured,
                last_sync=None if synced is None else datetime.fromtimestamp(synced, UTC),
                first_day=cov.first_day if cov else None,
                last_day=cov.last_day if cov else None,
                days=cov.days if cov else 0,
                estimated_days=cov.estimated_days if cov else 0,
                lines=cov.lines if cov else 0,
                unattributed_usd=unattributed,
            )
        )
    unbilled = [d.name for d in config.deployments if is_bill_priced(d) and d.name not in billed_deployments]
    return BillingStatusResult(
        cost_metric=metric,
        sources=sources,
        no_billing_data=unbilled,
        fix=billing_fix_command(config, program),
        now=now,
    )
