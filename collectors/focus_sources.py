"""Where FOCUS bills come from, and how they reach the store: local files and folders, an S3 prefix
written by AWS Data Exports (manifests followed), a BigQuery FOCUS view.

Every source ends the same way (`commit`): the bill's GPU lines attributed to deployments, then each
billing period the bill holds replaced whole, all in one transaction, and the import recorded for
`billing status`. Re-reading the same bill changes nothing; a re-delivered month replaces the old.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from auditor.attribution import Attributor
from auditor.bills import BillImportResult, DeploymentBill, LineChanges
from auditor.config import (
    BillingSource,
    Config,
    FocusBigQuerySource,
    FocusFilesSource,
    FocusS3Source,
)
from auditor.errors import BadInputError, UnavailableError
from auditor.gpu_prices import GpuPrice
from auditor.model import CostLine, CostMetric
from auditor.store import BillingSync, CostLineChange, Store
from collectors.focus import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    FocusError,
    FocusImport,
    GpuMatcher,
    focus_files,
)

if TYPE_CHECKING:
    from google.cloud import bigquery
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectTypeDef

IMPORT_SOURCE = "focus-import"
"""The source name of `billing import` when no FOCUS source is configured."""


@dataclass
class BillingResult:
    """What one import or sync read and changed."""

    source: str
    kind: str
    origin: str
    rows_read: int = 0
    gpu_rows: int = 0
    periods: list[date] = field(default_factory=list)
    change: CostLineChange = field(default_factory=CostLineChange)
    usd_by_deployment: dict[str | None, Decimal] = field(default_factory=dict)
    """The GPU lines' cost (the configured metric, USD) per deployment; None is unattributed."""
    gpu_lines_usd: Decimal = Decimal(0)
    """All GPU lines read: the deployments' and the unattributed add up to it exactly."""
    warnings: list[str] = field(default_factory=list)


def new_import(
    source: str, config: Config, catalog: Sequence[GpuPrice], now_ts: float | None = None
) -> FocusImport:
    matcher = GpuMatcher.build(catalog, config.billing.gpu_instance_types, config.billing.gpu_sku_keywords)
    return FocusImport(
        source=source,
        tz=config.tz,
        currency_rates=config.billing.currency_rates,
        matcher=matcher,
        now_ts=time.time() if now_ts is None else now_ts,
    )


def commit(store: Store, config: Config, read: FocusImport, kind: str, origin: str) -> BillingResult:
    """Attribute the bill's GPU lines and replace its billing periods in the store (one transaction)."""
    attributor = Attributor(config, read.matcher.gpus)
    by_period = read.lines()
    attributed: dict[int, list[CostLine]] = {}
    warnings: list[str] = []
    all_lines: list[CostLine] = []
    raw = [line for lines in by_period.values() for line in lines]
    attribution = attributor.attribute(raw)
    warnings.extend(attribution.warnings)
    for period in by_period:
        attributed[period] = []
    for line in attribution.lines:
        assert line.billing_period_start_ts is not None  # noqa: S101  (FocusImport sets it on every line)
        attributed[line.billing_period_start_ts].append(line)
        all_lines.append(line)
    change = store.replace_billing_periods(read.source, attributed)
    metric = config.billing.cost_metric
    usd: dict[str | None, Decimal] = defaultdict(Decimal)
    for line in all_lines:
        usd[line.deployment] += line.costed(metric).amount_usd
    periods = sorted(by_period)
    store.record_billing_sync(
        BillingSync(
            source=read.source,
            kind=kind,
            synced_ts=time.time(),
            origin=origin,
            period_start_ts=periods[0] if periods else None,
            period_end_ts=None,
            rows_read=read.rows_read,
            lines_added=change.added,
            lines_removed=change.removed,
            lines_changed=change.changed,
            lines_unchanged=change.unchanged,
        )
    )
    return BillingResult(
        source=read.source,
        kind=kind,
        origin=origin,
        rows_read=read.rows_read,
        gpu_rows=read.gpu_rows,
        periods=[datetime.fromtimestamp(p, UTC).date() for p in periods],
        change=change,
        usd_by_deployment=dict(usd),
        gpu_lines_usd=sum((line.costed(metric).amount_usd for line in raw), Decimal(0)),
        warnings=warnings,
    )


def import_source_name(config: Config, explicit: str | None) -> str:
    """The source `billing import` files its lines under: the one named, else the one FOCUS source
    configured (so that importing a file a source also reads never counts it twice), else a default."""
    focus = [s for s in config.billing.sources if s.kind.startswith("focus")]
    if explicit is not None:
        if explicit not in {s.name for s in config.billing.sources} and explicit != IMPORT_SOURCE:
            names = ", ".join(s.name for s in config.billing.sources) or "none configured"
            raise BadInputError(f"--source {explicit}: no such billing source (billing.sources: {names})")
        return explicit
    if len(focus) == 1:
        return focus[0].name
    if len(focus) > 1:
        raise BadInputError(
            "several FOCUS sources are configured ("
            + ", ".join(s.name for s in focus)
            + "): say which one these files belong to with --source NAME"
        )
    return IMPORT_SOURCE


def import_files(
    store: Store,
    config: Config,
    paths: Iterable[Path],
    catalog: Sequence[GpuPrice],
    *,
    source: str,
    kind: str = "import",
) -> BillingResult:
    """Read FOCUS files (folders searched) and commit them. A bad file raises FocusError before anything
    is written: nothing of any of them is half-imported."""
    files = focus_files(paths)
    if not files:
        raise FocusError(
            "no FOCUS files (.csv, .csv.gz, .parquet) found in " + ", ".join(str(p) for p in paths)
        )
    read = new_import(source, config, catalog)
    for path in files:
        if not path.exists():
            raise FocusError(f"{path}: no such file")
        read.read_file(path)
    return commit(store, config, read, kind, ", ".join(str(p) for p in files))


# -- S3: AWS Data Exports ------------------------------------------------------------------------


def s3_client(source: FocusS3Source) -> S3Client:
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "s3",
        region_name=source.region,
        endpoint_url=source.endpoint_url,
        config=BotoConfig(retries={"mode": "adaptive", "max_attempts": 5}),
    )


def sync_s3(
    store: Store,
    config: Config,
    source: FocusS3Source,
    catalog: Sequence[GpuPrice],
    client: S3Client | None = None,
) -> BillingResult:
    """Read the newest manifest of each billing period under the export's `metadata/` folder and the data
    files it lists (not the folder: a delivery in progress leaves old files there), then replace those
    periods. AWS rewrites the current month at least daily, and a closed month for weeks after."""
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = client if client is not None else s3_client(source)
    prefix = source.prefix.strip("/")
    meta_prefix = f"{prefix}/metadata/" if prefix else "metadata/"
    read = new_import(source.name, config, catalog)
    origins: list[str] = []
    try:
        newest: dict[str, ObjectTypeDef] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=source.bucket, Prefix=meta_prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if not key.endswith("Manifest.json"):
                    continue
                period = _billing_period_of(key)
                if period is None:
                    continue
                known = newest.get(period)
                if known is None or (obj["LastModified"], key) > (known["LastModified"], known["Key"]):
                    newest[period] = obj
        if not newest:
            raise FocusError(
                f"s3://{source.bucket}/{meta_prefix}: no AWS Data Exports manifest "
                "(metadata/BILLING_PERIOD=YYYY-MM/*-Manifest.json); is prefix the export's folder? "
                "A new export's first delivery takes up to 24 hours"
            )
        with tempfile.TemporaryDirectory(prefix="auditor-focus-") as scratch:
            for period in sorted(newest):
                manifest_key = newest[period]["Key"]
                body = s3.get_object(Bucket=source.bucket, Key=manifest_key)["Body"].read()
                for number, uri in enumerate(_manifest_files(body, source.bucket, manifest_key)):
                    bucket, key = uri
                    local = Path(scratch) / f"{number:05d}-{Path(key).name}"
                    s3.download_file(bucket, key, str(local))  # streamed to disk, not memory
                    read.read_file(local, name=f"s3://{bucket}/{key}")
                    local.unlink()
                origins.append(f"s3://{source.bucket}/{manifest_key}")
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        action = "s3:ListBucket" if exc.operation_name == "ListObjectsV2" else "s3:GetObject"
        if code in {"AccessDenied", "403", "AllAccessDisabled"}:
            raise UnavailableError(
                f"billing source {source.name}: access denied to s3://{source.bucket}/{prefix}: "
                f"the credentials need {action} on it"
            ) from None
        if code in {"NoSuchBucket"}:
            raise UnavailableError(f"billing source {source.name}: no bucket {source.bucket}") from None
        raise UnavailableError(f"billing source {source.name}: S3 said {code}: {exc}") from None
    except BotoCoreError as exc:
        raise UnavailableError(f"billing source {source.name}: S3 cannot be reached: {exc}") from None
    return commit(store, config, read, source.kind, ", ".join(origins))


def _billing_period_of(key: str) -> str | None:
    for part in key.split("/"):
        if part.startswith("BILLING_PERIOD="):
            return part.removeprefix("BILLING_PERIOD=")
    return None


def _manifest_files(body: bytes, bucket: str, manifest_key: str) -> list[tuple[str, str]]:
    try:
        manifest = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FocusError(f"s3://{bucket}/{manifest_key}: the manifest is not JSON") from None
    files = manifest.get("dataFiles") if isinstance(manifest, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise FocusError(f"s3://{bucket}/{manifest_key}: the manifest lists no dataFiles")
    out = []
    for uri in files:
        if uri.startswith("s3://"):
            found_bucket, _, key = uri.removeprefix("s3://").partition("/")
            out.append((found_bucket, key))
        else:
            out.append((bucket, uri.lstrip("/")))
    return out


# -- BigQuery: Google Cloud's FOCUS view -----------------------------------------------------------


def bigquery_client(source: FocusBigQuerySource) -> bigquery.Client:
    from google.api_core.client_options import ClientOptions
    from google.cloud import bigquery

    options = ClientOptions(api_endpoint=source.api_endpoint) if source.api_endpoint else None
    project = source.project or source.table.split(".")[0]
    return bigquery.Client(project=project, location=source.location, client_options=options)


def focus_query(source: FocusBigQuerySource) -> str:
    """The projected, filtered query: the GPU lines of the billing periods from `@since` that match
    `@pattern` (the filter runs in BigQuery, so a large account's month is never downloaded)."""
    names = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c not in {"Tags", "SkuMeter"}]
    columns = ", ".join(f"`{c}`" for c in names)
    described = " || ' ' || ".join(
        f"IFNULL(CAST(`{c}` AS STRING), '')" for c in ("ChargeDescription", "SkuId")
    )
    # The table's name is validated by the config (project.dataset.table); values are parameters.
    return (
        f"SELECT {columns}, TO_JSON_STRING(`Tags`) AS `Tags` FROM `{source.table}` "  # noqa: S608
        f"WHERE `BillingPeriodStart` >= TIMESTAMP(@since) AND REGEXP_CONTAINS({described}, @pattern)"
    )


def periods_query(source: FocusBigQuerySource) -> str:
    """The billing periods the view holds from `@since`: each is replaced whole, GPU lines or not."""
    table = source.table
    return (
        f"SELECT DISTINCT `BillingPeriodStart` FROM `{table}` WHERE `BillingPeriodStart` >= TIMESTAMP(@since)"  # noqa: S608
    )


def sync_bigquery(
    store: Store,
    config: Config,
    source: FocusBigQuerySource,
    catalog: Sequence[GpuPrice],
    client: bigquery.Client | None = None,
    today: date | None = None,
) -> BillingResult:
    """The last `source.months` billing periods of the view, GPU lines only, replaced whole."""
    from google.api_core.exceptions import Forbidden, GoogleAPIError, NotFound

    read = new_import(source.name, config, catalog)
    day = today or datetime.now(UTC).date()
    month = day.year * 12 + day.month - 1 - (source.months - 1)
    since = date(month // 12, month % 12 + 1, 1)
    bq = client if client is not None else bigquery_client(source)
    try:
        from google.cloud import bigquery as bq_types

        parameters = [
            bq_types.ScalarQueryParameter("since", "DATE", since),
            bq_types.ScalarQueryParameter("pattern", "STRING", read.matcher.pattern),
        ]
        job = bq_types.QueryJobConfig(query_parameters=parameters)
        for row in bq.query(periods_query(source), job_config=job).result():
            read.add_period(row["BillingPeriodStart"], f"{source.table} (BillingPeriodStart)")
        for number, row in enumerate(bq.query(focus_query(source), job_config=job).result(), start=1):
            read.rows_read += 1
            read.add_row(dict(row.items()), f"{source.table} GPU row {number}")
    except Forbidden as exc:
        raise UnavailableError(
            f"billing source {source.name}: permission denied ({exc.message}): the credentials need "
            f"bigquery.jobs.create on the project and bigquery.tables.getData on {source.table}"
        ) from None
    except NotFound:
        raise UnavailableError(f"billing source {source.name}: no table or view {source.table}") from None
    except GoogleAPIError as exc:
        raise UnavailableError(f"billing source {source.name}: BigQuery said: {exc}") from None
    return commit(store, config, read, source.kind, f"bigquery:{source.table} since {since.isoformat()}")


def sync_focus_source(
    store: Store, config: Config, source: BillingSource, catalog: Sequence[GpuPrice]
) -> BillingResult:
    """One configured FOCUS source, read and committed (`billing sync` calls this for the focus kinds)."""
    if isinstance(source, FocusFilesSource):
        return import_files(store, config, source.paths, catalog, source=source.name, kind=source.kind)
    if isinstance(source, FocusS3Source):
        return sync_s3(store, config, source, catalog)
    if isinstance(source, FocusBigQuerySource):
        return sync_bigquery(store, config, source, catalog)
    raise TypeError(f"not a FOCUS source: {source.kind}")


def import_result(result: BillingResult, metric: CostMetric) -> BillImportResult:
    """The command's result of an import or a FOCUS sync (`auditor.output` renders it)."""
    change = result.change
    return BillImportResult(
        source=result.source,
        kind=result.kind,
        origin=result.origin,
        cost_metric=metric,
        rows_read=result.rows_read,
        gpu_rows=result.gpu_rows,
        billing_periods=result.periods,
        lines=LineChanges(change.added, change.removed, change.changed, change.unchanged),
        gpu_lines_usd=result.gpu_lines_usd,
        deployments=[
            DeploymentBill(name, usd)
            for name, usd in sorted(result.usd_by_deployment.items(), key=lambda kv: str(kv[0]))
            if name is not None
        ],
        unattributed_usd=result.usd_by_deployment.get(None, Decimal(0)),
        warnings=result.warnings,
    )
