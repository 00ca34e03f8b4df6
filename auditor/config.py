"""Configuration: one TOML file, validated with pydantic when the program starts.

Every error names its key path, the bad value and what is allowed (see `describe_errors`).
Secrets never live in this file: it names the environment variable or the file that holds them.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

from auditor.cron import cron_kwargs
from auditor.model import CostMetric, UtilizationMetric
from auditor.redact import redact

DEFAULT_CONFIG_PATH = Path("/etc/auditor/auditor.toml")
CONFIG_ENV = "AUDITOR_CONFIG"
DEFAULT_EXPORTER_PORT = 9478
"""Not 9400 (dcgm-exporter), 9835 (nvidia_gpu_exporter), 9445 (nvidia_smi_exporter), 9100 (node), 8000
(vLLM), 9090 (Prometheus): the daemon runs beside those on GPU hosts."""
DEFAULT_EXPORTER_LISTEN = f"127.0.0.1:{DEFAULT_EXPORTER_PORT}"
LISTEN_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]*):\d{1,5}$"
SUPPORTED_STORE_DIALECTS = ("sqlite", "postgresql")

MAX_USD = Decimal(10**12)
"""No single amount in a config (a rate, a purchase, a budget) reaches a trillion dollars: a larger one
is a typo (`1e308`), and it would overflow the exact arithmetic of a month's costs."""
MAX_HOURS = 24 * 366 * 100

Fraction = Annotated[float, Field(ge=0, le=1)]
Usd = Annotated[Decimal, Field(ge=0, le=MAX_USD, allow_inf_nan=False)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]


class ConfigError(Exception):
    """The configuration cannot be used. `problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def default_store_url(env: Mapping[str, str] | None = None, euid: int | None = None) -> str:
    """The embedded SQLite store: systemd's StateDirectory, /var/lib/auditor as root, else XDG state."""
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    if env.get("STATE_DIRECTORY"):
        base = Path(env["STATE_DIRECTORY"].split(":")[0])
    elif euid == 0:
        base = Path("/var/lib/auditor")
    else:
        xdg = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local/state")
        base = Path(xdg) / "auditor"
    return f"sqlite:///{base / 'auditor.db'}"


class StoreConfig(_Strict):
    url: str = Field(default_factory=default_store_url)
    """SQLAlchemy URL: `sqlite:////var/lib/auditor/auditor.db` or `postgresql+psycopg://user@host/db`."""
    raw_retention_h: float = Field(48, gt=0, le=24 * 366)
    rollup_retention_days: int = Field(397, gt=0, le=36_600)
    """13 months: a year-over-year comparison of the same month still has its data (the roll-up tiers)."""
    minute_retention_days: int | None = Field(None, gt=0, le=36_600)
    """Minute roll-ups: older time is answered from the tiers (GPU-hours, deployment quarter-hours).
    Unset: 14 days, fewer for a fleet whose GPU minutes would pass `minute_rows_max` (never under 2)."""
    minute_rows_max: int = Field(3_500_000, gt=0)  # auditor.store.DEFAULT_MINUTE_ROWS_MAX
    """GPU-minute rows kept at most when `minute_retention_days` is unset (~1 GB in SQLite): at 1,024
    GPUs that is 2.4 days of minutes, at 8 GPUs the whole 14 days."""

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        parse_store_url(value)
        return value


SUPPORTED_STORE_SCHEMES = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}
"""The URL schemes the store accepts → the driver it uses. `postgresql://` would mean psycopg2 to
SQLAlchemy, which is not a dependency: plain PostgreSQL URLs use psycopg (version 3)."""


def parse_store_url(value: str) -> URL:
    """A SQLAlchemy URL for a dialect and driver the store supports, or ValueError saying what would be.

    The messages never repeat the URL: it may hold a password."""
    from sqlalchemy.engine import make_url  # SQLAlchemy on first use, not at start-up
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except ArgumentError as exc:
        raise ValueError(
            "not a database URL; use sqlite:////path/to/auditor.db or postgresql+psycopg://user@host:5432/db"
        ) from exc
    scheme = url.drivername
    if scheme not in SUPPORTED_STORE_SCHEMES:
        raise ValueError(
            f"unsupported database scheme {scheme!r}; use sqlite:////path/to/auditor.db "
            "or postgresql+psycopg://user@host:5432/db"
        )
    url = url.set(drivername=SUPPORTED_STORE_SCHEMES[scheme])
    if url.get_backend_name() not in SUPPORTED_STORE_DIALECTS:  # pragma: no cover (the table above)
        raise ValueError(f"unsupported database {url.get_backend_name()!r}; use sqlite or postgresql")
    if url.get_backend_name() == "sqlite" and not url.database:
        raise ValueError("the sqlite URL names no file; use sqlite:////var/lib/auditor/auditor.db")
    return url


class DaemonConfig(_Strict):
    sample_interval_s: float = Field(10, ge=0.1, le=3600)
    max_gap_s: float | None = Field(None, gt=0, le=86_400)
    """Samples further apart than this leave unknown time between them (default 3 × the interval)."""
    scrape_timeout_s: float = Field(5, gt=0, le=60)
    """The whole of one inference endpoint's scrape (connect, headers, body) must fit in this; a slow or
    hung endpoint costs its own sample, never another source's."""
    exporter_listen: str = Field(
        DEFAULT_EXPORTER_LISTEN, pattern=r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]*):\d{1,5}$"
    )
    """host:port of the exporter. Loopback by default; another address is served to the network."""
    exporter_tls_cert: Path | None = None
    exporter_tls_key: Path | None = None
    """Serve /metrics over TLS with this certificate and key (PEM files)."""
    exporter_tls_client_ca: Path | None = None
    """Require client certificates signed by this CA (mutual TLS)."""
    exporter_basic_auth_user: str | None = Field(None, min_length=1, pattern=r"^[^:\s]+$")
    exporter_basic_auth_password_env: str = "AUDITOR_EXPORTER_PASSWORD"  # noqa: S105  (a variable's name)
    """With a user set, the password is read from this environment variable, never from this file."""

    @field_validator("exporter_listen")
    @classmethod
    def _port_in_range(cls, value: str) -> str:
        port = int(value.rpartition(":")[2])
        if not 1 <= port <= 65535:
            raise ValueError("the port must be 1 to 65535")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.exporter_tls_cert is None) != (self.exporter_tls_key is None):
            raise ValueError("give exporter_tls_cert and exporter_tls_key together")
        if self.exporter_tls_client_ca is not None and self.exporter_tls_cert is None:
            raise ValueError("exporter_tls_client_ca needs exporter_tls_cert and exporter_tls_key")
        return self

    @property
    def effective_max_gap_s(self) -> float:
        return self.max_gap_s if self.max_gap_s is not None else 3 * self.sample_interval_s


class GpuSelector(_Strict):
    """GPUs of one host: `indexes` as nvidia-smi numbers them, or every GPU of the host when omitted."""

    host: str = Field(min_length=1)
    indexes: list[Annotated[int, Field(ge=0, le=1023)]] | None = None


class ServerEndpoint(_Strict):
    """An inference server's Prometheus endpoint."""

    url: str = Field(pattern=r"^https?://\S+$")
    kind: Literal["auto", "vllm", "sglang", "tgi"] = "auto"
    model_name: str | None = None
    """Only the series with this model label (a server may serve several)."""


def _valid_matchers(value: dict[str, str]) -> dict[str, str]:
    """Prometheus label names; a `~` value must be a regular expression."""
    for label, wanted in value.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", label):
            raise ValueError(f"{label!r} is not a Prometheus label name")
        if wanted.startswith("~"):
            try:
                re.compile(wanted[1:])
            except re.error as exc:
                raise ValueError(f"{label}: not a regular expression ({exc})") from None
    return value


Matchers = Annotated[dict[str, str], AfterValidator(_valid_matchers)]


class FleetConfig(_Strict):
    """Fleet mode: read DCGM and inference-server metrics from a Prometheus (or Thanos, Mimir,
    VictoriaMetrics) instead of sampling this host. Secrets come from the environment or files."""

    url: str = Field(pattern=r"^https?://\S+$")
    """The Prometheus HTTP API's base URL (`/api/v1/...` is appended)."""
    timeout_s: float = Field(30, gt=0, le=600)
    retries: int = Field(3, ge=0, le=10)
    """Attempts after the first for a query that times out, cannot connect or gets a 5xx/429."""
    retry_backoff_s: float = Field(1, ge=0, le=60)
    """The first wait between attempts; it doubles each time."""
    basic_auth_user: str | None = Field(None, min_length=1, pattern=r"^[^:\s]+$")
    basic_auth_password_env: str = "AUDITOR_PROMETHEUS_PASSWORD"  # noqa: S105  (a variable's name)
    basic_auth_password_file: Path | None = None
    bearer_token_env: str | None = None
    """The name of the environment variable holding a bearer token (never the token itself)."""
    bearer_token_file: Path | None = None
    """A file holding a bearer token (a Kubernetes service account's, say); read at every start."""
    ca_file: Path | None = None
    """A PEM CA bundle to verify the server's certificate with (a private CA)."""
    interval_s: float = Field(60, ge=10, le=3600)
    """How often the daemon rolls the fleet up."""
    reread_minutes: int = Field(10, ge=1, le=1440)
    """Each roll-up re-reads this many trailing minutes: samples arrive late (scrape, remote write)."""
    max_gap_s: float = Field(180, ge=60, le=86_400)
    """Per-minute points of a series further apart than this leave unknown time between them."""
    chunk_minutes: int = Field(120, ge=1, le=10_999)
    """Minutes per query_range request (under Prometheus' 11,000 points per series). Memory grows with
    GPUs × this and the points per minute: at 1,024 GPUs scraped every 5 minutes, 360 peaked at 256 MiB
    and 720 at 406 MiB (bench/fleet.py); a 1-minute scrape answers five times the points."""
    gpu_matchers: Matchers = Field(default_factory=dict)
    """Label matchers added to every DCGM query (`{job = "dcgm-exporter"}`); `~regex` for a regex."""
    server_matchers: Matchers = Field(default_factory=dict)
    """Label matchers added to every inference-server query."""

    @model_validator(mode="after")
    def _one_auth(self) -> Self:
        bearer = self.bearer_token_env is not None or self.bearer_token_file is not None
        if self.bearer_token_env is not None and self.bearer_token_file is not None:
            raise ValueError("give bearer_token_env or bearer_token_file, not both")
        if bearer and self.basic_auth_user is not None:
            raise ValueError("give basic_auth_user or a bearer token, not both")
        return self


class StaticPrice(_Strict):
    """A fixed rate: per GPU-hour, per instance-hour, or the catalog's price of an instance type."""

    source: Literal["static"]
    gpu_hourly_usd: Usd | None = None
    instance_hourly_usd: Usd | None = None
    instance_type: str | None = None
    pricing: Literal["on_demand", "reserved_1y", "reserved_3y", "spot"] = "on_demand"
    gpus_per_instance: int | None = Field(None, gt=0, le=1024)

    @model_validator(mode="after")
    def _one_rate(self) -> Self:
        given = [
            k
            for k in ("gpu_hourly_usd", "instance_hourly_usd", "instance_type")
            if getattr(self, k) is not None
        ]
        if not given:
            raise ValueError(
                "give one of gpu_hourly_usd, instance_hourly_usd, or instance_type (catalog price)"
            )
        if self.gpu_hourly_usd is not None and len(given) > 1:
            raise ValueError("gpu_hourly_usd excludes instance_hourly_usd and instance_type")
        if (
            self.instance_hourly_usd is not None
            and self.gpus_per_instance is None
            and self.instance_type is None
        ):
            raise ValueError(
                "instance_hourly_usd needs gpus_per_instance (or an instance_type from the catalog)"
            )
        return self


class AwsPrice(_Strict):
    """Spend from AWS Cost Explorer, attributed by cost-allocation tags or resource IDs."""

    source: Literal["aws"]
    account_id: str | None = Field(None, pattern=r"^\d{12}$")
    tags: dict[str, str] = Field(default_factory=dict)
    resource_ids: list[str] = Field(default_factory=list)
    instance_type: str | None = None
    gpus_per_instance: int | None = Field(None, gt=0, le=1024)

    @model_validator(mode="after")
    def _attributable(self) -> Self:
        if not self.tags and not self.resource_ids:
            raise ValueError("give tags or resource_ids, so that spend can be attributed to this deployment")
        return self


class GcpPrice(_Strict):
    """Spend from the GCP billing export (BigQuery), or list prices from the Cloud Catalog (an estimate)."""

    source: Literal["gcp"]
    project_id: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    billing_export_table: str | None = Field(None, pattern=r"^[\w-]+\.[\w-]+\.[\w-]+$")
    """Kept for configs written before `[[billing.sources]]`: it must name the `table` of a
    `gcp_billing_export` source, which is what reads it (`Config` says so when none does)."""
    instance_type: str | None = None
    gpus_per_instance: int | None = Field(None, gt=0, le=1024)


class OnPremPrice(_Strict):
    """Owned hardware: purchase price spread over its life, plus measured energy × $/kWh × PUE."""

    source: Literal["onprem"]
    purchase_usd: Usd
    amortization_months: int = Field(36, gt=0, le=600)
    kwh_usd: Usd = Decimal("0.12")
    pue: float = Field(1.4, ge=1, le=3)
    hosting_usd_month: Usd = Decimal(0)


class FocusPrice(_Strict):
    """Spend from a FOCUS bill export (AWS Data Exports, Google Cloud's FOCUS view, Azure, OCI), attributed
    by tags (`billing.attribution.tag_keys`, or the tags given here), resource ids, or hosts."""

    source: Literal["focus"]
    billing_source: Name | None = None
    """Only lines of this `[[billing.sources]]` entry (default: any source)."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Lines carrying all these tags (or Kubernetes labels) are this deployment's."""
    resource_ids: list[str] = Field(default_factory=list)
    """Instances or nodes (FOCUS `ResourceId`, or its last path part) that are wholly this deployment's."""
    instance_type: str | None = None
    gpus_per_instance: int | None = Field(None, gt=0, le=1024)


PriceSource = Annotated[
    StaticPrice | AwsPrice | GcpPrice | OnPremPrice | FocusPrice, Field(discriminator="source")
]

BILLED_PRICE_SOURCES = ("aws", "gcp", "focus")
"""Price sources whose cost comes from a bill (`auditor billing import` / `billing sync`), not a rate."""


# -- billing: where bills come from, which cost counts, and how lines find their deployment ----------


class FocusFilesSource(_Strict):
    """FOCUS 1.0-1.2 files on disk (CSV, CSV.gz, Parquet): files, or folders read recursively."""

    kind: Literal["focus_files"]
    name: Name
    paths: list[Path] = Field(min_length=1)


class FocusS3Source(_Strict):
    """An AWS Data Exports FOCUS export in S3: `s3://BUCKET/PREFIX/EXPORT/`, manifests followed."""

    kind: Literal["focus_s3"]
    name: Name
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str = ""
    """The export's folder (`PREFIX/EXPORT`): its `metadata/BILLING_PERIOD=YYYY-MM/` manifests are read."""
    region: str | None = None
    endpoint_url: str | None = Field(None, pattern=r"^https?://\S+$")
    """An S3-compatible endpoint instead of AWS's (credentials from the standard AWS chain)."""


class FocusBigQuerySource(_Strict):
    """A FOCUS table or view in BigQuery (Google Cloud's FOCUS view over the billing export)."""

    kind: Literal["focus_bigquery"]
    name: Name
    table: str = Field(pattern=r"^[\w-]+\.[\w-]+\.[\w$-]+$")
    """`project.dataset.view`."""
    project: str | None = None
    """The project that runs (and pays for) the query; default the table's."""
    location: str | None = None
    api_endpoint: str | None = Field(None, pattern=r"^https?://\S+$")
    """BigQuery's address, when not Google's own (a private endpoint)."""
    months: int = Field(2, ge=1, le=13)
    """Billing periods read each sync: the current one and the one before (revised for weeks after)."""


class CostExplorerSource(_Strict):
    """AWS Cost Explorer (`ce:GetCostAndUsage`), for accounts with no data export: daily GPU instance
    spend grouped by one cost-allocation tag and the instance type. AWS charges $0.01 a request (each
    page); a sync reads the current and previous month (AWS revises them) and older days only once."""

    kind: Literal["aws_cost_explorer"]
    name: Name
    tag_key: str | None = Field("deployment", min_length=1, max_length=128)
    """The cost-allocation tag (activated in the Billing console) whose value names the deployment;
    None groups by linked account instead (lines are then attributed by `billing.attribution`)."""
    account_id: str | None = Field(None, pattern=r"^\d{12}$")
    """The billing (payer) account the lines belong to; default: the credentials' own account."""
    linked_accounts: list[Annotated[str, Field(pattern=r"^\d{12}$")]] = Field(default_factory=list)
    """Only these member accounts (default: every account the credentials see)."""
    instance_families: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,15}$")]] = Field(
        default_factory=list
    )
    """GPU instance families (`g4dn`) besides those of the price catalog and `billing.gpu_instance_types`."""
    profile: str | None = None
    """A named profile of ~/.aws/config (default: the standard credential chain)."""
    region: str = "us-east-1"
    """Cost Explorer's endpoint region (its API lives in us-east-1)."""


class GcpBillingExportSource(_Strict):
    """Google Cloud's standard billing export in BigQuery (`gcp_billing_export_v1_*`): actual spend,
    credits included, of Compute Engine GPUs and GPU machine families."""

    kind: Literal["gcp_billing_export"]
    name: Name
    table: str = Field(pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+$")
    """`project.dataset.gcp_billing_export_v1_XXXXXX_XXXXXX_XXXXXX`."""
    project: str | None = None
    """The project that runs (and pays for) the query; default the table's."""
    label_key: str | None = Field("deployment", min_length=1, max_length=63)
    """The resource label whose value names the deployment."""
    machine_families: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9]{0,9}$")]] = Field(
        default_factory=lambda: ["a2", "a3", "a4", "g2", "g4"]
    )
    """Machine families whose cores and RAM are GPU cost too (their lines are read with the GPU SKUs)."""
    location: str | None = None
    api_endpoint: str | None = Field(None, pattern=r"^https?://\S+$")
    """BigQuery's address, when not Google's own."""


class GcpCatalogSource(_Strict):
    """List prices from the Cloud Catalog API (free) for GCP deployments with no billing export: each
    day's GPU-hours (GPUs × active hours) × the region's on-demand GPU price. An estimate, labelled so."""

    kind: Literal["gcp_catalog"]
    name: Name
    region: str = Field(pattern=r"^[a-z]+-[a-z]+\d+$")
    """Where the GPUs run (`us-central1`): list prices differ by region."""
    deployments: list[Name] = Field(default_factory=list)
    """The deployments it prices (default: every deployment with `price.source = "gcp"`)."""
    api_endpoint: str | None = Field(None, pattern=r"^https?://\S+$")


BillingSource = Annotated[
    FocusFilesSource
    | FocusS3Source
    | FocusBigQuerySource
    | CostExplorerSource
    | GcpBillingExportSource
    | GcpCatalogSource,
    Field(discriminator="kind"),
]
"""One `[[billing.sources]]` entry; `kind` says which (helpers add Cost Explorer and GCP kinds)."""

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
UsdRate = Annotated[Decimal, Field(gt=0, le=Decimal(10**6), allow_inf_nan=False)]


class AttributionConfig(_Strict):
    """How a bill's GPU lines find their deployment. What nothing claims stays unattributed, never dropped."""

    tag_keys: list[str] = Field(default_factory=lambda: ["deployment", "team", "cost-center"], max_length=32)
    """Tag (or Kubernetes label) keys, in order: `deployment`'s value names a deployment; `team` and
    `cost-center` values name a deployment's `team` / `cost_center` where only one deployment has it."""
    resources: dict[str, Name] = Field(default_factory=dict)
    """A static mapping: resource id (an instance id, a node name) → deployment."""
    hosts: dict[str, str] = Field(default_factory=dict)
    """Resource id → the host the daemon sees: the deployments on that host's GPUs share its cost,
    each by its share of the instance's GPUs."""


class BillingConfig(_Strict):
    """`[billing]`: bill sources and how their lines are costed."""

    cost_metric: CostMetric = CostMetric.EFFECTIVE
    """Which FOCUS cost is divided by tokens: `effective` (amortized), `billed` (invoice), `list`."""
    currency_rates: dict[Currency, UsdRate] = Field(default_factory=dict)
    """USD per unit of a bill's currency (`EUR = 1.08`): a non-USD bill is refused without its rate."""
    attribution: AttributionConfig = Field(default_factory=AttributionConfig)
    gpu_instance_types: list[str] = Field(default_factory=list)
    """More GPU instance types or families (`g5`, `Standard_NC24ads_A100_v4`) than the price catalog knows."""
    gpu_sku_keywords: list[str] = Field(default_factory=list)
    """More words that mark a SKU as a GPU (accelerator) SKU, besides `GPU`, `Nvidia`, `Tesla`."""
    sources: list[BillingSource] = Field(default_factory=list)
    sync_cron: str = "17 7 * * *"
    """When the daemon syncs the API sources (Cost Explorer, the GCP export and catalog), in cron syntax,
    in `timezone`: daily, after AWS's and Google's overnight refresh."""

    @field_validator("sync_cron")
    @classmethod
    def _sync_crontab(cls, value: str) -> str:
        cron_kwargs(value, "UTC")
        return value

    @model_validator(mode="after")
    def _unique_sources(self) -> Self:
        names = [s.name for s in self.sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"billing source names must be unique; repeated: {', '.join(repeated)}")
        return self

    def source(self, name: str) -> BillingSource:
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)


class Overheads(_Strict):
    """What self-hosting costs beyond the GPUs, per month: the difference between raw compute and TCO."""

    engineering_usd_month: Usd = Decimal(0)
    """The share of MLOps engineers' time this deployment takes (1 FTE at $240K/year is $20,000)."""
    egress_usd_month: Usd = Decimal(0)
    storage_usd_month: Usd = Decimal(0)
    monitoring_usd_month: Usd = Decimal(0)

    @property
    def total_usd_month(self) -> Decimal:
        return (
            self.engineering_usd_month
            + self.egress_usd_month
            + self.storage_usd_month
            + (self.monitoring_usd_month)
        )


class DeploymentConfig(_Strict):
    """A model served on a set of GPUs: the unit everything is costed and judged by."""

    name: Name
    model: str = Field(min_length=1)
    gpu_type: str = Field(min_length=1)
    gpu_count: int | None = Field(None, gt=0, le=1_000_000)
    """GPUs billed; needed when a GPU selector takes a whole host."""
    gpus: list[GpuSelector] = Field(default_factory=list)
    prometheus_matchers: Matchers = Field(default_factory=dict)
    """Label matchers that pick this deployment's GPUs in fleet mode (DCGM through PromQL): a value is
    matched exactly, or as a fully anchored regex when it starts with `~` (`pod = "~llama-.*"`)."""
    prometheus_server_matchers: Matchers | None = None
    """The same for its inference servers' series; `prometheus_matchers` when not given."""
    servers: list[ServerEndpoint] = Field(default_factory=list)
    price: PriceSource
    overheads: Overheads = Field(default_factory=Overheads)
    compare_to: list[str] = Field(default_factory=list)
    """API models it is comparable to, as `provider:model` or a model name (`auditor prices` lists them)."""
    capacity_tokens_per_s: float | None = Field(None, gt=0, le=1e12)
    """Sustained peak tokens/s (prompt + generated); measured when not given."""
    monthly_budget_usd: Usd | None = None
    team: str | None = None
    """Who the cost is allocated to (the finance CSV's subtotals)."""
    cost_center: str | None = None
    active_from: AwareDatetime | date | None = None
    """When its GPUs began to be paid for (a date: midnight in the config's zone); else its first sample.
    A static or on-prem rate accrues only inside the active period."""
    active_until: AwareDatetime | date | None = None
    """When its GPUs stopped being paid for; else its last sample."""

    @model_validator(mode="after")
    def _gpus_known(self) -> Self:
        if not self.gpus and not self.prometheus_matchers:
            raise ValueError("select its GPUs: gpus = [{host = ..., indexes = [...]}] or prometheus_matchers")
        if self.gpu_count is None and any(sel.indexes is None for sel in self.gpus):
            raise ValueError("a GPU selector without indexes takes the whole host: set gpu_count")
        if self.gpu_count is None and not self.gpus:
            raise ValueError("with prometheus_matchers, set gpu_count (the GPUs that are billed)")
        return self

    @property
    def billed_gpus(self) -> int:
        if self.gpu_count is not None:
            return self.gpu_count
        return sum(len(sel.indexes or ()) for sel in self.gpus)


class ApiPriceOverride(_Strict):
    """A negotiated or private API price, or a correction to the bundled catalog, in USD per Mtok."""

    provider: str = "private"
    input_mtok_usd: Usd
    output_mtok_usd: Usd
    cache_read_mtok_usd: Usd | None = None
    as_of: date | None = None
    source: str | None = None


class PricesConfig(_Strict):
    fetch_updates: bool = False
    """Let genai-prices download newer API prices at run time. Off: the bundled snapshot is used."""
    update_url: str | None = Field(None, pattern=r"^https?://\S+$")
    """Where to fetch from instead of genai-prices' own address (a mirror inside your network)."""
    api: dict[str, ApiPriceOverride] = Field(default_factory=dict)
    gpu_max_age_days: int = Field(180, gt=0, le=36_600)


class _Rule(_Strict):
    enabled: bool = True
    cooldown_h: float = Field(24, ge=0, le=MAX_HOURS)


class MoveToApiRule(_Rule):
    below: Fraction = 0.40
    leave_above: Fraction = 0.45
    window_days: int = Field(7, gt=0, le=366)

    @model_validator(mode="after")
    def _hysteresis(self) -> Self:
        if self.leave_above < self.below:
            raise ValueError("leave_above must be at least below (the alert leaves above where it entered)")
        return self


class SelfHostPaysRule(_Rule):
    above: Fraction = 0.65
    leave_below: Fraction = 0.60
    window_days: int = Field(7, gt=0, le=366)

    @model_validator(mode="after")
    def _hysteresis(self) -> Self:
        if self.leave_below > self.above:
            raise ValueError("leave_below must be at most above (the finding leaves below where it entered)")
        return self


class OptimizeRule(_Rule):
    low: Fraction = 0.40
    high: Fraction = 0.60
    window_days: int = Field(7, gt=0, le=366)
    hysteresis: Fraction = 0.05
    """A firing finding leaves only this far outside the band (no flapping at its edges)."""


class BelowBreakevenRule(_Rule):
    window_days: int = Field(7, gt=0, le=366)
    margin: Fraction = 0.05
    """A firing finding leaves only when utilization is this much above break-even."""


class RunawaySpendRule(_Rule):
    factor: float = Field(2.0, gt=1, le=1000)
    """Fire when the live burn rate exceeds this multiple of the trailing baseline."""
    baseline_days: int = Field(7, gt=0, le=366)
    day_over_day_factor: float = Field(1.5, gt=1, le=1000)
    cooldown_h: float = Field(1, ge=0, le=MAX_HOURS)
    leave_factor: float = Field(1.8, gt=1, le=1000)
    """A firing alert resolves only when the burn rate falls under this multiple of the baseline."""
    live_minutes: int = Field(10, gt=0, le=1440)
    """GPUs seen in the last this many minutes are the ones running now."""
    min_baseline_h: float = Field(24, gt=0, le=MAX_HOURS)
    """Hours of observed history the baseline needs before it judges."""
    min_jump_usd: Usd = Decimal(100)
    """A billed day-over-day jump smaller than this many dollars is noise."""

    @model_validator(mode="after")
    def _hysteresis(self) -> Self:
        if self.leave_factor > self.factor:
            raise ValueError("leave_factor must be at most factor (the alert leaves below where it entered)")
        return self


class IdleLoadedRule(_Rule):
    below: Fraction = 0.05
    hours: float = Field(4, gt=0, le=MAX_HOURS)
    min_mem_used_bytes: int = Field(1 << 30, ge=0, le=1 << 50)
    """Memory in use that means a model is loaded, where the driver does not list processes."""


class OffHoursIdleRule(_Rule):
    below: Fraction = 0.05
    weeks: int = Field(3, gt=0, le=53)
    min_block_h: int = Field(2, gt=0, le=168)
    """Idle stretches shorter than this many hours are not worth a schedule."""


class SaturationRule(_Rule):
    kv_cache_above: Fraction = 0.90
    minutes: int = Field(15, gt=0, le=10_080)
    leave_below_share: Fraction = 0.5
    """A firing alert resolves when fewer than this share of the minutes are saturated."""


class RulesConfig(_Strict):
    utilization_metric: UtilizationMetric = UtilizationMetric.AUTO
    idle_threshold: Fraction = 0.05
    """A GPU under this utilization (0–1), with no requests running, is idle."""
    min_coverage: Fraction = 0.5
    """A window with less than this share of its GPU time observed gives no verdict."""
    move_to_api: MoveToApiRule = Field(default_factory=MoveToApiRule)
    self_host_pays: SelfHostPaysRule = Field(default_factory=SelfHostPaysRule)
    optimize: OptimizeRule = Field(default_factory=OptimizeRule)
    below_breakeven: BelowBreakevenRule = Field(default_factory=BelowBreakevenRule)
    runaway_spend: RunawaySpendRule = Field(default_factory=RunawaySpendRule)
    idle_loaded: IdleLoadedRule = Field(default_factory=IdleLoadedRule)
    off_hours_idle: OffHoursIdleRule = Field(default_factory=OffHoursIdleRule)
    saturation: SaturationRule = Field(default_factory=SaturationRule)


class ReportConfig(_Strict):
    complete_coverage: Fraction = 0.99
    """A report is "complete" only where observed hours ÷ paid-for hours reach this share."""


class SlackConfig(_Strict):
    """Where alerts and the digest go. The token is read from `token_env` or `token_file`, never from here."""

    token_env: str = "SLACK_BOT_TOKEN"  # noqa: S105  (the variable's name, not a token)
    token_file: Path | None = None
    webhook_url_env: str | None = None
    """An incoming-webhook URL's environment variable, instead of a bot token."""
    channel_info: str | None = None
    channel_warning: str | None = None
    channel_critical: str | None = None
    digest_channel: str | None = None
    api_base_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/\S*)?/$")
    """The Slack Web API's address for the bot token, ending in `/` (GovSlack:
    `https://slack-gov.com/api/`, or a proxy); default Slack's own."""
    min_severity: Literal["info", "warning", "critical"] = "warning"
    """Findings below this severity are kept as alerts but not sent."""
    digest_cron: str = "0 9 * * mon"
    """When the weekly digest goes out, in cron syntax (minute hour day month weekday), in `timezone`."""

    @field_validator("digest_cron")
    @classmethod
    def _crontab(cls, value: str) -> str:
        cron_kwargs(value, "UTC")  # ValueError: what is wrong (and the cron form of an old "mon 09:00")
        return value


class Config(_Strict):
    timezone: str = "UTC"
    """IANA name; months, weeks and the digest's schedule follow it."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    prices: PricesConfig = Field(default_factory=PricesConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    slack: SlackConfig = Field(default_factory=SlackConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    billing: BillingConfig = Field(default_factory=BillingConfig)
    deployments: list[DeploymentConfig] = Field(default_factory=list)
    fleet: FleetConfig | None = None
    """Fleet mode (PromQL) instead of sampling this host's GPUs."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("unknown time zone; use an IANA name such as UTC or Europe/Berlin") from exc
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = [d.name for d in self.deployments]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"deployment names must be unique; repeated: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _export_tables_are_sources(self) -> Self:
        tables = {s.table for s in self.billing.sources if isinstance(s, GcpBillingExportSource)}
        for d in self.deployments:
            table = getattr(d.price, "billing_export_table", None)
            if table is not None and table not in tables:
                raise ValueError(
                    f"deployment {d.name}: price.billing_export_table {table} is read by a billing source "
                    f'now; add [[billing.sources]] with kind = "gcp_billing_export", name = "gcp", '
                    f'table = "{table}" (and drop billing_export_table)'
                )
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def deployment(self, name: str) -> DeploymentConfig:
        for deployment in self.deployments:
            if deployment.name == name:
                return deployment
        raise KeyError(name)


def resolve_config_path(explicit: Path | None, env: Mapping[str, str] | None = None) -> Path:
    """`--config`, else `$AUDITOR_CONFIG`, else /etc/auditor/auditor.toml."""
    env = os.environ if env is None else env
    if explicit is not None:
        return explicit
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_CONFIG_PATH


def load_config(path: Path, *, references: bool = True) -> Config:
    """Read and validate a config file; ConfigError lists every problem, one line each.

    This is the one validation path: the daemon, `config check` and every other command call it, so
    what one accepts the others accept. `references` also checks the names the config uses against
    the price catalogs (API models in compare_to, instance types) and against each other."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [
                f"config file {path} not found: pass --config FILE or set {CONFIG_ENV}"
                " (systemd/auditor.example.toml is a commented example)"
            ]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([f"config file {path} is not UTF-8 text: is it the right file?"]) from None
    except OSError as exc:
        raise ConfigError([f"config file {path} cannot be read: {exc.strerror or exc}"]) from None
    config = parse_config(text, source=str(path))
    if references:
        problems = reference_problems(config)
        if problems:
            raise ConfigError([f"{path}: {problem}" for problem in problems])
    return config


def reference_problems(config: Config) -> list[str]:
    """Names the config uses that must exist elsewhere: API models, catalog instance types and their GPU
    type, and GPUs claimed by one deployment only."""
    # Imported here: both modules read this one's types, and the catalogs load only when asked.
    from auditor.gpu_prices import GpuPriceDataError, find_gpu_price, load_gpu_prices
    from auditor.prices import ApiPriceCatalog, UnknownModelError

    problems: list[str] = []
    catalog = ApiPriceCatalog(config.prices.api)
    gpu_rows = None
    claimed: dict[tuple[str, int | None], str] = {}
    for i, deployment in enumerate(config.deployments):
        if not config.prices.fetch_updates:  # fetched prices may know newer models: checked when used
            for j, ref in enumerate(deployment.compare_to):
                try:
                    catalog.get(ref)
                except UnknownModelError as exc:
                    problems.append(f"deployments[{i}].compare_to[{j}]: {exc}")
        price = deployment.price
        if isinstance(price, StaticPrice) and price.instance_type is not None:
            try:
                gpu_rows = gpu_rows if gpu_rows is not None else load_gpu_prices()
                row = find_gpu_price(gpu_rows, price.instance_type, pricing=price.pricing)
            except LookupError as exc:  # unknown type, no price of that kind, or several
                problems.append(f"deployments[{i}].price.instance_type: {exc}")
            except GpuPriceDataError as exc:
                problems.append(f"the packaged GPU price catalog is damaged ({exc}); reinstall gpu-auditor")
            else:
                if row.gpu_type.lower() != deployment.gpu_type.lower():
                    problems.append(
                        f"deployments[{i}].gpu_type: {deployment.gpu_type!r}, but {row.instance_type} has "
                        f"{row.gpu_type} GPUs; set gpu_type = {row.gpu_type!r}"
                    )
        for k, selector in enumerate(deployment.gpus):
            for index in selector.indexes if selector.indexes is not None else [None]:
                for key in ((selector.host, index), (selector.host, None)):
                    other = claimed.get(key)
                    if other is not None and other != deployment.name:
                        what = f"GPU {index}" if index is not None else "every GPU"
                        problems.append(
                            f"deployments[{i}].gpus[{k}]: {what} of host {selector.host!r} is also "
                            f"deployment {other!r}'s; a GPU belongs to one deployment"
                        )
                        break
                claimed.setdefault((selector.host, index), deployment.name)
    return problems


def secret_exposure(path: Path, config: Config) -> str | None:
    """A warning when the config file is readable by every user and holds a password (in a URL)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if not mode & 0o004:
        return None
    urls = {"store.url": config.store.url, "prices.update_url": config.prices.update_url or ""}
    if config.fleet is not None:
        urls["fleet.url"] = config.fleet.url
    for i, deployment in enumerate(config.deployments):
        for j, server in enumerate(deployment.servers):
            urls[f"deployments[{i}].servers[{j}].url"] = server.url
    holding = [key for key, url in urls.items() if _url_password(url)]
    if not holding:
        return None
    return (
        f"config file {path} is readable by every user and holds a password ({', '.join(holding)}): "
        f"chmod 640 {path}, or move the password to the environment (PGPASSWORD) or a .pgpass file"
    )


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        # Decimals, not floats: 2.50 $/h must stay exactly 2.50.
        raw = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([f"{source}: {line}" for line in describe_errors(exc, raw)]) from None


def describe_errors(exc: ValidationError, raw: Any) -> list[str]:
    """One line per error: the key path, what is wrong, the bad value, and what is allowed."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = _loc_path(error["loc"])
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(error["loc"][:-1], raw)
            hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{loc}: unknown key{hint}")
            continue
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            lines.append(f"{loc}: required key is missing")
            continue
        value = error.get("input")
        shown = "" if isinstance(value, dict | list) else f" (got {_show(value)})"
        lines.append(f"{loc or '<top level>'}: {message}{shown}")
    return lines


def _loc_path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif (part in _PRICE_MODELS and path.endswith(".price")) or (
            part in _BILLING_SOURCE_MODELS and path.endswith("]") and ".sources[" in path
        ):
            continue  # pydantic names the union member it tried; the user wrote no such key
        else:
            # A key with a newline or other control character is shown quoted, as TOML writes it,
            # so that every problem stays on one line.
            key = part if part.isprintable() else json.dumps(part)
            path += f".{key}" if path else key
    return path


def _allowed_keys(loc: Sequence[int | str], raw: Any) -> list[str]:
    model: type[BaseModel] | None = Config
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            model = _price_model(part)
            continue
        model = _model_of(field.annotation)
    return sorted(model.model_fields) if model is not None else []


_PRICE_MODELS: dict[str, type[BaseModel]] = {
    "static": StaticPrice,
    "aws": AwsPrice,
    "gcp": GcpPrice,
    "onprem": OnPremPrice,
    "focus": FocusPrice,
}
_BILLING_SOURCE_MODELS: dict[str, type[BaseModel]] = {
    "aws_cost_explorer": CostExplorerSource,
    "gcp_billing_export": GcpBillingExportSource,
    "gcp_catalog": GcpCatalogSource,
    "focus_files": FocusFilesSource,
    "focus_s3": FocusS3Source,
    "focus_bigquery": FocusBigQuerySource,
}


def _price_model(tag: str) -> type[BaseModel] | None:
    """The union member a discriminator's value names (a price `source`, a billing source `kind`)."""
    return _PRICE_MODELS.get(tag) or _BILLING_SOURCE_MODELS.get(tag)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        model: type[BaseModel] = annotation
        return model
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _show(value: Any) -> str:
    text = redact(repr(str(value)) if isinstance(value, Decimal) else repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def redacted(config: Config) -> dict[str, Any]:
    """The effective config as plain data, with every secret hidden: the store URL's password, and
    credentials in any other URL (an inference server's, the price mirror's)."""
    data = config.model_dump(mode="json")
    url = parse_store_url(config.store.url)
    data["store"]["url"] = url.render_as_string(hide_password=True)
    cleaned: dict[str, Any] = _redact_strings(data)
    return cleaned


def _redact_strings(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_strings(v) for v in value]
    return value


def deployments_on_host(config: Config, host: str) -> list[DeploymentConfig]:
    """Deployments with GPUs on this host: the ones whose servers this host's daemon scrapes."""
    return [d for d in config.deployments if any(sel.host == host for sel in d.gpus)]
