"""The typed result of each command that prints figures: what `--json` writes and the terminal shows.

Each result is a frozen dataclass whose field names are the command's JSON keys (the JSON schema is
the field list; `tests/test_output.py` pins it). Money is the exact `Decimal`, never rounded here:
rounding belongs to the human renderers, by the one convention in `auditor.output`. A field marked
`metadata={"json": False}` is for the terminal only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from auditor.at_stake import at_stake_line
from auditor.finding_json import finding_to_json
from auditor.model import MINUTE_S

if TYPE_CHECKING:
    from auditor.at_stake import AtStake
    from auditor.costing import ApiComparison, WhatIf
    from auditor.exporter import DeploymentFigures
    from auditor.gpu_prices import GpuPrice
    from auditor.model import Finding, GpuMinute, GpuSample, ServerSample
    from auditor.prices import ApiPrice

TERMINAL_ONLY: Mapping[str, Any] = {"json": False}

# -- status ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusGpu:
    host: str
    gpu_index: int
    gpu_uuid: str
    gpu_name: str | None
    deployment: str | None
    age_s: float
    util_pct: float | None
    sm_active_pct: float | None
    mem_used_bytes: int | None
    mem_total_bytes: int | None
    power_w: float | None
    energy_j: float | None
    process_count: int | None


@dataclass(frozen=True, slots=True)
class StatusDeployment:
    deployment: str
    tokens_per_s: float | None
    cost_rate_usd_per_h: Decimal | None
    cost_per_mtok_usd_1h: Decimal | None
    cost_per_mtok_usd_1d: Decimal | None
    idle_cost_month_usd: Decimal | None
    requests_running: float | None
    servers_seen: int


@dataclass(frozen=True, slots=True)
class StatusResult:
    """`auditor status`: the latest sample of each GPU, each deployment's figures, each source's state."""

    window_minutes: int
    gpus: tuple[StatusGpu, ...]
    deployments: tuple[StatusDeployment, ...]
    sources: tuple[Mapping[str, Any], ...]
    now_ts: float = field(metadata=TERMINAL_ONLY)
    timezone: tzinfo = field(metadata=TERMINAL_ONLY)


def _newest(samples: Sequence[Any], key: Callable[[Any], Any]) -> list[Any]:
    """The newest sample of each key (samples come oldest first), by host, GPU index and instance."""
    latest: dict[Any, Any] = {}
    for s in samples:
        latest[key(s)] = s
    return sorted(
        latest.values(), key=lambda s: (s.host, getattr(s, "gpu_index", 0), getattr(s, "instance", ""))
    )


def status_result(
    *,
    minutes: int,
    now: float,
    tz: tzinfo,
    gpus: Sequence[GpuSample],
    servers: Sequence[ServerSample],
    figures: Sequence[DeploymentFigures],
    sources: Sequence[Mapping[str, Any]],
    fleet_gpus: Sequence[StatusGpu] = (),
) -> StatusResult:
    """From the samples of the window (the newest of each GPU and server count), the deployments'
    figures and the sources' states; in fleet mode the GPUs of its newest minutes (`fleet_gpus`)."""
    newest_servers = _newest(servers, key=lambda s: (s.deployment, s.instance))
    return StatusResult(
        window_minutes=minutes,
        gpus=(*(_status_gpu(s, now) for s in _newest(gpus, key=lambda s: s.gpu_uuid)), *fleet_gpus),
        deployments=tuple(_status_deployment(f, newest_servers) for f in figures),
        sources=tuple(sources),
        now_ts=now,
        timezone=tz,
    )


def status_gpus_of_minutes(rows: Sequence[GpuMinute], now: float) -> list[StatusGpu]:
    """Fleet mode keeps no samples: each GPU's newest rolled-up minute (oldest first in `rows`) stands
    for its latest reading, aged from the minute's end. What a minute does not hold is unknown: the
    energy counter, the model's name, the processes (DCGM lists none)."""
    newest = _newest(rows, key=lambda r: r.gpu_uuid)
    return [
        StatusGpu(
            host=r.host,
            gpu_index=r.gpu_index,
            gpu_uuid=r.gpu_uuid,
            gpu_name=None,
            deployment=r.deployment,
            age_s=now - (r.minute_ts + MINUTE_S),
            util_pct=None if r.gpu_util is None else r.gpu_util * 100,
            sm_active_pct=None if r.sm_active is None else r.sm_active * 100,
            mem_used_bytes=r.mem_used_max_bytes,
            mem_total_bytes=r.mem_total_bytes,
            power_w=r.power_mean_w,
            energy_j=None,
            process_count=None,
        )
        for r in newest
        if r.observed_s > 0
    ]


def _status_gpu(s: GpuSample, now: float) -> StatusGpu:
    return StatusGpu(
        host=s.host,
        gpu_index=s.gpu_index,
        gpu_uuid=s.gpu_uuid,
        gpu_name=s.gpu_name,
        deployment=s.deployment,
        age_s=now - s.ts,
        util_pct=s.util_pct,
        sm_active_pct=s.sm_active_pct,
        mem_used_bytes=s.mem_used_bytes,
        mem_total_bytes=s.mem_total_bytes,
        power_w=s.power_w,
        energy_j=s.energy_j,
        process_count=s.process_count,
    )


def _status_deployment(f: DeploymentFigures, servers: Sequence[ServerSample]) -> StatusDeployment:
    own = [s for s in servers if s.deployment == f.deployment]
    running = [s.requests_running for s in own if s.requests_running is not None]
    return StatusDeployment(
        deployment=f.deployment,
        tokens_per_s=f.tokens_per_s,
        cost_rate_usd_per_h=f.cost_rate_usd_per_h,
        cost_per_mtok_usd_1h=f.cost_per_mtok_usd.get("1h"),
        cost_per_mtok_usd_1d=f.cost_per_mtok_usd.get("1d"),
        idle_cost_month_usd=f.idle_cost_month_usd,
        requests_running=sum(running) if running else None,
        servers_seen=len(own),
    )


# -- rules check -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TotalAtStake:
    usd_per_month: Decimal
    cost_usd_per_month: Decimal
    deployments: int
    capped: tuple[str, ...]
    overspend_usd_per_month: Decimal
    text: str


@dataclass(frozen=True, slots=True)
class FindingsResult:
    """`auditor rules check`: the findings, most dollars first, and the total they put at stake."""

    now: datetime
    findings: tuple[Mapping[str, Any], ...]
    """Each finding as data (`finding_data`): every field, money exact."""
    total_at_stake: TotalAtStake
    found: tuple[Finding, ...] = field(metadata=TERMINAL_ONLY)
    nothing_found: str = field(metadata=TERMINAL_ONLY)
    """What "no findings" means here: which store, as of when, why nothing was decided."""


def finding_data(finding: Finding) -> dict[str, Any]:
    """A finding's output form: the stored form with money exact and figures as label → value."""
    data = finding_to_json(finding, money=lambda usd: usd)
    data["figures"] = dict(finding.figures)
    return data


def total_at_stake(stake: AtStake) -> TotalAtStake:
    return TotalAtStake(
        usd_per_month=stake.usd_per_month,
        cost_usd_per_month=stake.cost_usd_per_month,
        deployments=stake.deployments,
        capped=stake.capped,
        overspend_usd_per_month=stake.overspend_usd_per_month,
        text=at_stake_line(stake),
    )


def findings_result(
    now: datetime, findings: Sequence[Finding], stake: AtStake, nothing_found: str
) -> FindingsResult:
    return FindingsResult(
        now=now,
        findings=tuple(finding_data(f) for f in findings),
        total_at_stake=total_at_stake(stake),
        found=tuple(findings),
        nothing_found=nothing_found,
    )


def whole_tokens(count: Decimal | None) -> int | None:
    """A derived token count (a break-even volume) in whole tokens, as every count is written."""
    return None if count is None else round(count)


# -- breakeven ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Volume:
    prompt_tokens: int
    generation_tokens: int


@dataclass(frozen=True, slots=True)
class SelfHosted:
    gpus: int
    gpu_hourly_usd: Decimal
    hours: Decimal
    hours_basis: str
    """What the hours are: `given`, a calendar month's (`2026-10 in UTC`), or a year's average month."""
    monthly_usd: Decimal
    overhead_usd_month: Decimal
    monthly_tco_usd: Decimal
    capacity_tokens_per_s: float | None
    utilization: Decimal | None


@dataclass(frozen=True, slots=True)
class ApiAlternative:
    provider: str
    model: str
    input_mtok_usd: Decimal
    output_mtok_usd: Decimal
    price_source: str
    monthly_usd: Decimal
    savings_usd_month: Decimal
    """Self-hosted TCO − the API's cost: what moving saves a month (negative: it costs more)."""
    breakeven_tokens_per_month: int | None
    """A token count: whole tokens."""
    breakeven_utilization: Decimal | None

    @property
    def ref(self) -> str:
        return f"{self.provider}:{self.model}"


@dataclass(frozen=True, slots=True)
class BreakevenResult:
    """`auditor breakeven`: a month of self-hosting against each API, and the verdict."""

    volume: Volume
    self_hosted: SelfHosted
    apis: tuple[ApiAlternative, ...]
    verdict: str
    notes: tuple[str, ...]
    """How the GPUs were priced (from the catalog: the row and its date; whole instances)."""


def breakeven_result(
    what_if: WhatIf,
    comparisons: Sequence[ApiComparison],
    verdict: str,
    notes: Sequence[str],
    hours_basis: str,
) -> BreakevenResult:
    return BreakevenResult(
        volume=Volume(what_if.prompt_tokens, what_if.generation_tokens),
        self_hosted=SelfHosted(
            gpus=what_if.gpus,
            gpu_hourly_usd=what_if.gpu_hourly_usd,
            hours=what_if.hours,
            hours_basis=hours_basis,
            monthly_usd=what_if.monthly_usd,
            overhead_usd_month=what_if.overhead_usd_month,
            monthly_tco_usd=what_if.monthly_tco_usd,
            capacity_tokens_per_s=what_if.capacity_tokens_per_s,
            utilization=what_if.utilization,
        ),
        apis=tuple(
            ApiAlternative(
                provider=c.price.provider,
                model=c.price.model,
                input_mtok_usd=c.price.input_mtok_usd,
                output_mtok_usd=c.price.output_mtok_usd,
                price_source=c.price.source,
                monthly_usd=c.usd,
                savings_usd_month=c.savings_usd,
                breakeven_tokens_per_month=whole_tokens(c.breakeven_tokens_per_month),
                breakeven_utilization=c.breakeven_utilization,
            )
            for c in comparisons
        ),
        verdict=verdict,
        notes=tuple(notes),
    )


# -- prices ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpuPriceRow:
    provider: str
    instance_type: str
    gpu_type: str
    gpus: int
    pricing: str
    instance_hourly_usd: Decimal
    gpu_hourly_usd: Decimal
    region: str
    as_of: str
    source_url: str
    stale: bool
    age_days: int = field(metadata=TERMINAL_ONLY)


@dataclass(frozen=True, slots=True)
class ApiPriceRow:
    provider: str
    model: str
    input_mtok_usd: Decimal
    output_mtok_usd: Decimal
    cache_read_mtok_usd: Decimal | None
    source: str
    as_of: str | None


@dataclass(frozen=True, slots=True)
class PricesResult:
    """`auditor prices`: GPU prices (our catalog) and API prices, with their dates."""

    gpu: tuple[GpuPriceRow, ...]
    api: tuple[ApiPriceRow, ...]


def prices_result(
    gpu_rows: Sequence[GpuPrice], api_rows: Sequence[ApiPrice], stale: Sequence[GpuPrice], today: date
) -> PricesResult:
    stale_ids = {id(r) for r in stale}
    return PricesResult(
        gpu=tuple(
            GpuPriceRow(
                provider=r.provider,
                instance_type=r.instance_type,
                gpu_type=r.gpu_type,
                gpus=r.gpus,
                pricing=r.pricing,
                instance_hourly_usd=r.instance_hourly_usd,
                gpu_hourly_usd=r.gpu_hourly_usd,
                region=r.region,
                as_of=r.as_of.isoformat(),
                source_url=r.source_url,
                stale=id(r) in stale_ids,
                age_days=(today - r.as_of).days,
            )
            for r in gpu_rows
        ),
        api=tuple(
            ApiPriceRow(
                provider=p.provider,
                model=p.model,
                input_mtok_usd=p.input_mtok_usd,
                output_mtok_usd=p.output_mtok_usd,
                cache_read_mtok_usd=p.cache_read_mtok_usd,
                source=p.source,
                as_of=p.as_of.isoformat() if p.as_of else None,
            )
            for p in api_rows
        ),
    )


@dataclass(frozen=True, slots=True)
class FleetRollupResult:
    """`auditor fleet rollup`: the window rolled up from Prometheus and what it took."""

    window_start: datetime
    window_end: datetime
    """Exclusive."""
    gpu_minutes: int
    deployment_minutes: int
    chunks: int
    requests: int
    """PromQL requests made (constant in the number of GPUs: per chunk, not per series)."""
    seconds: float
    skipped: bool
    """Another replica held the fleet roll-up lock: nothing was done here."""
