"""The API bill sources into the store: what `auditor billing sync` and the daemon's billing job run.

For each configured API source it builds the client (Cost Explorer, the BigQuery billing export, the
Cloud Catalog; the standard credential chains, or what a test injects), decides which days to read
(`plan_days`:
the current and previous month, which the clouds revise, and older days only once), turns what they
read into FOCUS-shaped `CostLine`s, attributes each to a deployment (or leaves it unattributed), and
replaces the source's lines for exactly those days in one transaction: a re-sync of the same days
changes nothing, a revision corrects a day and never doubles it. Each sync is recorded with what it
read, what it changed and what it cost (Cost Explorer: $0.01 a request).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from auditor.analysis import active_window
from auditor.attribution import Attributor
from auditor.billing_result import BillingSyncResult, LinesChanged, SyncedSource, SyncFailure
from auditor.config import (
    AwsPrice,
    Config,
    CostExplorerSource,
    DeploymentConfig,
    GcpBillingExportSource,
    GcpCatalogSource,
    GcpPrice,
)
from auditor.errors import BadInputError, UnavailableError
from auditor.gpu_prices import GpuPrice
from auditor.model import CostBasis, CostLine
from auditor.store import BillingSync, CostLineChange, Store
from collectors import aws_billing, gcp_billing
from collectors.focus_sources import BillingResult
from collectors.interface import BillingUnavailable

log = logging.getLogger("auditor.billing")

API_KINDS = ("aws_cost_explorer", "gcp_billing_export", "gcp_catalog")
"""The billing source kinds `billing sync` reads (file and S3 exports are imported, not synced)."""
ApiSource = CostExplorerSource | GcpBillingExportSource | GcpCatalogSource
Progress = Callable[[str, int], None]
"""(what is being done, pages or steps done so far)."""


@dataclass(frozen=True)
class BillingClients:
    """How each source's client is built: the standard credential chains by default; tests point them
    at moto or a local server."""

    cost_explorer: Callable[[CostExplorerSource], Any] = field(
        default=lambda s: aws_billing.ce_client(region=s.region, profile=s.profile)
    )
    caller_account: Callable[[CostExplorerSource], str] = field(default=lambda s: _caller_account(s))
    bigquery: Callable[[GcpBillingExportSource], Any] = field(
        default=lambda s: gcp_billing.bigquery_client(
            s.project or s.table.split(".")[0], endpoint=s.api_endpoint, location=s.location
        )
    )
    catalog: Callable[[GcpCatalogSource], Any] = field(
        default=lambda s: gcp_billing.catalog_client(endpoint=s.api_endpoint)
    )


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    """One source's sync: the days read, what it read and changed, and what it cost."""

    source: str
    kind: str
    start: date
    end: date
    """Exclusive."""
    rows: int
    lines: int
    requests: int
    """Paid requests (Cost Explorer pages); free APIs count 0."""
    request_cost_usd: Decimal
    change: CostLineChange
    by_deployment: dict[str | None, Decimal]
    """Cost (the configured metric, USD) of the window's lines per deployment; None: unattributed."""
    estimated_days: int
    notes: tuple[str, ...] = ()
    origin: str = ""

    @property
    def days(self) -> int:
        return (self.end - self.start).days


def api_sources(config: Config, only: str | None = None) -> list[ApiSource]:
    """The configured sources `billing sync` reads; `only` names one (BadInputError when it is not one)."""
    chosen = [
        s
        for s in config.billing.sources
        if isinstance(s, CostExplorerSource | GcpBillingExportSource | GcpCatalogSource)
    ]
    if only is None:
        return chosen
    for source in chosen:
        if source.name == only:
            return [source]
    names = ", ".join(s.name for s in chosen) or "none configured"
    others = [s.name for s in config.billing.sources if s.name == only]
    why = f"{only!r} is a file export: use `auditor billing import`" if others else f"no source {only!r}"
    raise BadInputError(f"billing sync: {why}", f"sources that sync: {names}")


def sync_sources(
    config: Config,
    store: Store,
    *,
    only: str | None = None,
    since: date | None = None,
    gpu_catalog: Sequence[GpuPrice] = (),
    clients: BillingClients | None = None,
    cache_dir: Path | None = None,
    now: Callable[[], float] = time.time,
    progress: Callable[[ApiSource], Progress] | None = None,
) -> tuple[list[SyncOutcome], list[tuple[str, BillingUnavailable]]]:
    """Sync every API source (or the one named), each on its own: one that cannot be read (no
    credentials, a permission refused) is a failure in the result, and the others still sync."""
    clients = clients or BillingClients()
    outcomes: list[SyncOutcome] = []
    failures: list[tuple[str, BillingUnavailable]] = []
    for source in api_sources(config, only):
        try:
            outcomes.append(
                sync_source(
                    config,
                    store,
                    source,
                    since=since,
                    gpu_catalog=gpu_catalog,
                    clients=clients,
                    cache_dir=cache_dir,
                    now=now,
                    progress=None if progress is None else progress(source),
                )
            )
        except BillingUnavailable as exc:
            log.error("billing sync %s: %s", source.name, exc)
            failures.append((source.name, exc))
    return outcomes, failures


def sync_source(
    config: Config,
    store: Store,
    source: ApiSource,
    *,
    since: date | None = None,
    gpu_catalog: Sequence[GpuPrice] = (),
    clients: BillingClients,
    cache_dir: Path | None = None,
    now: Callable[[], float] = time.time,
    progress: Progress | None = None,
) -> SyncOutcome:
    started = now()
    today = datetime.fromtimestamp(started, UTC).date()
    if isinstance(source, GcpCatalogSource):
        today = datetime.fromtimestamp(started, config.tz).date()
    start, end = aws_billing.plan_days(today, _synced_through(store, source.name), since)
    report = progress or (lambda _what, _n: None)
    if isinstance(source, CostExplorerSource):
        lines, rows, requests, notes = _read_cost_explorer(
            config, source, start, end, gpu_catalog, clients, report
        )
        origin = f"Cost Explorer GetCostAndUsage {start}..{end - timedelta(days=1)}"
    elif isinstance(source, GcpBillingExportSource):
        lines, rows, notes = _read_gcp_export(config, source, start, end, today, clients, report)
        requests = 0
        origin = f"BigQuery {source.table} {start}..{end - timedelta(days=1)}"
    else:
        lines, rows, notes = _estimate_gcp(config, store, source, start, end, clients, cache_dir, now, report)
        requests = 0
        origin = f"Cloud Catalog list prices in {source.region}"
    if not isinstance(source, GcpCatalogSource):  # estimates are made for their deployment
        gpus = {p.instance_type: p.gpus for p in gpu_catalog}
        # Only the deployments priced by this cloud's bill claim its lines (and are warned about).
        price = AwsPrice if isinstance(source, CostExplorerSource) else GcpPrice
        claimants = config.model_copy(
            update={"deployments": [d for d in config.deployments if isinstance(d.price, price)]}
        )
        attribution = Attributor(claimants, gpus.get).attribute(lines)
        lines = [_rekey(line) for line in attribution.lines]
        notes = [*notes, *attribution.warnings]
    report("writing", 0)
    change = store.replace_cost_lines(source.name, None, start, end, lines)
    period = (_utc_ts(start), _utc_ts(end))
    store.record_billing_sync(
        BillingSync(
            source=source.name,
            kind=source.kind,
            synced_ts=now(),
            origin=origin,
            period_start_ts=period[0],
            period_end_ts=period[1],
            rows_read=rows,
            lines_added=change.added,
            lines_removed=change.removed,
            lines_changed=change.changed,
            lines_unchanged=change.unchanged,
            requests=requests,
        )
    )
    metric = config.billing.cost_metric
    by_deployment: dict[str | None, Decimal] = defaultdict(Decimal)
    for line in lines:
        by_deployment[line.deployment] += line.costed(metric).amount_usd
    outcome = SyncOutcome(
        source=source.name,
        kind=source.kind,
        start=start,
        end=end,
        rows=rows,
        lines=len(lines),
        requests=requests,
        request_cost_usd=aws_billing.REQUEST_USD * requests,
        change=change,
        by_deployment=dict(by_deployment),
        estimated_days=len({line.day for line in lines if line.estimated}),
        notes=tuple(notes),
        origin=origin,
    )
    log.info(
        "billing sync %s: %s..%s, %d row(s), %d line(s) (+%d -%d ~%d), %d paid request(s)",
        source.name,
        start,
        end - timedelta(days=1),
        rows,
        len(lines),
        change.added,
        change.removed,
        change.changed,
        requests,
    )
    return outcome


def _synced_through(store: Store, source: str) -> date | None:
    """The last day a previous sync of this source read (None: never synced)."""
    ends = [s.period_end_ts for s in store.billing_syncs(source) if s.period_end_ts is not None]
    if not ends:
        return None
    return datetime.fromtimestamp(max(ends), UTC).date() - timedelta(days=1)


def _utc_ts(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _month_ts(day: date) -> int:
    return _utc_ts(day.replace(day=1))


def _key(*parts: object) -> str:
    """A line's stable identity within its source: what identifies it, never its amounts."""
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _usd_rate(config: Config, currency: str, source: str) -> Decimal:
    if currency == "USD":
        return Decimal(1)
    rate = config.billing.currency_rates.get(currency)
    if rate is None:
        raise BadInputError(
            f"billing source {source!r} bills in {currency}, and no rate converts it to USD",
            f"set billing.currency_rates.{currency} (USD per {currency}) in the config",
        )
    return rate


def _rekey(line: CostLine) -> CostLine:
    """A line's stable identity within its source, after attribution: what identifies it (its day,
    account, project, usage, SKU, region, tags: a tag value or a machine type tells two lines of one
    day apart) and its deployment, never its amounts. A re-sync of the same bill finds the same keys."""
    key = _key(
        line.account,
        line.sub_account,
        line.day,
        line.charge_period_start_ts,
        line.usage_type,
        line.sku_id,
        line.region,
        line.tags_json,
        line.deployment,
        line.basis.value,
    )
    return line if line.line_key == key else replace(line, line_key=key)


# -- AWS Cost Explorer ---------------------------------------------------------------------------


def _caller_account(source: CostExplorerSource) -> str:
    """The credentials' own account (STS GetCallerIdentity: free, and needs no permission)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        session = boto3.session.Session(profile_name=source.profile)
        return str(session.client("sts", region_name=source.region).get_caller_identity()["Account"])
    except NoCredentialsError:
        raise aws_billing.no_credentials(aws_billing.PERMISSION) from None
    except ClientError as exc:
        raise aws_billing.client_error(exc, "sts:GetCallerIdentity", "STS") from None
    except BotoCoreError as exc:
        raise BillingUnavailable(
            f"AWS STS cannot be reached ({type(exc).__name__})", fix="check the network"
        ) from None


def aws_gpu_families(
    config: Config, source: CostExplorerSource, gpu_catalog: Sequence[GpuPrice]
) -> list[str]:
    catalog_types = [p.instance_type for p in gpu_catalog if p.provider == "aws"]
    return aws_billing.gpu_families(
        [*catalog_types, *config.billing.gpu_instance_types], extra=source.instance_families
    )


def _read_cost_explorer(
    config: Config,
    source: CostExplorerSource,
    start: date,
    end: date,
    gpu_catalog: Sequence[GpuPrice],
    clients: BillingClients,
    report: Progress,
) -> tuple[list[CostLine], int, int, list[str]]:
    account = source.account_id or clients.caller_account(source)
    explorer = aws_billing.CostExplorer(
        clients.cost_explorer(source),
        families=aws_gpu_families(config, source, gpu_catalog),
        tag_key=source.tag_key,
        linked_accounts=source.linked_accounts,
    )
    fetched = explorer.fetch(start, end, on_page=lambda n: report("Cost Explorer pages", n))
    gpus = {p.instance_type: p.gpus for p in gpu_catalog if p.provider == "aws"}
    lines = []
    for row in fetched.rows:
        rate = _usd_rate(config, row.currency, source.name)
        tags = {source.tag_key: row.tag_value} if source.tag_key and row.tag_value else {}
        per_instance = gpus.get(row.instance_type)
        lines.append(
            CostLine(
                day=row.day,
                source=source.name,
                account=account,
                # One member account read: the lines are its (a deployment's price.account_id matches).
                sub_account=source.linked_accounts[0] if len(source.linked_accounts) == 1 else None,
                resource="",
                usage_type=row.instance_type,
                amount_usd=row.amortized * rate,
                usage_hours=row.usage_hours,
                gpu_hours=None
                if row.usage_hours is None or per_instance is None
                else row.usage_hours * per_instance,
                basis=CostBasis.AMORTIZED,
                estimated=row.estimated,
                charge_period_start_ts=_utc_ts(row.day),
                charge_period_end_ts=_utc_ts(row.day + timedelta(days=1)),
                billing_period_start_ts=_month_ts(row.day),
                billed_cost=row.unblended,
                effective_cost=row.amortized,
                billing_currency=row.currency,
                usd_rate=rate,
                charge_category="Usage",
                provider="AWS",
                tags_json=json.dumps(tags, sort_keys=True) if tags else None,
            )
        )
    notes = []
    if fetched.retries:
        notes.append(f"{fetched.retries} throttled or failed request(s) retried by botocore")
    return lines, len(fetched.rows), fetched.requests, notes


# -- GCP billing export --------------------------------------------------------------------------

GCP_REVISABLE_DAYS = 3
"""The export loads usage hours to days late: the last days are marked estimated beside the open month."""


def _read_gcp_export(
    config: Config,
    source: GcpBillingExportSource,
    start: date,
    end: date,
    today: date,
    clients: BillingClients,
    report: Progress,
) -> tuple[list[CostLine], int, list[str]]:
    export = gcp_billing.BillingExport(
        clients.bigquery(source), source.table, label_key=source.label_key, families=source.machine_families
    )
    report("BigQuery export", 0)
    fetched = export.fetch(start, end)
    report("BigQuery export", 1)
    open_from = min(today.replace(day=1), today - timedelta(days=GCP_REVISABLE_DAYS))
    lines = []
    for row in fetched.rows:
        rate = _usd_rate(config, row.currency, source.name)
        tags = {source.label_key: row.label_value} if source.label_key and row.label_value else {}
        if row.machine_spec:  # a system label on the export: it tells machine types apart
            tags[gcp_billing.MACHINE_SPEC_LABEL] = row.machine_spec
        hours = (
            row.usage_amount if row.gpu_sku and (row.pricing_unit or "").lower() in {"hour", "h"} else None
        )
        net = row.net
        lines.append(
            CostLine(
                day=row.day,
                source=source.name,
                account=row.billing_account,
                resource="",
                usage_type=row.sku_description,
                amount_usd=net * rate,
                usage_hours=row.usage_amount,
                gpu_hours=hours,
                basis=CostBasis.INVOICED,
                estimated=row.day >= open_from,
                charge_period_start_ts=_utc_ts(row.day),
                charge_period_end_ts=_utc_ts(row.day + timedelta(days=1)),
                billing_period_start_ts=_month_ts(row.day),
                billed_cost=net,
                effective_cost=net,
                billing_currency=row.currency,
                usd_rate=rate,
                charge_category="Usage" if row.cost >= 0 else "Credit",
                provider="Google Cloud",
                sub_account=row.project or None,
                region=row.region,
                sku_id=row.sku_id or None,
                tags_json=json.dumps(tags, sort_keys=True) if tags else None,
            )
        )
    notes = [f"BigQuery billed {fetched.bytes_billed} byte(s)"] if fetched.bytes_billed else []
    return lines, len(fetched.rows), notes


# -- GCP list-price estimates --------------------------------------------------------------------


def _estimate_gcp(
    config: Config,
    store: Store,
    source: GcpCatalogSource,
    start: date,
    end: date,
    clients: BillingClients,
    cache_dir: Path | None,
    now: Callable[[], float],
    report: Progress,
) -> tuple[list[CostLine], int, list[str]]:
    catalog = gcp_billing.SkuCatalog(clients.catalog(source))
    report("Cloud Catalog", 0)
    if cache_dir is None:
        skus, cached = catalog.gpu_skus(), False
    else:
        cache = gcp_billing.SkuCache(cache_dir / f"gcp_skus_{source.name}.json", catalog.gpu_skus, clock=now)
        skus, cached = cache.skus()
    report("Cloud Catalog", 1)
    chosen = _estimated_deployments(config, source)
    bounds = store.activity_bounds([d.name for d in chosen])
    tz = config.tz
    lines: list[CostLine] = []
    notes = ["list prices from the cache"] if cached else []
    for deployment in chosen:
        sku = gcp_billing.gpu_hour_price(skus, deployment.gpu_type, source.region)
        if sku is None:
            notes.append(
                f"{deployment.name}: the Cloud Catalog lists no on-demand {deployment.gpu_type} GPU in "
                f"{source.region}: no estimate (it shows no billing data)"
            )
            continue
        if sku.currency != "USD":
            notes.append(f"{deployment.name}: {sku.sku_id} is priced in {sku.currency}: no estimate")
            continue
        for day in _days(start, end):
            day_start = datetime(day.year, day.month, day.day, tzinfo=tz)
            following = day + timedelta(days=1)
            day_end = datetime(following.year, following.month, following.day, tzinfo=tz)
            active = active_window(deployment, bounds.get(deployment.name), day_start, day_end, tz)
            if active is None:
                continue
            seconds = int((active[1] - active[0]).total_seconds())
            gpu_hours = Decimal(seconds) / Decimal(3600) * deployment.billed_gpus
            amount = sku.price(gpu_hours)
            lines.append(
                CostLine(
                    day=day,
                    source=source.name,
                    account="gcp-list-price",
                    resource=deployment.name,
                    usage_type=f"{sku.description} (list price)",
                    amount_usd=amount,
                    deployment=deployment.name,
                    usage_hours=gpu_hours,
                    gpu_hours=gpu_hours,
                    basis=CostBasis.LIST,
                    estimated=True,
                    charge_period_start_ts=int(active[0].timestamp()),
                    charge_period_end_ts=int(active[1].timestamp()),
                    billing_period_start_ts=_month_ts(day),
                    list_cost=amount,
                    billing_currency="USD",
                    charge_category="Usage",
                    pricing_category="Standard",
                    provider="Google Cloud",
                    region=source.region,
                    sku_id=sku.sku_id,
                    line_key=_key("gcp-list", deployment.name, day, sku.sku_id, source.region),
                )
            )
    return lines, len(skus), notes


def _estimated_deployments(config: Config, source: GcpCatalogSource) -> list[DeploymentConfig]:
    if source.deployments:
        wanted = set(source.deployments)
        unknown = wanted - {d.name for d in config.deployments}
        if unknown:
            raise BadInputError(
                f"billing source {source.name!r} names no such deployment: {', '.join(sorted(unknown))}",
                "list deployments by their [[deployments]] name",
            )
        return [d for d in config.deployments if d.name in wanted]
    return [d for d in config.deployments if isinstance(d.price, GcpPrice)]


def _days(start: date, end: date) -> Iterable[date]:
    day = start
    while day < end:
        yield day
        day += timedelta(days=1)


def unavailable(exc: BillingUnavailable, source: str) -> UnavailableError:
    """A billing source's failure as the CLI's one line (exit 1), naming the source."""
    return UnavailableError(f"billing source {source!r}: {exc.message}", exc.fix)


# -- the command's result ------------------------------------------------------------------------


def synced(outcome: SyncOutcome) -> SyncedSource:
    change = outcome.change
    return SyncedSource(
        source=outcome.source,
        kind=outcome.kind,
        origin=outcome.origin,
        first_day=outcome.start,
        last_day=outcome.end - timedelta(days=1),
        days_read=outcome.days,
        billing_periods=tuple(sorted({d.replace(day=1) for d in _days(outcome.start, outcome.end)})),
        rows_read=outcome.rows,
        lines=LinesChanged(outcome.lines, change.added, change.removed, change.changed, change.unchanged),
        estimated_days=outcome.estimated_days,
        requests=outcome.requests,
        requests_usd=outcome.request_cost_usd,
        by_deployment={k: v for k, v in sorted(outcome.by_deployment.items(), key=_named) if k is not None},
        unattributed_usd=outcome.by_deployment.get(None, Decimal(0)),
        estimate=outcome.kind == "gcp_catalog",
        notes=outcome.notes,
    )


def _named(item: tuple[str | None, Decimal]) -> str:
    return item[0] or ""


def sync_result(
    config: Config, sources: Sequence[SyncedSource], failures: Sequence[tuple[str, BillingUnavailable]]
) -> BillingSyncResult:
    return BillingSyncResult(
        cost_metric=config.billing.cost_metric.value,
        sources=tuple(sources),
        failures=tuple(SyncFailure(name, e.message, e.fix, e.permission) for name, e in failures),
    )


def synced_export(result: BillingResult) -> SyncedSource:
    """A FOCUS export's sync (10a's `BillingResult`) in the same shape: read by billing period."""
    change = result.change
    total = change.added + change.changed + change.unchanged
    return SyncedSource(
        source=result.source,
        kind=result.kind,
        origin=result.origin,
        first_day=None,
        last_day=None,
        days_read=None,
        billing_periods=tuple(result.periods),
        rows_read=result.rows_read,
        lines=LinesChanged(total, change.added, change.removed, change.changed, change.unchanged),
        estimated_days=None,
        requests=0,
        requests_usd=Decimal(0),
        by_deployment={k: v for k, v in sorted(result.usd_by_deployment.items(), key=_named) if k},
        unattributed_usd=result.usd_by_deployment.get(None, Decimal(0)),
        estimate=False,
        notes=tuple(result.warnings),
    )
