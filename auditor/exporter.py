"""The daemon's Prometheus exporter: what it sampled, what it costs, and its own health.

A custom collector on its *own* `CollectorRegistry` (never the global default one), reading an
in-memory `ExporterState` that the daemon updates: GPU readings after each sampling pass, cost
figures after each roll-up (costing a month on every scrape would read the store each time).
Unknown figures are left out of the output, never exported as 0.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from auditor.analysis import WindowCost, cost_window
from auditor.config import Config
from auditor.gpu_prices import GpuPrice
from auditor.model import MINUTE_S, GpuSample
from auditor.prices import ApiPriceCatalog
from auditor.store import Store

TOKENS_WINDOW_S = 300
"""tokens/s is the mean over the last five complete rolled-up minutes."""


@dataclass(frozen=True, slots=True)
class DeploymentFigures:
    deployment: str
    tokens_per_s: float | None
    cost_rate_usd_per_h: Decimal | None
    cost_per_mtok_usd: dict[str, Decimal | None]
    """Window (`1h`, `1d`) → cost per million tokens; None where no tokens were served."""
    idle_cost_month_usd: Decimal | None
    breakeven_utilization: dict[str, Decimal]
    """API model → the utilization at which self-hosting costs what that API would."""
    utilization: dict[tuple[str, str], float] = field(default_factory=dict)
    """(window, measure) → the deployment's utilization over the window (0–1), for each of the design's
    measures that is known (`gpu_util`, `sm_active`, `request_busy`, `throughput_util`). In both modes:
    fleet mode exports no per-GPU series."""


@dataclass(frozen=True, slots=True)
class SourceHealth:
    up: bool
    down_since_ts: float | None
    """When it stopped answering (Unix time); None while it answers."""


@dataclass
class ExporterState:
    """What the exporter serves; the daemon writes it, the exporter's thread reads it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    gpu_samples: tuple[GpuSample, ...] = ()
    deployments: tuple[DeploymentFigures, ...] = ()
    last_success_ts: dict[str, float] = field(default_factory=dict)
    errors: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    up: dict[str, bool] = field(default_factory=dict)
    sources: dict[tuple[str, str], SourceHealth] = field(default_factory=dict)
    """(collector, source: a GPU's UUID, an endpoint's URL) → whether it answered, and since when not."""

    def set_gpu_samples(self, samples: Sequence[GpuSample]) -> None:
        with self.lock:
            self.gpu_samples = tuple(samples)

    def set_deployments(self, figures: Sequence[DeploymentFigures]) -> None:
        with self.lock:
            self.deployments = tuple(figures)

    def record_success(self, collector: str, ts: float) -> None:
        with self.lock:
            self.last_success_ts[collector] = ts
            self.up[collector] = True

    def record_source(self, collector: str, source: str, *, up: bool, ts: float) -> None:
        with self.lock:
            before = self.sources.get((collector, source))
            if up:
                self.sources[(collector, source)] = SourceHealth(True, None)
            elif before is None or before.up:
                self.sources[(collector, source)] = SourceHealth(False, ts)

    def record_errors(self, collector: str, kinds: Iterable[str], *, down: bool = False) -> None:
        with self.lock:
            for kind in kinds:
                self.errors[(collector, kind)] += 1
            if down:
                self.up[collector] = False


def tokens_per_s(store: Store, deployment: str, now_ts: float) -> float | None:
    """Tokens served ÷ seconds observed, over the last complete minutes (the minute in progress is left
    out: its row holds only the seconds rolled up so far). Observed seconds, not 60 a row: a minute
    observed for 48 s holds 48 s of tokens. Several instances of a server serve side by side, so their
    observed seconds count once (wall time)."""
    end_ts = now_ts - now_ts % MINUTE_S
    minutes = store.deployment_minutes(end_ts - TOKENS_WINDOW_S, end_ts, deployment)
    observed = [m for m in minutes if m.server_observed_s > 0]
    wall_s = sum(m.server_observed_s / max(m.instances, 1) for m in observed)
    if wall_s <= 0:
        return None
    return sum(m.prompt_tokens + m.generation_tokens for m in observed) / wall_s


def deployment_figures(
    store: Store,
    config: Config,
    now: datetime,
    api_catalog: ApiPriceCatalog,
    gpu_catalog: Sequence[GpuPrice],
) -> list[DeploymentFigures]:
    """Cost figures for every deployment at `now`: the last hour, the last day, the month so far.

    Summed in SQL: the daemon refreshes these every minute, and a month of minute rows is large."""

    def window(start: datetime) -> WindowCost:
        return cost_window(store, config, start, now, api_catalog, gpu_catalog).window

    with store.one_pass():  # the hour, the day and the month share one read of the tier
        hour = window(now - timedelta(hours=1))
        day = window(now - timedelta(days=1))
        local = now.astimezone(config.tz)
        month_start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)
        month = window(month_start) if month_start < now else None
    by_day = {c.deployment: c for c in day.deployments}
    by_month = {c.deployment: c for c in month.deployments} if month else {}
    figures = []
    for cost in hour.deployments:
        day_cost = by_day.get(cost.deployment)
        month_cost = by_month.get(cost.deployment)
        figures.append(
            DeploymentFigures(
                deployment=cost.deployment,
                tokens_per_s=tokens_per_s(store, cost.deployment, now.timestamp()),
                # The rate while paid for: an hour with no active period has no rate, not $0/h.
                cost_rate_usd_per_h=(
                    cost.cost_usd / cost.active_hours if cost.active_hours and cost.cost_known else None
                ),
                cost_per_mtok_usd={
                    "1h": cost.cost_per_mtok_usd,
                    "1d": day_cost.cost_per_mtok_usd if day_cost else None,
                },
                idle_cost_month_usd=month_cost.idle_cost_usd if month_cost else None,
                breakeven_utilization={
                    c.price.ref: c.breakeven_utilization
                    for c in (day_cost.apis if day_cost else [])
                    if c.breakeven_utilization is not None
                },
                utilization={
                    (window, measure): value
                    for window, of in (("1h", cost), ("1d", day_cost))
                    if of is not None
                    for measure, value in asdict(of.measures).items()
                    if value is not None
                },
            )
        )
    return figures


class AuditorMetrics(Collector):
    """prometheus_client's custom-collector contract: `collect()` yields metric families."""

    def __init__(self, state: ExporterState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        with self._state.lock:
            samples = self._state.gpu_samples
            deployments = self._state.deployments
            last_success = dict(self._state.last_success_ts)
            errors = dict(self._state.errors)
            up = dict(self._state.up)
            sources = dict(self._state.sources)
        yield from _gpu_families(samples)
        yield from _deployment_families(deployments)
        yield from _health_families(last_success, errors, up)
        yield from _source_families(sources)


GPU_LABELS = ("Hostname", "gpu", "UUID", "modelName", "deployment")
"""dcgm-exporter's own label names and values (`Hostname` the node, `gpu` the index, `UUID` NVML's
`GPU-…`, `modelName` NVML's device name) plus ours, so that `on(UUID)` or `on(Hostname, gpu)` joins
an auditor series to the DCGM series of the same GPU. A label with an empty value (a deployment or a
model name not known) is no label at all, as in Prometheus."""
_GPU_GAUGES: tuple[tuple[str, str, str, float], ...] = (
    (
        "auditor_gpu_utilization_ratio",
        "NVML utilization.gpu as sampled (share of time a kernel ran)",
        "util_pct",
        0.01,
    ),
    ("auditor_gpu_sm_active_ratio", "GPM SM activity as sampled (Hopper and later)", "sm_active_pct", 0.01),
    ("auditor_gpu_power_watts", "Power draw as sampled", "power_w", 1.0),
    ("auditor_gpu_memory_used_bytes", "GPU memory in use as sampled", "mem_used_bytes", 1.0),
)


def gpu_label_values(sample: GpuSample) -> list[str]:
    """The values of `GPU_LABELS` for one GPU, in dcgm-exporter's form."""
    s = sample
    return [s.host, str(s.gpu_index), s.gpu_uuid, s.gpu_name or "", s.deployment or ""]


def _gpu_families(samples: Sequence[GpuSample]) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "auditor_gpu_info",
        "1 for each GPU sampled: joins a deployment onto dcgm-exporter's series "
        "(DCGM_FI_PROF_SM_ACTIVE * on(UUID) group_left(deployment) auditor_gpu_info)",
        labels=GPU_LABELS,
    )
    for s in samples:
        info.add_metric(gpu_label_values(s), 1.0)
    yield info
    for name, documentation, attribute, scale in _GPU_GAUGES:
        family = GaugeMetricFamily(name, documentation, labels=GPU_LABELS)
        for s in samples:
            value = getattr(s, attribute)
            if value is not None:
                family.add_metric(gpu_label_values(s), value * scale)
        yield family
    energy = CounterMetricFamily(
        "auditor_gpu_energy_joules", "Total energy since the driver loaded (NVML)", labels=GPU_LABELS
    )
    for s in samples:
        if s.energy_j is not None:
            energy.add_metric(gpu_label_values(s), s.energy_j)
    yield energy


def _number(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)


def _deployment_families(deployments: Sequence[DeploymentFigures]) -> Iterator[Metric]:
    tokens = GaugeMetricFamily(
        "auditor_deployment_tokens_per_second",
        f"Tokens served per second (prompt + generated), mean of the last {TOKENS_WINDOW_S // 60} minutes",
        labels=["deployment"],
    )
    rate = GaugeMetricFamily(
        "auditor_deployment_cost_rate_usd_per_hour",
        "Cost over the last hour, per hour",
        labels=["deployment"],
    )
    per_mtok = GaugeMetricFamily(
        "auditor_cost_per_mtok_usd",
        "Cost per million tokens served over the window",
        labels=["deployment", "window"],
    )
    idle = CounterMetricFamily(
        "auditor_idle_cost_usd",
        "Cost of idle GPU time so far this month (resets when a month starts, in the config's time zone)",
        labels=["deployment"],
    )
    breakeven = GaugeMetricFamily(
        "auditor_breakeven_utilization_ratio",
        "Utilization at which self-hosting costs what the API would (last day's token mix)",
        labels=["deployment", "api"],
    )
    utilization = GaugeMetricFamily(
        "auditor_deployment_utilization_ratio",
        "Utilization of the deployment's GPUs over the window (time-weighted over observed time), "
        "by measure: gpu_util, sm_active, request_busy, throughput_util",
        labels=["deployment", "window", "measure"],
    )
    for d in deployments:
        _add(tokens, [d.deployment], d.tokens_per_s)
        _add(rate, [d.deployment], _number(d.cost_rate_usd_per_h))
        for window, value in d.cost_per_mtok_usd.items():
            _add(per_mtok, [d.deployment, window], _number(value))
        _add(idle, [d.deployment], _number(d.idle_cost_month_usd))
        for api, share in d.breakeven_utilization.items():
            _add(breakeven, [d.deployment, api], float(share))
        for (window, measure), ratio in sorted(d.utilization.items()):
            _add(utilization, [d.deployment, window, measure], ratio)
    yield from (tokens, rate, per_mtok, idle, breakeven, utilization)


def _add(family: Any, labels: list[str], value: float | None) -> None:
    if value is not None:
        family.add_metric(labels, value)


def _health_families(
    last_success: dict[str, float], errors: dict[tuple[str, str], int], up: dict[str, bool]
) -> Iterator[Metric]:
    success = GaugeMetricFamily(
        "auditor_collector_last_success_timestamp_seconds",
        "When the collector last gave samples (Unix time)",
        labels=["collector"],
    )
    for collector, ts in sorted(last_success.items()):
        success.add_metric([collector], ts)
    failures = CounterMetricFamily(
        "auditor_collector_errors", "Problems met by each collector, by kind", labels=["collector", "kind"]
    )
    for (collector, kind), count in sorted(errors.items()):
        failures.add_metric([collector, kind], count)
    up_family = GaugeMetricFamily(
        "auditor_collector_up", "1 when the collector's last pass could read its source", labels=["collector"]
    )
    for collector, is_up in sorted(up.items()):
        up_family.add_metric([collector], 1.0 if is_up else 0.0)
    yield from (success, failures, up_family)


def _source_families(sources: dict[tuple[str, str], SourceHealth]) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "auditor_source_up",
        "1 when the source (a GPU, an inference endpoint) answered in the last pass",
        labels=["collector", "source"],
    )
    since = GaugeMetricFamily(
        "auditor_source_down_since_timestamp_seconds",
        "When a source that is down stopped answering (Unix time)",
        labels=["collector", "source"],
    )
    for (collector, source), health in sorted(sources.items()):
        up.add_metric([collector, source], 1.0 if health.up else 0.0)
        if health.down_since_ts is not None:
            since.add_metric([collector, source], health.down_since_ts)
    yield from (up, since)


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (loopback) → (address, port)."""
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    return host or "127.0.0.1", int(port)


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def basic_auth(app: Any, user: str, password: str) -> Any:
    """A WSGI app that asks for HTTP basic credentials before `app` answers."""
    expected = base64.b64encode(f"{user}:{password}".encode()).decode()

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        given = str(environ.get("HTTP_AUTHORIZATION", ""))
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "basic" and hmac.compare_digest(token.strip().encode(), expected.encode()):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("WWW-Authenticate", 'Basic realm="gpu-auditor"'), ("Content-Type", "text/plain")],
        )
        return [b"credentials required\n"]

    return guarded


class Exporter:
    """Serves the registry over HTTP (or HTTPS, with optional client certificates or basic auth) on
    its own thread, through prometheus_client's own `start_http_server`."""

    def __init__(
        self,
        state: ExporterState,
        listen: str,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_client_ca: Path | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        self.state = state
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AuditorMetrics(state))
        self.address, self.port = parse_listen(listen)
        self.tls_cert, self.tls_key, self.tls_client_ca = tls_cert, tls_key, tls_client_ca
        self.basic_auth = basic_auth
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def loopback(self) -> bool:
        return is_loopback(self.address)

    def start(self) -> None:
        """Raises OSError when the address is taken or not ours, ssl.SSLError for a bad certificate."""
        tls: dict[str, Any] = {}
        if self.tls_cert is not None and self.tls_key is not None:
            tls = {"certfile": str(self.tls_cert), "keyfile": str(self.tls_key)}
            if self.tls_client_ca is not None:
                tls |= {"client_cafile": str(self.tls_client_ca), "client_auth_required": True}
        # With basic auth, the server starts on an empty registry and gets the guarded app at once:
        # nothing is ever served without credentials, not even in the instant between the two.
        registry = CollectorRegistry(auto_describe=False) if self.basic_auth else self.registry
        self._server, self._thread = start_http_server(self.port, addr=self.address, registry=registry, **tls)
        if self.basic_auth is not None:
            self._server.set_app(basic_auth(make_wsgi_app(self.registry), *self.basic_auth))
        self.port = self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
