"""The data model: immutable records that collectors produce and the store keeps.

Units are in the field names. Timestamps are UTC epoch seconds (`ts`, float) or the start of a
minute (`minute_ts`, int, a multiple of 60). `None` always means *unknown* (not measured, not
supported), never zero.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class CostLine:
    """A day of spend on one billed resource."""

    day: date
    source: str
    """`aws`, `gcp`, `static`, `onprem`."""
    account: str
    resource: str
    usage_type: str
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
