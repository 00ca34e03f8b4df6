"""The data model: immutable records that collectors produce and the store keeps.

Units are in the field names. Timestamps are UTC epoch seconds (`ts`, float) or the start of a
minute (`minute_ts`, int, a multiple of 60). `None` always means *unknown* (not measured, not
supported), never zero.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import date
from decimal import Decimal
from enum import StrEnum

MINUTE_S = 60


class UtilizationMetric(StrEnum):
    """The four utilization measures of the design, and `auto` (sm_active, else gpu_util)."""

    AUTO = "auto"
    GPU_UTIL = "gpu_util"
    SM_ACTIVE = "sm_active"
    REQUEST_BUSY = "request_busy"
    THROUGHPUT_UTIL = "throughput_util"


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One reading of one GPU (NVML on the host, or DCGM through Prometheus)."""

    ts: float
    host: str
    gpu_uuid: str
    gpu_index: int
    deployment: str | None = None
    gpu_name: str | None = None
    util_pct: float | None = None
    """NVML `utilization.gpu` / `DCGM_FI_DEV_GPU_UTIL`: share of time any kernel ran (0–100)."""
    mem_util_pct: float | None = None
    sm_active_pct: float | None = None
    """GPM SM utilization or `DCGM_FI_PROF_SM_ACTIVE` × 100 (0–100)."""
    tensor_active_pct: float | None = None
    mem_used_bytes: int | None = None
    mem_total_bytes: int | None = None
    power_w: float | None = None
    energy_j: float | None = None
    """Total energy since the driver loaded: a counter."""
    sm_clock_mhz: int | None = None
    process_count: int | None = None
    process_mem_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class ServerSample:
    """One scrape of one inference server's /metrics (vLLM, SGLang, TGI)."""

    ts: float
    host: str
    deployment: str
    instance: str
    """Which server process: its /metrics URL, or host:port."""
    server_kind: str | None = None
    model_name: str | None = None
    prompt_tokens_total: float | None = None
    generation_tokens_total: float | None = None
    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = None
    """Share of the KV cache in use (0–1)."""
    prefill_seconds_total: float | None = None
    """Seconds finished requests spent in prefill, summed (vLLM): a counter. None: not exposed."""
    decode_seconds_total: float | None = None
    """Seconds finished requests spent in decode, summed (vLLM): a counter. None: not exposed."""


@dataclass(frozen=True, slots=True)
class GpuMinute:
    """A GPU's minute `[minute_ts, minute_ts + 60)`: what was observed of it."""

    minute_ts: int
    host: str
    gpu_uuid: str
    gpu_index: int
    deployment: str | None
    observed_s: float
    """Seconds covered by samples no further apart than the allowed gap; the rest is unknown."""
    util_observed_s: float
    """Of those, seconds with a known utilization (NVML may not support it, on MIG say)."""
    idle_s: float
    """Seconds under the idle threshold, on `sm_active` where known, else `gpu_util`."""
    loaded_s: float
    """Seconds during which some process held GPU memory (a model is loaded)."""
    gpu_util: float | None
    gpu_util_max: float | None
    sm_active: float | None
    energy_j: float | None
    power_mean_w: float | None
    mem_used_max_bytes: int | None
    mem_total_bytes: int | None


@dataclass(frozen=True, slots=True)
class DeploymentMinute:
    """A deployment's minute: tokens served, and its four utilization measures (0–1, None = unknown)."""

    minute_ts: int
    deployment: str
    instances: int
    """Inference-server instances seen this minute."""
    server_observed_s: float
    """Instance-seconds covered by scrapes (two replicas observed all minute: 120)."""
    prompt_tokens: int
    generation_tokens: int
    request_busy_s: float
    """Instance-seconds with at least one request running."""
    requests_running_mean: float | None
    requests_waiting_mean: float | None
    kv_cache_mean: float | None
    kv_cache_max: float | None
    gpu_observed_s: float
    gpu_util: float | None
    sm_active: float | None
    request_busy: float | None
    throughput_util: float | None
    prefill_s: float | None = None
    """Increase of the servers' prefill seconds this minute; None: no server exposed it."""
    decode_s: float | None = None
    """Increase of the servers' decode seconds this minute; None: no server exposed it."""


class CostBasis(StrEnum):
    """Cost bases are kept apart, never mixed in one total (OpenCost's lesson)."""

    INVOICED = "invoiced"
    """What the bill says (AWS Cost Explorer UnblendedCost, the GCP billing export)."""
    AMORTIZED = "amortized"
    """Upfront commitments spread over their term (AWS AmortizedCost, on-prem purchase)."""
    LIST = "list"
    """List price × usage: an estimate (GCP Cloud Catalog, a static configured rate)."""


class CostMetric(StrEnum):
    """Which of a bill line's costs the tool divides by tokens (`billing.cost_metric`); reports name it."""

    EFFECTIVE = "effective"
    """FOCUS `EffectiveCost`: amortized, commitments and upfront fees spread over their term (default)."""
    BILLED = "billed"
    """FOCUS `BilledCost`: what the invoice says for the line."""
    LIST = "list"
    """FOCUS `ListCost`: list price × usage, before any discount."""


COST_METRIC_COLUMNS = {
    CostMetric.EFFECTIVE: "EffectiveCost",
    CostMetric.BILLED: "BilledCost",
    CostMetric.LIST: "ListCost",
}


@dataclass(frozen=True, slots=True)
class CostLine:
    """Spend on one billed resource for one charge period (a day, or an hour where the source has hours),
    in FOCUS terms (FinOps Open Cost and Usage Specification 1.0-1.2).

    `amount_usd` is the cost the tool counts, in USD: the store keeps the line's `EffectiveCost` there
    (× `usd_rate`), and the costing path swaps in the configured metric with `costed`. The FOCUS costs
    themselves stay in the bill's currency, as finance reconciles them. Negative lines (credits, refunds)
    are kept as they are."""

    day: date
    """The charge period's first day, in the config's time zone (what windows select by)."""
    source: str
    """The configured billing source's name (`[[billing.sources]]`), or `static`/`onprem` for a rate."""
    account: str
    """FOCUS `BillingAccountId`."""
    resource: str
    """FOCUS `ResourceId` (an instance id, a node name); `""` when the bill names none."""
    usage_type: str
    """What was used: the instance type or usage type (`BoxUsage:g5.4xlarge`), else the SKU."""
    amount_usd: Decimal
    deployment: str | None = None
    """The deployment the cost is attributed to; None is unattributed (shown, never dropped)."""
    usage_hours: Decimal | None = None
    """Usage quantity in the source's unit (instance-hours on AWS, for example)."""
    gpu_hours: Decimal | None = None
    """GPU-hours billed by this line, when it bills GPUs."""
    basis: CostBasis = CostBasis.INVOICED
    estimated: bool = False
    """The source says this figure may still change (AWS `Estimated`, GCP data not final)."""
    charge_period_start_ts: int | None = None
    """FOCUS `ChargePeriodStart`, UTC epoch seconds (inclusive)."""
    charge_period_end_ts: int | None = None
    """FOCUS `ChargePeriodEnd`, UTC epoch seconds (exclusive)."""
    billing_period_start_ts: int | None = None
    """FOCUS `BillingPeriodStart`, UTC epoch seconds: a re-delivered billing period replaces its lines."""
    billed_cost: Decimal | None = None
    """FOCUS `BilledCost`, in `billing_currency`."""
    effective_cost: Decimal | None = None
    """FOCUS `EffectiveCost` (amortized), in `billing_currency`."""
    list_cost: Decimal | None = None
    """FOCUS `ListCost`, in `billing_currency`."""
    billing_currency: str = "USD"
    """FOCUS `BillingCurrency` (ISO 4217)."""
    usd_rate: Decimal = Decimal(1)
    """USD per unit of `billing_currency` (1 for USD; else the configured `billing.currency_rates`)."""
    charge_category: str | None = None
    """FOCUS `ChargeCategory`: Usage, Purchase, Credit, Tax, Adjustment."""
    pricing_category: str | None = None
    """FOCUS `PricingCategory`: Standard (on demand), Committed, Dynamic (spot), Other."""
    commitment_discount_id: str | None = None
    """FOCUS `CommitmentDiscountId`: the reservation or savings plan the line drew on."""
    provider: str | None = None
    """FOCUS `ProviderName` (AWS, Google Cloud, Microsoft, Oracle)."""
    sub_account: str | None = None
    """FOCUS `SubAccountId` (an AWS member account, a GCP project, an Azure subscription)."""
    region: str | None = None
    """FOCUS `RegionId`."""
    sku_id: str | None = None
    """FOCUS `SkuId`."""
    tags_json: str | None = None
    """FOCUS `Tags`: the line's tags (and Kubernetes labels) as a JSON object."""
    line_key: str = ""
    """Stable identity of the line within its source (a hash of what identifies it, not its amounts): a
    re-import of the same bill finds the same keys and changes nothing. Computed when not given."""

    def __post_init__(self) -> None:
        if not self.line_key:
            object.__setattr__(self, "line_key", cost_line_key(self))

    def cost(self, metric: CostMetric) -> Decimal | None:
        """The metric's cost in USD; None where the line does not state it."""
        value = {
            CostMetric.EFFECTIVE: self.effective_cost,
            CostMetric.BILLED: self.billed_cost,
            CostMetric.LIST: self.list_cost,
        }[metric]
        return None if value is None else value * self.usd_rate

    def costed(self, metric: CostMetric) -> CostLine:
        """This line with `amount_usd` taken from `metric`, where it states it (a rated line states none)."""
        value = self.cost(metric)
        if value is None or value == self.amount_usd:
            return self
        return replace(self, amount_usd=value)


COST_LINE_FIELDS = tuple(f.name for f in fields(CostLine))
"""`CostLine`'s fields in declaration order: what `cost_line_from_fields` takes."""
_COST_LINE_SETTERS = tuple(getattr(CostLine, name).__set__ for name in COST_LINE_FIELDS)


def cost_line_from_fields(values: Sequence[object]) -> CostLine:
    """A `CostLine` from the value of every field, in `COST_LINE_FIELDS` order, `line_key` included:
    what `CostLine(...)` stores, set slot by slot instead of through the frozen dataclass's `__init__`
    (27 `object.__setattr__` calls), half the time. For bulk imports, which build hundreds of thousands."""
    line: CostLine = object.__new__(CostLine)
    for setter, value in zip(_COST_LINE_SETTERS, values, strict=True):
        setter(line, value)
    return line


def cost_line_key(line: CostLine) -> str:
    """What identifies a line within its source (never its amounts), hashed: 32 hex digits."""
    parts = (
        line.account,
        line.sub_account or "",
        line.day.isoformat(),
        "" if line.charge_period_start_ts is None else str(line.charge_period_start_ts),
        "" if line.charge_period_end_ts is None else str(line.charge_period_end_ts),
        line.resource,
        line.usage_type,
        line.sku_id or "",
        line.charge_category or "",
        line.pricing_category or "",
        line.commitment_discount_id or "",
        line.deployment or "",
        line.basis.value if isinstance(line.basis, CostBasis) else str(line.basis),
        line.provider or "",
        line.region or "",
        line.billing_currency or "",
    )
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


class AlertState(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert's lifecycle, keyed by (rule, subject), persisted so a restart forgets nothing."""

    rule: str
    subject: str
    state: AlertState
    severity: str
    first_seen_ts: float
    last_seen_ts: float
    last_sent_ts: float | None
    payload: str
    """JSON: the figures that justify it."""


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Action(StrEnum):
    """What a finding asks for. On one deployment, findings with the same action merge into one; the
    actions that cut what its GPUs cost exclude each other (`SAVING_ACTIONS`): one is recommended, the
    others are shown as its alternatives."""

    MOVE_TO_API = "move-to-api"
    CONSOLIDATE = "consolidate"
    SCALE_DOWN_OFF_HOURS = "scale-down-off-hours"
    UNLOAD_IDLE = "unload-idle"
    KEEP_SELF_HOSTING = "keep-self-hosting"
    ADD_CAPACITY = "add-capacity"
    STOP_OVERSPEND = "stop-overspend"


SAVING_ACTIONS = frozenset(
    {Action.MOVE_TO_API, Action.CONSOLIDATE, Action.SCALE_DOWN_OFF_HOURS, Action.UNLOAD_IDLE}
)
"""Actions whose dollars are a share of what the deployment's GPUs cost: each claims the same dollars,
so a deployment counts one of them."""


@dataclass(frozen=True, slots=True)
class Window:
    """The stretch of time a finding judged, and how much of it was observed."""

    start_ts: float
    end_ts: float
    observed_h: float
    """Hours (GPU-hours for a deployment) with data."""
    expected_h: float
    """Hours (GPU-hours) that were paid for in the window: what coverage is taken of."""
    unit: str = "GPU-h"
    """What the hours count: `GPU-h` (a deployment's or a GPU's), or `h` (wall-clock hours)."""

    @property
    def coverage(self) -> float | None:
        """Observed ÷ expected (0–1); None when nothing was paid for."""
        return None if self.expected_h <= 0 else min(1.0, self.observed_h / self.expected_h)


@dataclass(frozen=True, slots=True)
class Alternative:
    """An action that excludes the one recommended, with its own figure: shown, never added up."""

    rule: str
    action: Action
    text: str
    usd_per_month: Decimal | None


@dataclass(frozen=True, slots=True)
class Finding:
    """What a rule concluded about one subject: a recommendation with the dollars at stake."""

    rule: str
    subject: str
    """A deployment's name, a GPU's UUID, or `fleet`."""
    severity: Severity
    title: str
    text: str
    """The recommendation, in one sentence."""
    usd_per_month: Decimal | None
    """The money at stake a month (the saving, or the overspend); None where it is not about money."""
    figures: tuple[tuple[str, str], ...] = ()
    """(label, value as shown) pairs: the figures that justify it."""
    command: str | None = None
    """The command that shows more (`auditor report --month 2026-10 --deployment llama`)."""
    verdict: bool = True
    """False when the rule could not judge (too little data): then `text` says why, and it is never an
    alert, never counted in a total."""
    deployment: str | None = None
    """The deployment it is about (a GPU's deployment); None for the fleet or a GPU of none."""
    action: Action | None = None
    """What it asks for; the rules' registry stamps each rule's action."""
    window: Window | None = None
    """What was judged: the stretch of time and how much of it was observed (coverage)."""
    basis: str | None = None
    """How the dollars were reached, in words: the hours, the rate, the projection."""
    monthly_cost_usd: Decimal | None = None
    """What the deployment costs a month: no saving on it can be larger."""
    rules: tuple[str, ...] = ()
    """The rules that agree on it (after merging); empty before."""
    merged_subjects: tuple[str, ...] = ()
    """The subjects merged into it (the GPUs of one deployment), when it is about several."""
    alternatives: tuple[Alternative, ...] = ()
    """Actions that exclude this one, with their own figures: shown, never added to a total."""
