"""A generated fleet for the fleet-mode tests and bench/fleet.py: dcgm-exporter and vLLM/SGLang series
with their real names and labels, and the figures a roll-up must reach, computed straight from the
generated samples (not through the code under test).

The rule the truth follows (collectors/prometheus.py's docstring): a sample taken in `(m, m + 60]`
is minute `m`'s point; consecutive points of a series no more than `max_gap_s` apart make the minutes
after the earlier one up to the later one observed, valued by the later one; a counter's increase
(the value itself after a drop: a reset) lands in the later point's minute, gap or not.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise

from tests.promkit import Series

MINUTE = 60
OFFSET_S = 30
"""Samples are taken half-way through their minute: no sample sits on a range's edge."""


@dataclass
class Gpu:
    host: str
    index: int
    uuid: str
    model: str
    deployment: str | None
    labels: dict[str, str]
    """Kubernetes labels dcgm-exporter adds for the pod using the GPU (pod, namespace, container)."""
    first: int
    last: int
    """Minutes (from t0) of the first and last sample, inclusive."""
    every: int = 1
    """A sample every this many minutes."""
    gaps: tuple[range, ...] = ()
    mig_instance: str | None = None
    total_mib: float = 81_559.0
    memory: str = "free"
    """How dcgm-exporter tells the GPU's memory: FB_USED + FB_FREE (its default counters), + FB_RESERVED
    (3.3 and later), or FB_TOTAL (when configured)."""

    def minutes(self) -> Iterator[int]:
        for m in range(self.first, self.last + 1, self.every):
            if not any(m in gap for gap in self.gaps):
                yield m

    @property
    def key(self) -> str:
        return f"{self.uuid}/{self.mig_instance}" if self.mig_instance else self.uuid

    def util(self, m: int) -> float:
        return float((m * 7 + self.index * 13) % 100)

    def sm(self, m: int) -> float:
        return ((m * 11 + self.index * 5) % 100) / 100

    def power(self, m: int) -> float:
        return 100.0 + (m % 50) * 5

    def energy_mj(self, m: int) -> float:
        return 5e9 + 250_000.0 * m * (1 + self.index % 2)


@dataclass
class Server:
    kind: str  # vllm | sglang
    deployment: str
    labels: dict[str, str]
    first: int
    last: int
    every: int = 1
    restart_at: int | None = None
    gaps: tuple[range, ...] = ()

    def minutes(self) -> Iterator[int]:
        for m in range(self.first, self.last + 1, self.every):
            if not any(m in gap for gap in self.gaps):
                yield m

    def prompt(self, m: int) -> float:
        base = m - self.restart_at if self.restart_at is not None and m >= self.restart_at else m
        return 1200.0 * base + (0 if self.restart_at is not None and m >= self.restart_at else 77_000)

    def generation(self, m: int) -> float:
        base = m - self.restart_at if self.restart_at is not None and m >= self.restart_at else m
        return 300.0 * base + (0 if self.restart_at is not None and m >= self.restart_at else 19_000)

    def running(self, m: int) -> float:
        return float(m % 4)  # idle one minute in four

    def waiting(self, m: int) -> float:
        return float(m % 3)

    def kv(self, m: int) -> float:
        return (m % 10) / 10


@dataclass
class Fleet:
    t0: int
    gpus: list[Gpu]
    servers: list[Server]
    max_gap_s: int = 180
    idle_threshold: float = 0.05

    def series(self) -> list[Series]:
        out: list[Series] = []
        for g in self.gpus:
            labels = {"gpu": str(g.index), "UUID": g.uuid, "device": f"nvidia{g.index}", "modelName": g.model,
                      "Hostname": g.host, "DCGM_FI_DRIVER_VERSION": "550.144.03", **g.labels}  # fmt: skip
            if g.mig_instance is not None:
                labels |= {"GPU_I_ID": g.mig_instance, "GPU_I_PROFILE": "1g.10gb"}
            ts = [(m, self.t0 + m * MINUTE + OFFSET_S) for m in g.minutes()]

            def add(
                name: str,
                value: Callable[[int], float],
                ts: list[tuple[int, int]] = ts,
                labels: dict[str, str] = labels,
            ) -> None:
                out.append(Series(name, dict(labels), [(t, value(m)) for m, t in ts]))

            if g.mig_instance is None:  # MIG has no duty-cycle utilization
                add("DCGM_FI_DEV_GPU_UTIL", g.util)
            add("DCGM_FI_PROF_SM_ACTIVE", g.sm)
            add("DCGM_FI_PROF_GR_ENGINE_ACTIVE", g.sm)
            add("DCGM_FI_DEV_POWER_USAGE", g.power)
            add("DCGM_FI_DEV_FB_USED", lambda m: 40_000.0)
            reserved = 512.0 if g.memory == "reserved" else 0.0
            add("DCGM_FI_DEV_FB_FREE", _constant(g.total_mib - 40_000.0 - reserved))
            if g.memory == "reserved":
                add("DCGM_FI_DEV_FB_RESERVED", _constant(reserved))
            if g.memory == "total":
                add("DCGM_FI_DEV_FB_TOTAL", _constant(g.total_mib))
            add("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", g.energy_mj)
        for s in self.servers:
            names = {
                "vllm": ("vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                         "vllm:num_requests_running", "vllm:num_requests_waiting",
                         "vllm:kv_cache_usage_perc"),
                "sglang": ("sglang:prompt_tokens_total", "sglang:generation_tokens_total",
                           "sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage"),
            }[s.kind]  # fmt: skip
            ts = [(m, self.t0 + m * MINUTE + OFFSET_S) for m in s.minutes()]
            for name, value in zip(names, (s.prompt, s.generation, s.running, s.waiting, s.kv), strict=True):
                out.append(Series(name, dict(s.labels), [(t, value(m)) for m, t in ts]))
        return out

    # -- truth ------------------------------------------------------------------------------------

    def _pairs(self, minutes: list[int]) -> Iterator[tuple[int, int, bool]]:
        """(earlier, later, within the allowed gap) for consecutive points."""
        for a, b in pairwise(minutes):
            yield a, b, (b - a) * MINUTE <= self.max_gap_s

    def gpu_truth(self, start: int, end: int) -> dict[str, GpuTruth]:
        """Per GPU key: figures over the minutes [start, end) (minute numbers from t0)."""
        truth: dict[str, GpuTruth] = {}
        for g in self.gpus:
            t = truth.setdefault(g.key, GpuTruth())
            for a, b, near in self._pairs(list(g.minutes())):
                if start <= b < end:
                    t.energy_j += (g.energy_mj(b) - g.energy_mj(a)) / 1000
                if not near:
                    continue
                for m in range(a + 1, b + 1):
                    if start <= m < end:
                        t.observed_s += MINUTE
                        t.minutes.add(m)
                        util = None if g.mig_instance else g.util(b) / 100
                        if util is not None:
                            t.util_weighted += util * MINUTE
                        t.sm_weighted += g.sm(b) * MINUTE
                        if g.sm(b) < self.idle_threshold:
                            t.idle_s += MINUTE
        return truth

    def deployment_truth(self, start: int, end: int) -> dict[str, DeploymentTruth]:
        truth: dict[str, DeploymentTruth] = defaultdict(DeploymentTruth)
        for s in self.servers:
            t = truth[s.deployment]
            for a, b, near in self._pairs(list(s.minutes())):
                if start <= b < end:
                    for value, attr in ((s.prompt, "prompt_tokens"), (s.generation, "generation_tokens")):
                        inc = value(b) - value(a) if value(b) >= value(a) else value(b)
                        setattr(t, attr, getattr(t, attr) + round(inc))
                if not near:
                    continue
                for m in range(a + 1, b + 1):
                    if start <= m < end:
                        t.server_observed_s += MINUTE
                        if s.running(b) > 0:
                            t.request_busy_s += MINUTE
        for g in self.gpus:
            if g.deployment is not None:
                truth[g.deployment].gpu_observed_s += self.gpu_truth(start, end)[g.key].observed_s
        return dict(truth)


def _constant(value: float) -> Callable[[int], float]:
    return lambda _m: value


@dataclass
class GpuTruth:
    observed_s: float = 0.0
    util_weighted: float = 0.0
    sm_weighted: float = 0.0
    idle_s: float = 0.0
    energy_j: float = 0.0
    minutes: set[int] = field(default_factory=set)


@dataclass
class DeploymentTruth:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    server_observed_s: float = 0.0
    request_busy_s: float = 0.0
    gpu_observed_s: float = 0.0


def k8s(deployment: str, replica: int = 0, namespace: str = "llm") -> dict[str, str]:
    return {"pod": f"{deployment}-{replica}", "namespace": namespace, "container": "server"}


def small_fleet(t0: int, minutes: int, *, every: int = 1) -> Fleet:
    """Three hosts, three deployments: llama (two GPUs on h1, one of which is taken away two-thirds of
    the way through; a vLLM server restarted half-way), mistral (one GPU on h2 with a 15-minute scrape
    gap; SGLang), small (a MIG instance on h3; vLLM), and an unassigned GPU on h3."""
    gone = (minutes * 2 // 3) // every * every
    half = (minutes // 2) // every * every
    gap = range(minutes // 3, minutes // 3 + 15 * every)
    last = minutes - 1
    return Fleet(
        t0=t0,
        max_gap_s=3 * every * MINUTE,
        gpus=[
            Gpu("h1", 0, "GPU-11111111-aaaa-4000-8000-000000000000", "NVIDIA H100 80GB HBM3", "llama",
                k8s("llama"), 0, last, every),
            Gpu("h1", 1, "GPU-11111111-aaaa-4000-8000-000000000001", "NVIDIA H100 80GB HBM3", "llama",
                k8s("llama"), 0, gone, every),
            Gpu("h2", 0, "GPU-22222222-bbbb-4000-8000-000000000000", "NVIDIA A100-SXM4-80GB", "mistral",
                k8s("mistral"), 0, last, every, gaps=(gap,), total_mib=81_920.0, memory="reserved"),
            Gpu("h3", 0, "GPU-33333333-cccc-4000-8000-000000000000", "NVIDIA A100-SXM4-80GB", "small",
                k8s("small"), 0, last, every, mig_instance="1", total_mib=81_920.0, memory="total"),
            Gpu("h3", 1, "GPU-33333333-cccc-4000-8000-000000000001", "NVIDIA A100-SXM4-80GB", None,
                {}, 0, last, every),
        ],
        servers=[
            Server("vllm", "llama", {"model_name": "meta-llama/Llama-3.1-70B-Instruct", **k8s("llama"),
                   "instance": "10.0.0.1:8000", "job": "vllm"}, 0, last, every, restart_at=half),
            Server("sglang", "mistral", {"model_name": "mistralai/Mistral-7B-Instruct-v0.3",
                   **k8s("mistral"), "instance": "10.0.0.2:30000", "job": "sglang"}, 0, last, every),
            Server("vllm", "small", {"model_name": "Qwen/Qwen2.5-1.5B-Instruct", **k8s("small"),
                   "instance": "10.0.0.3:8000", "job": "vllm"}, 0, last, every),
        ],
    )  # fmt: skip


MATCHERS = {
    "llama": {"namespace": "llm", "pod": "~llama-.*"},
    "mistral": {"namespace": "llm", "pod": "~mistral-.*"},
    "small": {"namespace": "llm", "pod": "~small-.*"},
}
