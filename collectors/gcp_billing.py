"""Google Cloud billing: actual spend from the BigQuery billing export; list prices from the Cloud Catalog.

Two bindings, each taking its client in the constructor (the composition root builds them; tests point
the real clients at a local server with anonymous credentials):

- `BillingExport` reads the standard billing export (`gcp_billing_export_v1_*`) with one query per
  sync: Compute Engine GPU lines (accelerator SKUs, and the machine families that carry GPUs) summed per
  day × project × label value × SKU × region. The export's `cost` is a FLOAT64: it is cast to NUMERIC
  in the query and summed there, and arrives as a `Decimal`; credits (committed-use, sustained-use,
  promotions) are summed beside it, so a line's net is cost + credits, to the cent of the invoice.
- `SkuCatalog` lists Compute Engine SKUs (`CloudCatalogClient.list_skus`, free) and prices a GPU-hour
  by GPU model and region from the on-demand GPU SKUs (tiered `unitPrice` in units + nanos). It is a
  *list price*: what a deployment with no export costs by it is an estimate, and is labelled so. The
  GPU SKUs are cached in a file (`SkuCache`) for a week: list prices change rarely.

Missing or refused credentials become `BillingUnavailable`, one line naming the permission
(`bigquery.jobs.create`, `bigquery.tables.getData`, `billing.services.list` is not needed: the catalog
is public but still wants an authenticated caller).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from collectors.interface import BillingUnavailable

log = logging.getLogger("collectors.gcp_billing")

COMPUTE_ENGINE_SERVICE = "services/6F81-5844-456A"
"""The Cloud Catalog's id of Compute Engine, where the GPU SKUs live."""
QUERY_PERMISSION = "bigquery.jobs.create"
READ_PERMISSION = "bigquery.tables.getData"
CATALOG_PERMISSION = "the Cloud Billing API (cloudbilling.googleapis.com) enabled for the project"
MACHINE_SPEC_LABEL = "compute.googleapis.com/machine_spec"
DEFAULT_GPU_FAMILIES = ("a2", "a3", "a4", "g2", "g4")
"""Compute Engine machine families that come with GPUs attached (their cores and RAM are GPU cost)."""
CACHE_TTL_S = 7 * 86400
_NANOS = Decimal(10) ** 9
_TABLE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+$")
_FAMILY = re.compile(r"^[a-z][a-z0-9]{0,9}$")
_PERMISSION_IN_TEXT = re.compile(r"\b(bigquery\.[a-zA-Z]+\.[a-zA-Z]+)\b")

EXPORT_QUERY = """\
SELECT
  DATE(usage_start_time) AS day,
  billing_account_id,
  project.id AS project_id,
  (SELECT l.value FROM UNNEST(labels) AS l WHERE l.key = @label_key LIMIT 1) AS label_value,
  sku.id AS sku_id,
  sku.description AS sku_description,
  location.region AS region,
  (SELECT s.value FROM UNNEST(system_labels) AS s WHERE s.key = @spec_key LIMIT 1) AS machine_spec,
  currency,
  usage.pricing_unit AS pricing_unit,
  SUM(CAST(cost AS NUMERIC)) AS cost,
  SUM(IFNULL((SELECT SUM(CAST(c.amount AS NUMERIC)) FROM UNNEST(credits) AS c), 0)) AS credits,
  SUM(CAST(usage.amount_in_pricing_units AS NUMERIC)) AS usage_amount
FROM `{table}`
WHERE usage_start_time >= TIMESTAMP(@start_day)
  AND usage_start_time < TIMESTAMP(@end_day)
  AND service.description = 'Compute Engine'
  AND (
    REGEXP_CONTAINS(LOWER(sku.description), r'\\bgpu\\b')
    OR REGEXP_CONTAINS(
      IFNULL((SELECT s.value FROM UNNEST(system_labels) AS s WHERE s.key = @spec_key LIMIT 1), ''),
      @families
    )
  )
GROUP BY day, billing_account_id, project_id, label_value, sku_id, sku_description, region,
  machine_spec, currency, pricing_unit
ORDER BY day, project_id, sku_id
"""


@dataclass(frozen=True, slots=True)
class ExportRow:
    """One day of one SKU in one project (and region, label value) from the billing export."""

    day: date
    billing_account: str
    project: str
    label_value: str | None
    sku_id: str
    sku_description: str
    region: str | None
    machine_spec: str | None
    currency: str
    cost: Decimal
    """The export's `cost`: usage at the account's price, before credits."""
    credits: Decimal
    """The credits applied to it (committed-use, sustained-use, promotions): zero or negative."""
    usage_amount: Decimal | None
    pricing_unit: str | None

    @property
    def net(self) -> Decimal:
        """What the invoice charges for it: cost + credits."""
        return self.cost + self.credits

    @property
    def gpu_sku(self) -> bool:
        return bool(re.search(r"\bgpu\b", self.sku_description.lower()))


@dataclass(frozen=True, slots=True)
class ExportFetch:
    start: date
    end: date
    rows: tuple[ExportRow, ...]
    bytes_billed: int | None
    """What BigQuery billed the query for (None when it does not say)."""


def bigquery_client(
    project: str, *, credentials: Any = None, endpoint: str | None = None, location: str | None = None
) -> Any:
    """A BigQuery client: the standard Google credential chain unless `credentials` is given
    (BillingUnavailable when there are none)."""
    from google.api_core.client_options import ClientOptions
    from google.cloud import bigquery

    options = ClientOptions(api_endpoint=endpoint) if endpoint else None
    with _google_errors(f"BigQuery (project {project})"):
        return bigquery.Client(
            project=project, credentials=credentials, client_options=options, location=location
        )


def catalog_client(*, credentials: Any = None, endpoint: str | None = None) -> Any:
    """A Cloud Catalog client on the REST transport (no gRPC channel to keep open)."""
    from google.api_core.client_options import ClientOptions
    from google.cloud import billing_v1

    options = ClientOptions(api_endpoint=endpoint) if endpoint else None
    with _google_errors("the Cloud Catalog", CATALOG_PERMISSION):
        return billing_v1.CloudCatalogClient(
            credentials=credentials, transport="rest", client_options=options
        )


def gpu_families_pattern(families: Iterable[str]) -> str:
    """The RE2 pattern matching a machine spec of one of `families` (`a3-highgpu-8g`)."""
    names = sorted({f.lower() for f in families})
    bad = [f for f in names if not _FAMILY.match(f)]
    if bad:
        raise ValueError(f"not a machine family: {', '.join(bad)}")
    return r"^(" + "|".join(names) + r")-" if names else r"^$"


class BillingExport:
    """Reads GPU spend from a BigQuery standard billing export table (`project.dataset.table`)."""

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        label_key: str | None,
        families: Sequence[str] = DEFAULT_GPU_FAMILIES,
        timeout_s: float = 300.0,
    ) -> None:
        if not _TABLE.match(table):
            raise ValueError(f"billing export table {table!r} is not project.dataset.table")
        self.client = client
        self.table = table
        self.label_key = label_key
        self.families_pattern = gpu_families_pattern(families)
        self.timeout_s = timeout_s

    def query_text(self) -> str:
        return EXPORT_QUERY.format(table=self.table)

    def _job_config(self, start: date, end: date, *, dry_run: bool = False) -> Any:
        from google.cloud import bigquery

        return bigquery.QueryJobConfig(
            dry_run=dry_run,
            use_query_cache=False,
            query_parameters=[
                bigquery.ScalarQueryParameter("label_key", "STRING", self.label_key or ""),
                bigquery.ScalarQueryParameter("spec_key", "STRING", MACHINE_SPEC_LABEL),
                bigquery.ScalarQueryParameter("families", "STRING", self.families_pattern),
                bigquery.ScalarQueryParameter("start_day", "DATE", start),
                bigquery.ScalarQueryParameter("end_day", "DATE", end),
            ],
        )

    def fetch(self, start: date, end: date) -> ExportFetch:
        """The export's GPU lines for days [start, end) (UTC). Raises BillingUnavailable."""
        if not start < end:
            raise ValueError(f"empty window {start}..{end}")
        with _google_errors(self.table):
            job = self.client.query(self.query_text(), job_config=self._job_config(start, end))
            result = job.result(timeout=self.timeout_s)
            rows = tuple(_export_row(dict(row.items())) for row in result)
        billed = getattr(job, "total_bytes_billed", None)
        log.info(
            "bigquery export %s: %s..%s read, %d row(s), %s byte(s) billed",
            self.table,
            start,
            end - timedelta(days=1),
            len(rows),
            billed,
        )
        return ExportFetch(start=start, end=end, rows=rows, bytes_billed=billed)

    def check(self) -> str:
        """Doctor's check: a dry run of the sync's query for yesterday (free: BigQuery plans it, reads
        nothing), proving the credentials, `bigquery.jobs.create` and read access to the table."""
        yesterday = date.today() - timedelta(days=1)  # noqa: DTZ011  (the export's days are UTC dates)
        with _google_errors(self.table):
            job = self.client.query(
                self.query_text(),
                job_config=self._job_config(yesterday, date.today(), dry_run=True),  # noqa: DTZ011
            )
        planned = getattr(job, "total_bytes_processed", None)
        scanned = f", a day's sync scans {planned} byte(s)" if planned is not None else ""
        return f"{self.table} readable ({QUERY_PERMISSION}){scanned}"


def _export_row(row: Mapping[str, Any]) -> ExportRow:
    def dec(value: Any) -> Decimal | None:
        return None if value is None else Decimal(str(value))

    day = row["day"]
    return ExportRow(
        day=day if isinstance(day, date) else date.fromisoformat(str(day)),
        billing_account=str(row.get("billing_account_id") or ""),
        project=str(row.get("project_id") or ""),
        label_value=row.get("label_value") or None,
        sku_id=str(row.get("sku_id") or ""),
        sku_description=str(row.get("sku_description") or ""),
        region=row.get("region") or None,
        machine_spec=row.get("machine_spec") or None,
        currency=str(row.get("currency") or "USD"),
        cost=dec(row.get("cost")) or Decimal(0),
        credits=dec(row.get("credits")) or Decimal(0),
        usage_amount=dec(row.get("usage_amount")),
        pricing_unit=row.get("pricing_unit") or None,
    )


@contextmanager
def _google_errors(subject: str, permission: str = QUERY_PERMISSION) -> Iterator[None]:
    """Google's client errors as `BillingUnavailable`, one line naming the permission."""
    try:
        yield
    except Exception as exc:
        mapped = google_error(exc, subject, permission)
        if mapped is None:
            raise
        raise mapped from None


def google_error(exc: BaseException, subject: str, permission: str) -> BillingUnavailable | None:
    """A Google client or auth exception as one actionable line; None for anything else."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    # Checked first: a refused refresh (InvalidOperation for credentials that cannot refresh) is a
    # DefaultCredentialsError too, but the credentials were found.
    if isinstance(exc, auth.RefreshError | auth.InvalidOperation | api.Unauthenticated | api.Unauthorized):
        return BillingUnavailable(
            f"Google rejected the credentials for {subject}",
            fix="renew the service-account key named by GOOGLE_APPLICATION_CREDENTIALS",
            permission=permission,
        )
    if isinstance(exc, auth.DefaultCredentialsError):
        return BillingUnavailable(
            f"no Google credentials found; {subject} needs {permission}",
            fix="set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run on a VM "
            "with a service account",
            permission=permission,
        )
    if isinstance(exc, api.Forbidden | api.PermissionDenied):
        found = _PERMISSION_IN_TEXT.search(str(exc))
        needed = found.group(1) if found else permission
        return BillingUnavailable(
            f"Google denied {needed} on {subject}",
            fix=f"grant the auditor's service account {needed} (README: Billing, GCP roles)",
            permission=needed,
        )
    if isinstance(exc, api.NotFound):
        return BillingUnavailable(
            f"{subject} not found",
            fix="check the billing export table's name (project.dataset.table) and that the export is on",
        )
    if isinstance(exc, api.GoogleAPIError):
        return BillingUnavailable(f"{subject} failed ({type(exc).__name__})", fix="retry later")
    if isinstance(exc, OSError | TimeoutError):
        return BillingUnavailable(
            f"{subject} cannot be reached ({type(exc).__name__})", fix="check the network path to Google"
        )
    return None


# -- the Cloud Catalog: list prices ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tier:
    start_amount: Decimal
    """Usage (in the SKU's unit) from which this tier's price applies."""
    unit_price: Decimal


@dataclass(frozen=True, slots=True)
class GpuSku:
    """An on-demand Compute Engine GPU SKU and its list price."""

    sku_id: str
    description: str
    regions: tuple[str, ...]
    usage_unit: str
    currency: str
    tiers: tuple[Tier, ...]
    effective_time: str

    def price(self, quantity: Decimal) -> Decimal:
        """The list price of `quantity` units, tier by tier."""
        total = Decimal(0)
        tiers = sorted(self.tiers, key=lambda t: t.start_amount)
        for tier, following in zip(tiers, [*tiers[1:], None], strict=True):
            upper = quantity if following is None else min(quantity, following.start_amount)
            if upper > tier.start_amount:
                total += (upper - tier.start_amount) * tier.unit_price
        return total

    @property
    def hourly(self) -> Decimal:
        """The first hour's price (the first tier's, for GPUs the only one)."""
        return self.price(Decimal(1))


def money(units: Any, nanos: Any) -> Decimal:
    """A `google.type.Money` amount: whole units plus nanos (both carry the sign), exact."""
    return Decimal(int(units or 0)) + Decimal(int(nanos or 0)) / _NANOS


def parse_sku(sku: Mapping[str, Any]) -> GpuSku | None:
    """An on-demand GPU SKU from the catalog's JSON (`services.skus.list`); None for any other SKU."""
    category = sku.get("category", {})
    if category.get("resourceGroup") != "GPU" or category.get("usageType") != "OnDemand":
        return None
    infos = sku.get("pricingInfo") or []
    if not infos:
        return None
    info = infos[-1]
    expression = info.get("pricingExpression", {})
    unit = str(expression.get("usageUnit", ""))
    if unit != "h":
        return None
    rates = expression.get("tieredRates") or []
    if not rates:
        return None
    currencies = {str(r.get("unitPrice", {}).get("currencyCode", "USD")) for r in rates}
    return GpuSku(
        sku_id=str(sku.get("skuId", "")),
        description=str(sku.get("description", "")),
        regions=tuple(sku.get("serviceRegions") or ()),
        usage_unit=unit,
        currency=currencies.pop() if len(currencies) == 1 else "mixed",
        tiers=tuple(
            Tier(
                start_amount=Decimal(str(r.get("startUsageAmount", 0) or 0)),
                unit_price=money(r.get("unitPrice", {}).get("units"), r.get("unitPrice", {}).get("nanos")),
            )
            for r in rates
        ),
        effective_time=str(info.get("effectiveTime", "")),
    )


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def matches_gpu(description: str, gpu_type: str) -> bool:
    """Whether a SKU description ("Nvidia H100 80GB GPU running in Americas") prices `gpu_type`
    (`H100`, `A100-40GB`, `A100 80GB`, `L4`): its model matches, and its memory when either names one
    (a bare `A100` SKU is the 40 GB card)."""
    wanted = _tokens(gpu_type.replace("nvidia", ""))
    have = _tokens(description.split(" running in ")[0])
    models = [t for t in wanted if not t.endswith("gb")]
    if not models or any(m not in have for m in models):
        return False
    wanted_memory = {t for t in wanted if t.endswith("gb")}
    have_memory = {t for t in have if t.endswith("gb") and t[0].isdigit()}
    if wanted_memory and have_memory:
        return wanted_memory == have_memory
    if wanted_memory and models[0] == "a100":
        return wanted_memory == {"40gb"}
    return True


class SkuCatalog:
    """Compute Engine's GPU list prices from the Cloud Catalog (`list_skus`, all pages)."""

    def __init__(self, client: Any, *, currency: str = "USD") -> None:
        self.client = client
        self.currency = currency
        self.requests = 0

    def gpu_skus(self) -> list[GpuSku]:
        from google.cloud import billing_v1

        skus: list[GpuSku] = []
        with _google_errors("the Cloud Catalog", CATALOG_PERMISSION):
            pager = self.client.list_skus(
                request=billing_v1.ListSkusRequest(parent=COMPUTE_ENGINE_SERVICE, currency_code=self.currency)
            )
            for page in pager.pages:
                self.requests += 1
                for sku in page.skus:
                    parsed = parse_sku(json.loads(billing_v1.Sku.to_json(sku)))
                    if parsed is not None:
                        skus.append(parsed)
        log.info("cloud catalog: %d GPU SKU(s) in %d page(s)", len(skus), self.requests)
        return skus

    def check(self) -> str:
        """Doctor's check: the first page of Compute Engine's SKUs (free)."""
        from google.cloud import billing_v1

        with _google_errors("the Cloud Catalog", CATALOG_PERMISSION):
            pager = self.client.list_skus(
                request=billing_v1.ListSkusRequest(parent=COMPUTE_ENGINE_SERVICE, page_size=1)
            )
            next(iter(pager.pages))
        return "Cloud Catalog answered (list prices)"


class SkuCache:
    """The GPU SKUs in a JSON file, refreshed when older than `ttl_s` (written atomically)."""

    def __init__(
        self,
        path: Path,
        fetch: Callable[[], list[GpuSku]],
        *,
        ttl_s: float = CACHE_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.fetch = fetch
        self.ttl_s = ttl_s
        self.clock = clock

    def skus(self) -> tuple[list[GpuSku], bool]:
        """(the SKUs, whether they came from the cache)."""
        cached = self._read()
        if cached is not None:
            return cached, True
        skus = self.fetch()
        self._write(skus)
        return skus, False

    def _read(self) -> list[GpuSku] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if self.clock() - float(data["fetched_ts"]) > self.ttl_s:
                return None
            return [
                GpuSku(
                    **{
                        **s,
                        "regions": tuple(s["regions"]),
                        "tiers": tuple(
                            Tier(Decimal(t["start_amount"]), Decimal(t["unit_price"])) for t in s["tiers"]
                        ),
                    }
                )
                for s in data["skus"]
            ]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no cache, or one this version cannot read: fetch again

    def _write(self, skus: Sequence[GpuSku]) -> None:
        data = {
            "fetched_ts": self.clock(),
            "skus": [
                {
                    **asdict(s),
                    "regions": list(s.regions),
                    "tiers": [
                        {"start_amount": str(t.start_amount), "unit_price": str(t.unit_price)}
                        for t in s.tiers
                    ],
                }
                for s in skus
            ],
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning(
                "cloud catalog cache %s not written (%s): prices are fetched again next time", self.path, exc
            )


def gpu_hour_price(skus: Sequence[GpuSku], gpu_type: str, region: str) -> GpuSku | None:
    """The on-demand SKU pricing one GPU of `gpu_type` in `region`; the plainest description wins
    when several match (`Nvidia H100 80GB GPU` over `Nvidia H100 80GB Mega GPU`)."""
    found = [s for s in skus if region in s.regions and matches_gpu(s.description, gpu_type)]
    if not found:
        return None
    return min(found, key=lambda s: (len(_tokens(s.description)), s.sku_id))
