"""Inference servers' `/metrics` (vLLM, SGLang, TGI) → `ServerSample`s, by the metric catalog.

A server that does not answer gives no sample: its time is a gap (unknown), never zero tokens or
an idle server. A restarted server's counters start again from zero; the roll-up treats the drop as
a reset (Prometheus' `increase`), so nothing here needs to remember the previous reading.
Endpoints that fail are retried with backoff (1 s doubling to a minute) so that a dead server does
not cost a timeout on every pass.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from auditor.config import Config
from auditor.model import ServerSample
from collectors.interface import Backoff, Collection, CollectorError, Problem
from collectors.metric_catalog import CATALOG, MODEL_LABELS, PREFIXES, CatalogEntry, ServerKind

NAME = "inference"
MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_TIMEOUT_S = 5.0

Fetch = Callable[[str, float], str]


@dataclass(frozen=True, slots=True)
class Endpoint:
    deployment: str
    url: str
    kind: str = "auto"
    """`auto`, `vllm`, `sglang` or `tgi`."""
    model_name: str | None = None


def endpoints_from_config(config: Config) -> list[Endpoint]:
    return [
        Endpoint(d.name, server.url, server.kind, server.model_name)
        for d in config.deployments
        for server in d.servers
    ]


def fetch_metrics(url: str, timeout_s: float) -> str:
    """GET a /metrics page; transport failures become CollectorErrors a person can act on."""
    request = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310  (config's http(s) URL)
            body: bytes = response.read(MAX_BODY_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise CollectorError(
            f"{url} answered HTTP {exc.code}",
            kind="http_status",
            fix="check the URL's path (usually /metrics)",
        ) from None
    except TimeoutError:
        raise CollectorError(f"{url} did not answer within {timeout_s:g} s", kind="timeout") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise CollectorError(f"{url} did not answer within {timeout_s:g} s", kind="timeout") from None
        raise CollectorError(
            f"{url} is unreachable ({reason})", kind="unreachable", fix="is the inference server running?"
        ) from None
    except OSError as exc:
        raise CollectorError(f"{url} is unreachable ({exc})", kind="unreachable") from None
    if len(body) > MAX_BODY_BYTES:
        raise CollectorError(f"{url} sent more than {MAX_BODY_BYTES} bytes", kind="too_large")
    return body.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class ParsedMetrics:
    kind: ServerKind
    model_name: str | None
    values: dict[str, float]
    """Canonical field → value (counters summed over the selected series)."""
    recognised: frozenset[str] = field(default_factory=frozenset)
    """The catalog's source names found in the text."""
    models: frozenset[str] = field(default_factory=frozenset)


def _model_of(labels: dict[str, str]) -> str | None:
    for label in MODEL_LABELS:
        if label in labels:
            return labels[label]
    return None


def detect_kind(names: Sequence[str]) -> ServerKind | None:
    counts = {kind: sum(1 for n in names if n.startswith(prefix)) for kind, prefix in PREFIXES.items()}
    best = max(counts, key=lambda k: counts[k])
    return best if counts[best] else None


def parse_server_metrics(text: str, *, kind: str = "auto", model_name: str | None = None) -> ParsedMetrics:
    """Read the catalog's fields out of a /metrics text. Raises CollectorError (`parse`, `unrecognised`)."""
    try:
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    except ValueError as exc:
        raise CollectorError(f"not Prometheus text: {exc}", kind="parse") from None
    server: ServerKind | None = detect_kind([s.name for s in samples]) if kind == "auto" else kind  # type: ignore[assignment]
    if server is None:
        raise CollectorError(
            "no vLLM, SGLang or TGI metrics in the page",
            kind="unrecognised",
            fix="is this an inference server's /metrics?",
        )
    catalog: dict[str, CatalogEntry] = {e.source: e for e in CATALOG if e.server == server}
    sums: dict[str, float] = defaultdict(float)
    found: set[str] = set()
    models: set[str] = set()
    for sample in samples:
        entry = catalog.get(sample.name)
        if entry is None:
            continue
        model = _model_of(sample.labels)
        if model is not None:
            models.add(model)
        if model_name is not None and model is not None and model != model_name:
            continue
        found.add(entry.source)
        sums[entry.source] += float(sample.value)
    if not found:
        raise CollectorError(
            f"none of the {server} metrics the auditor reads are in the page"
            + (f" for model {model_name!r}" if model_name else ""),
            kind="unrecognised",
            fix=f"expected e.g. {next(iter(catalog))}; check the server's kind and model_name in the config",
        )
    values: dict[str, float] = {}
    for entry in sorted(catalog.values(), key=lambda e: e.priority):
        if entry.source in found and entry.field not in values:
            values[entry.field] = sums[entry.source]
    chosen = model_name if model_name is not None else (next(iter(models)) if len(models) == 1 else None)
    return ParsedMetrics(server, chosen, values, frozenset(found), frozenset(models))


class InferenceCollector:
    """Scrapes every configured inference server once per pass."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        host: str,
        fetch: Fetch = fetch_metrics,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
    ) -> None:
        self._endpoints = list(endpoints)
        self._host = host
        self._fetch = fetch
        self._clock = clock
        self._monotonic = monotonic
        self._timeout_s = timeout_s
        self._backoff = {e.url: Backoff(backoff_initial_s, backoff_max_s) for e in self._endpoints}
        self._last_error: dict[str, CollectorError] = {}

    @property
    def name(self) -> str:
        return NAME

    def scrape(self, endpoint: Endpoint) -> tuple[ServerSample, ParsedMetrics]:
        """One endpoint, now. Raises CollectorError."""
        text = self._fetch(endpoint.url, self._timeout_s)
        ts = self._clock()
        parsed = parse_server_metrics(text, kind=endpoint.kind, model_name=endpoint.model_name)
        sample = ServerSample(
            ts=ts,
            host=self._host,
            deployment=endpoint.deployment,
            instance=endpoint.url,
            server_kind=parsed.kind,
            model_name=parsed.model_name,
            prompt_tokens_total=parsed.values.get("prompt_tokens_total"),
            generation_tokens_total=parsed.values.get("generation_tokens_total"),
            requests_running=parsed.values.get("requests_running"),
            requests_waiting=parsed.values.get("requests_waiting"),
            kv_cache_usage=parsed.values.get("kv_cache_usage"),
        )
        return sample, parsed

    def collect(self) -> Collection[ServerSample]:
        samples: list[ServerSample] = []
        problems: list[Problem] = []
        for endpoint in self._endpoints:
            backoff = self._backoff[endpoint.url]
            now = self._monotonic()
            if not backoff.ready(now):
                error = self._last_error[endpoint.url]
                problems.append(Problem(endpoint.url, error.kind, f"{error} (retrying)"))
                continue
            try:
                sample, _ = self.scrape(endpoint)
            except CollectorError as exc:
                backoff.failed(now)
                self._last_error[endpoint.url] = exc
                problems.append(Problem(endpoint.url, exc.kind, str(exc)))
                continue
            backoff.reset()
            samples.append(sample)
        return Collection(tuple(samples), tuple(problems))
