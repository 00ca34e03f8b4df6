"""The one catalog of inference-server metric names: source sample name → canonical field, unit.

`tests/test_inference.py` checks it both ways against real `/metrics` texts: every entry for a
server is found in that server's fixture, and every fixture sample the auditor reads is here.
Names are *sample* names as they appear in the text (a histogram's `_sum`, a counter's `_total`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ServerKind = Literal["vllm", "sglang", "tgi"]
Field = Literal[
    "prompt_tokens_total",
    "generation_tokens_total",
    "requests_running",
    "requests_waiting",
    "kv_cache_usage",
    "prefill_seconds_total",
    "decode_seconds_total",
]


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    server: ServerKind
    source: str
    """The sample name in the /metrics text."""
    field: Field
    """The `auditor.model.ServerSample` field it fills."""
    unit: str
    type: Literal["counter", "gauge"]
    """How the auditor treats it: a counter's increases are summed (resets handled), a gauge is sampled."""
    priority: int = 0
    """When two sources fill one field (vLLM's KV cache before and after 0.10), the lower wins."""
    note: str = ""


CATALOG: tuple[CatalogEntry, ...] = (
    # vLLM (V0 and V1 engines). The label `model_name` names the served model.
    CatalogEntry("vllm", "vllm:prompt_tokens_total", "prompt_tokens_total", "tokens", "counter"),
    CatalogEntry("vllm", "vllm:generation_tokens_total", "generation_tokens_total", "tokens", "counter"),
    # Time in each phase, summed over finished requests: splits $/Mtok between input and output tokens.
    CatalogEntry(
        "vllm",
        "vllm:request_prefill_time_seconds_sum",
        "prefill_seconds_total",
        "seconds",
        "counter",
        0,
        "histogram sum",
    ),
    CatalogEntry(
        "vllm",
        "vllm:request_decode_time_seconds_sum",
        "decode_seconds_total",
        "seconds",
        "counter",
        0,
        "histogram sum",
    ),
    CatalogEntry("vllm", "vllm:num_requests_running", "requests_running", "requests", "gauge"),
    CatalogEntry("vllm", "vllm:num_requests_waiting", "requests_waiting", "requests", "gauge"),
    CatalogEntry(
        "vllm",
        "vllm:kv_cache_usage_perc",
        "kv_cache_usage",
        "ratio",
        "gauge",
        0,
        "vLLM ≥ 0.10; 0–1 despite the name",
    ),
    CatalogEntry(
        "vllm",
        "vllm:gpu_cache_usage_perc",
        "kv_cache_usage",
        "ratio",
        "gauge",
        1,
        "vLLM < 0.10; 0–1 despite the name",
    ),
    # SGLang (--enable-metrics). Label `model_name` (older builds: `name`).
    CatalogEntry("sglang", "sglang:prompt_tokens_total", "prompt_tokens_total", "tokens", "counter"),
    CatalogEntry("sglang", "sglang:generation_tokens_total", "generation_tokens_total", "tokens", "counter"),
    CatalogEntry("sglang", "sglang:num_running_reqs", "requests_running", "requests", "gauge"),
    CatalogEntry("sglang", "sglang:num_queue_reqs", "requests_waiting", "requests", "gauge"),
    CatalogEntry(
        "sglang",
        "sglang:token_usage",
        "kv_cache_usage",
        "ratio",
        "gauge",
        0,
        "share of KV-cache tokens in use",
    ),
    # TGI has no token counters: the per-request histograms' sums count tokens of finished requests.
    CatalogEntry(
        "tgi", "tgi_request_input_length_sum", "prompt_tokens_total", "tokens", "counter", 0, "histogram sum"
    ),
    CatalogEntry(
        "tgi",
        "tgi_request_generated_tokens_sum",
        "generation_tokens_total",
        "tokens",
        "counter",
        0,
        "histogram sum",
    ),
    CatalogEntry("tgi", "tgi_batch_current_size", "requests_running", "requests", "gauge"),
    CatalogEntry("tgi", "tgi_queue_size", "requests_waiting", "requests", "gauge"),
)

PREFIXES: dict[ServerKind, str] = {"vllm": "vllm:", "sglang": "sglang:", "tgi": "tgi_"}
MODEL_LABELS = ("model_name", "name")


def entries(server: ServerKind) -> tuple[CatalogEntry, ...]:
    return tuple(e for e in CATALOG if e.server == server)
