"""Fleet mode's source: DCGM and inference-server metrics read from Prometheus with PromQL.

The one binding module for Prometheus (prometheus-api-client over a `requests` session that carries
basic auth or a bearer token, and a private CA). Every query is a `query_range` at a one-minute step
with the aggregation done by the server (`avg_over_time`, `max_over_time`, `last_over_time` over
each minute), so a window costs a fixed number of requests however many GPUs the fleet has:
8 DCGM queries and 5 inference-server queries per chunk of at most `chunk_minutes` steps (under
Prometheus' 11,000 points per series).

What a minute's point means: the step evaluated at `m + 60` looks back `[59999ms]`, so minute `m`
holds the samples taken in `(m, m + 60]` — in Prometheus 2 (both ends of a range included) and 3
(left end excluded) alike. Each series' points become `GpuSample`/`ServerSample` records stamped
`m + 60`, and `auditor.rollup` rolls them up exactly as it rolls up a host's samples: two points no
more than `max_gap_s` apart make observed time, valued by the later one; a longer gap is unknown
time; a counter that goes down was reset (Prometheus' rule), and its increase across a gap still
counts, in the minute the series comes back. Counters are read as each minute's last sample: a reset
*within* one minute loses that minute's increase before the reset (exact at a scrape interval of a
minute or more). A minute is idle when its mean activity is under the threshold; a server minute is
busy when its mean running requests are above zero. A series Prometheus marks stale (its target
gone) simply has no points: unknown, never zero.

DCGM's labels: `UUID`, `gpu`, `Hostname`, `modelName` (and `pod`, `namespace`, `container` under
Kubernetes; `GPU_I_ID`/`GPU_I_PROFILE` for a MIG instance, which is stored as `UUID/GPU_I_ID`: MIG
has no `DCGM_FI_DEV_GPU_UTIL`, its activity comes from the profiling fields).
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from auditor.fleet import GpuBlock
from auditor.model import MINUTE_S, ServerSample
from auditor.redact import redact, register_secret
from collectors.interface import CollectorError, CollectorUnavailable
from collectors.metric_catalog import CATALOG, Field

RANGE = "59999ms"
"""A minute's look-back, one millisecond short: a sample on the minute boundary belongs to one minute."""
MIB = 1 << 20
MAX_STEPS = 10_999
"""Prometheus refuses a query_range of more than 11,000 points per series."""
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})

GPU_QUERIES: dict[str, tuple[str, str]] = {
    # field: (function over the minute, DCGM metric)
    "util": ("avg_over_time", "DCGM_FI_DEV_GPU_UTIL"),
    "sm": ("avg_over_time", "DCGM_FI_PROF_SM_ACTIVE"),
    "gr": ("avg_over_time", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"),
    "tensor": ("avg_over_time", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"),
    "power": ("avg_over_time", "DCGM_FI_DEV_POWER_USAGE"),
    "fb_used": ("max_over_time", "DCGM_FI_DEV_FB_USED"),
    "energy": ("last_over_time", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"),
}
"""Units as dcgm-exporter reports them: utilization %, profiling ratios 0–1, W, MiB, mJ (a counter)."""

MEMORY_TOTAL = "fb_total"
"""The eighth GPU query: a GPU's memory, MiB. dcgm-exporter serves `DCGM_FI_DEV_FB_TOTAL` only when
configured to; its default counters have FB_USED and FB_FREE (and, since 3.3, FB_RESERVED), which
add up to it. Without it a fleet's GPUs had no memory size (the host path's `mem_total_bytes`)."""

SERVER_FUNCTIONS: dict[Field, str] = {
    "prompt_tokens_total": "last_over_time",
    "generation_tokens_total": "last_over_time",
    "requests_running": "avg_over_time",
    "requests_waiting": "avg_over_time",
    "kv_cache_usage": "avg_over_time",
}
GPU_LABELS = ("UUID", "gpu", "Hostname", "modelName", "GPU_I_ID")


class PrometheusUnavailable(CollectorUnavailable):
    """Prometheus did not answer (after retries): the window is left unknown and read again later."""


class PrometheusQueryError(CollectorError):
    """Prometheus refused a query (a 4xx other than 408/429): retrying will not help."""


@dataclass(frozen=True, slots=True)
class PromAuth:
    """Credentials for the Prometheus URL (never logged: registered as secrets when read)."""

    basic_user: str | None = None
    basic_password: str | None = None
    bearer_token: str | None = None
    ca_file: Path | None = None

    @classmethod
    def from_sources(
        cls,
        *,
        basic_user: str | None,
        password_env: str,
        password_file: Path | None,
        bearer_env: str | None,
        bearer_file: Path | None,
        ca_file: Path | None,
        env: Mapping[str, str],
    ) -> PromAuth:
        """Read the secrets from the environment or files; CollectorUnavailable says which is missing."""
        password = token = None
        if basic_user is not None:
            if password_file is not None:
                password = _read_secret(password_file, "fleet.basic_auth_password_file")
            else:
                password = env.get(password_env)
                if not password:
                    raise CollectorUnavailable(
                        f"fleet.basic_auth_user is set but ${password_env} is empty",
                        kind="config",
                        fix=f"export {password_env}, or set fleet.basic_auth_password_file",
                    )
        if bearer_file is not None:
            token = _read_secret(bearer_file, "fleet.bearer_token_file")
        elif bearer_env is not None:
            token = env.get(bearer_env)
            if not token:
                raise CollectorUnavailable(
                    f"fleet.bearer_token_env names ${bearer_env}, which is empty",
                    kind="config",
                    fix=f"export {bearer_env}",
                )
        for secret in (password, token):
            if secret:
                register_secret(secret)
        return cls(basic_user, password, token, ca_file)


def _read_secret(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CollectorUnavailable(
            f"{key} {path} cannot be read ({exc.strerror or exc})", kind="config", fix="check the path"
        ) from None


def connect(url: str, auth: PromAuth, *, timeout_s: float) -> PrometheusConnect:
    """A PrometheusConnect whose session carries the credentials and CA; its own retries are off
    (`PromQL` retries with backoff, and counts every request)."""
    session = requests.Session()
    if auth.ca_file is not None:
        session.verify = str(auth.ca_file)
    if auth.basic_user is not None:
        session.auth = (auth.basic_user, auth.basic_password or "")
    headers = {"Authorization": f"Bearer {auth.bearer_token}"} if auth.bearer_token else None
    return PrometheusConnect(
        url=url.rstrip("/"),
        headers=headers,
        session=session,
        retry=Retry(total=0, raise_on_status=False),
        timeout=math.ceil(timeout_s),
    )


def shown(url: str) -> str:
    return redact(re.sub(r"//[^/@]*@", "//", url))


class PromQL:
    """query_range with retries on an allowlist (connection errors, timeouts, 408/429/5xx), doubling
    waits, and a count of every request sent (the benchmark's figure)."""

    def __init__(
        self,
        client: PrometheusConnect,
        *,
        retries: int = 3,
        backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.retries = retries
        self.backoff_s = backoff_s
        self.sleep = sleep
        self.requests = 0

    def range(self, query: str, start_ts: int, end_ts: int, step_s: int) -> list[dict[str, Any]]:
        wait = self.backoff_s
        where = shown(str(self.client.url))
        for attempt in range(self.retries + 1):
            self.requests += 1
            try:
                result: list[dict[str, Any]] = self.client.custom_query_range(
                    query,
                    start_time=datetime.fromtimestamp(start_ts, UTC),
                    end_time=datetime.fromtimestamp(end_ts, UTC),
                    step=str(step_s),
                )
                return result
            except requests.Timeout:
                problem = f"Prometheus at {where} did not answer within {self.client._timeout} s"
            except requests.ConnectionError:
                problem = f"cannot connect to Prometheus at {where}"
            except requests.RequestException as exc:
                problem = f"Prometheus at {where}: {type(exc).__name__}"
            except PrometheusApiClientException as exc:
                status = _status(str(exc))
                if status is not None and status not in RETRY_STATUS:
                    raise PrometheusQueryError(
                        f"Prometheus at {where} refused a query (HTTP {status}): {_reason(str(exc))}",
                        kind="query",
                        fix="check fleet.url, its credentials and the matchers in the config",
                    ) from None
                problem = f"Prometheus at {where} answered HTTP {status}"
            except ValueError:  # a body that is not JSON: a proxy's error page
                problem = f"Prometheus at {where} answered something that is not its API's JSON"
            if attempt < self.retries:
                self.sleep(wait)
                wait *= 2
        raise PrometheusUnavailable(
            f"{problem} ({self.retries + 1} attempts)",
            kind="unreachable",
            fix="the window stays unknown and is read again on the next roll-up",
        )


def _status(message: str) -> int | None:
    found = re.search(r"HTTP Status Code (\d{3})", message)
    return int(found.group(1)) if found else None


def _reason(message: str) -> str:
    found = re.search(r'"error"\s*:\s*"([^"]{0,200})', message)
    return redact(found.group(1)) if found else "see Prometheus' log"


# -- label matchers ------------------------------------------------------------------------------


def selector(matchers: Mapping[str, str], name: str | None = None) -> str:
    """A PromQL selector: `name{label="value", other=~"regex"}` (values escaped)."""
    parts = []
    if name is not None and not re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", name):
        parts.append(f'__name__="{_escape(name)}"')
        name = None
    for label, wanted in sorted(matchers.items()):
        if wanted.startswith("~"):
            parts.append(f'{label}=~"{_escape(wanted[1:])}"')
        else:
            parts.append(f'{label}="{_escape(wanted)}"')
    return (name or "") + "{" + ",".join(parts) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(frozen=True, slots=True)
class DeploymentMatch:
    """A deployment's label matchers, checked on each series' labels (Prometheus' anchored regexes)."""

    name: str
    gpu: Mapping[str, str]
    server: Mapping[str, str]

    def matches(self, labels: Mapping[str, str], *, server: bool) -> bool:
        wanted = self.server if server else self.gpu
        if not wanted:
            return False
        for label, value in wanted.items():
            have = labels.get(label, "")
            if value.startswith("~"):
                if re.fullmatch(value[1:], have) is None:
                    return False
            elif have != value:
                return False
        return True


def match_deployment(
    deployments: Sequence[DeploymentMatch], labels: Mapping[str, str], *, server: bool
) -> str | None:
    for deployment in deployments:
        if deployment.matches(labels, server=server):
            return deployment.name
    return None


# -- the reader ----------------------------------------------------------------------------------


@dataclass
class _GpuSeries:
    """One GPU series' labels and its points, field by field: (columns, values) pieces as read."""

    key: str
    labels: dict[str, str]
    deployment: str | None
    pieces: list[tuple[int, npt.NDArray[np.int64], npt.NDArray[np.float64]]] = field(default_factory=list)


@dataclass
class _ServerMinutes:
    labels: dict[str, str]
    deployment: str
    points: dict[int, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))


class FleetReader:
    """Per-minute samples of every DCGM GPU and inference server a Prometheus holds, over a window,
    from a fixed number of requests per chunk."""

    def __init__(
        self,
        promql: PromQL,
        deployments: Sequence[DeploymentMatch],
        *,
        gpu_matchers: Mapping[str, str] | None = None,
        server_matchers: Mapping[str, str] | None = None,
        chunk_minutes: int = 120,
    ) -> None:
        self.promql = promql
        self.deployments = list(deployments)
        self.gpu_matchers = dict(gpu_matchers or {})
        self.server_matchers = dict(server_matchers or {})
        self.chunk_minutes = min(chunk_minutes, MAX_STEPS)

    @property
    def requests(self) -> int:
        return self.promql.requests

    def gpu_queries(self) -> dict[str, str]:
        queries = {
            key: f"{function}({selector(self.gpu_matchers, metric)}[{RANGE}])"
            for key, (function, metric) in GPU_QUERIES.items()
        }
        total, used, free, reserved = (
            f"last_over_time({selector(self.gpu_matchers, f'DCGM_FI_DEV_FB_{name}')}[{RANGE}])"
            for name in ("TOTAL", "USED", "FREE", "RESERVED")
        )
        # `or` keeps the first form a GPU has (vector matching ignores the metric's name).
        queries[MEMORY_TOTAL] = f"{total} or ({used} + {free} + {reserved}) or ({used} + {free})"
        return queries

    def server_queries(self) -> dict[Field, str]:
        """One query per field; the servers' names joined with `or`, which keeps the first name's series
        where two name the same labels (vLLM ≥ 0.10's KV-cache gauge over the older one)."""
        queries: dict[Field, str] = {}
        for fld, function in SERVER_FUNCTIONS.items():
            names = [e.source for e in sorted(CATALOG, key=lambda e: e.priority) if e.field == fld]
            queries[fld] = " or ".join(
                f"{function}({selector(self.server_matchers, name)}[{RANGE}])" for name in names
            )
        return queries

    def read(self, start_minute_ts: int, end_minute_ts: int) -> tuple[GpuBlock, list[ServerSample]]:
        """The GPUs' points of the minutes in [start, end) as one block (rows by GPU), chunked; server
        samples (stamped at each minute's end) by deployment, instance, time (the roll-up's order)."""
        if start_minute_ts % MINUTE_S or end_minute_ts % MINUTE_S:
            raise ValueError("a fleet window starts and ends on whole minutes")
        gpus: dict[str, _GpuSeries] = {}
        servers: dict[str, _ServerMinutes] = {}
        chunk_s = self.chunk_minutes * MINUTE_S
        for first in range(start_minute_ts, end_minute_ts, chunk_s):
            last = min(first + chunk_s, end_minute_ts) - MINUTE_S
            # Evaluated at each minute's end: the first step at first + 60, the last at last + 60.
            for number, query in enumerate(self.gpu_queries().values()):
                for series in self.promql.range(query, first + MINUTE_S, last + MINUTE_S, MINUTE_S):
                    self._add_gpu(gpus, number, series, start_minute_ts)
            for fld, query in self.server_queries().items():
                for series in self.promql.range(query, first + MINUTE_S, last + MINUTE_S, MINUTE_S):
                    self._add_server(servers, fld, series)
        width = (end_minute_ts - start_minute_ts) // MINUTE_S
        return _gpu_block(gpus, start_minute_ts, width), _server_samples(servers)

    def _add_gpu(
        self, gpus: dict[str, _GpuSeries], number: int, series: Mapping[str, Any], start: int
    ) -> None:
        labels = _labels(series)
        uuid = labels.get("UUID")
        if not uuid:
            return  # not a GPU's series (a dcgm-exporter's own)
        instance = labels.get("GPU_I_ID")
        gpu_key = f"{uuid}/{instance}" if instance else uuid
        deployment = match_deployment(self.deployments, labels, server=False)
        # A GPU that moved between pods has a series per pod: keep them apart, each with its deployment.
        series_key = f"{gpu_key}\0{deployment or ''}"
        entry = gpus.get(series_key)
        if entry is None:
            entry = gpus[series_key] = _GpuSeries(gpu_key, labels, deployment)
        points = series.get("values") or ()
        if points:
            array = np.array(points, dtype=np.float64).reshape(-1, 2)
            # The step at m + 60 is minute m's point.
            columns = np.rint((array[:, 0] - start) / MINUTE_S).astype(np.int64) - 1
            entry.pieces.append((number, columns, array[:, 1]))

    def _add_server(self, servers: dict[str, _ServerMinutes], fld: str, series: Mapping[str, Any]) -> None:
        labels = _labels(series)
        deployment = match_deployment(self.deployments, labels, server=True)
        if deployment is None:
            return
        instance = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        entry = servers.get(instance)
        if entry is None:
            entry = servers[instance] = _ServerMinutes(labels, deployment)
        for ts, value in series.get("values", ()):
            number = float(value)
            if math.isfinite(number):
                entry.points[int(float(ts))][fld] = number


def _labels(series: Mapping[str, Any]) -> dict[str, str]:
    """A series' labels without its name (`last_over_time` keeps it, the other functions drop it)."""
    return {k: str(v) for k, v in series.get("metric", {}).items() if k != "__name__"}


_UTIL, _SM, _GR, _TENSOR, _POWER, _FB, _ENERGY, _FB_TOTAL = range(len(GPU_QUERIES) + 1)


def _gpu_block(gpus: Mapping[str, _GpuSeries], start_minute_ts: int, width: int) -> GpuBlock:
    """The series' points on one grid of minutes, a row per GPU (sorted by key). Where two series of
    one GPU (a pod change) both have a minute, the first read with a deployment wins, else the first."""
    order = list(gpus.values())
    raw = np.full((len(GPU_QUERIES) + 1, len(order), width), np.nan)
    for row, entry in enumerate(order):
        for number, columns, values in entry.pieces:
            inside = (columns >= 0) & (columns < width)
            raw[number, row, columns[inside]] = values[inside]
    raw[~np.isfinite(raw)] = np.nan  # ±Inf is not a reading
    # A point is a reading: the memory size alone (an attribute of the GPU) makes none.
    present = ~np.isnan(raw[:_FB_TOTAL]).all(axis=0)
    names = sorted({e.deployment for e in order if e.deployment is not None})
    code = {name: i for i, name in enumerate(names)}
    by_gpu: dict[str, list[int]] = defaultdict(list)
    for row, entry in enumerate(order):
        by_gpu[entry.key].append(row)
    keys = sorted(by_gpu)
    chosen = np.full((len(keys), width), -1, dtype=np.int64)  # the series row each point comes from
    for i, key in enumerate(keys):
        rows = by_gpu[key]
        if len(rows) == 1:
            chosen[i] = np.where(present[rows[0]], rows[0], -1)
            continue
        for row in rows:
            mine = order[row].deployment is not None
            have = chosen[i] >= 0
            without = np.zeros(width, dtype=bool)
            without[have] = [order[r].deployment is None for r in chosen[i][have].tolist()]
            take = present[row] & (~have | (without & mine))
            chosen[i][take] = row
    rows_of = np.maximum(chosen, 0)

    def field_of(number: int) -> npt.NDArray[np.float64]:
        values = np.take_along_axis(raw[number], rows_of, axis=0) if len(order) else raw[number][:0]
        return np.where(chosen >= 0, values, np.nan)

    series_code = np.array([code[e.deployment] if e.deployment is not None else -1 for e in order] or [-1])
    sm = field_of(_SM)
    first = [order[by_gpu[key][0]].labels for key in keys]
    return GpuBlock(
        start_minute_ts=start_minute_ts,
        uuids=keys,
        hosts=[labels.get("Hostname") or labels.get("instance") or "" for labels in first],
        indexes=[int(labels["gpu"]) if labels.get("gpu", "").isdigit() else 0 for labels in first],
        names=[labels.get("modelName") for labels in first],
        deployments=names,
        deployment=np.where(chosen >= 0, series_code[rows_of], -1).astype(np.int32),
        present=chosen >= 0,
        util_pct=field_of(_UTIL),
        sm_active_pct=np.where(np.isnan(sm), field_of(_GR), sm) * 100,
        tensor_active_pct=field_of(_TENSOR) * 100,
        power_w=field_of(_POWER),
        mem_used_bytes=np.rint(field_of(_FB) * MIB),
        mem_total_bytes=np.rint(field_of(_FB_TOTAL) * MIB),
        energy_j=field_of(_ENERGY) / 1000,
    )


def _server_samples(servers: Mapping[str, _ServerMinutes]) -> list[ServerSample]:
    samples = []
    for instance, entry in servers.items():
        labels = entry.labels
        for ts, point in entry.points.items():
            samples.append(
                ServerSample(
                    ts=float(ts),
                    host=labels.get("Hostname") or labels.get("instance") or "",
                    deployment=entry.deployment,
                    instance=instance[:512],
                    model_name=labels.get("model_name") or labels.get("name"),
                    prompt_tokens_total=point.get("prompt_tokens_total"),
                    generation_tokens_total=point.get("generation_tokens_total"),
                    requests_running=point.get("requests_running"),
                    requests_waiting=point.get("requests_waiting"),
                    kv_cache_usage=point.get("kv_cache_usage"),
                )
            )
    samples.sort(key=lambda s: (s.deployment, s.instance, s.ts))
    return samples
