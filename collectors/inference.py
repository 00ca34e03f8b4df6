"""Inference servers' `/metrics` (vLLM, SGLang, TGI) → `ServerSample`s, by the metric catalog.

A server that does not answer gives no sample: its time is a gap (unknown), never zero tokens or
an idle server. A restarted server's counters start again from zero; the roll-up treats the drop as
a reset (Prometheus' `increase`), so nothing here needs to remember the previous reading.

Each endpoint is its own source, bounded on every side, so that it can only cost its own sample:
- one *total* deadline per scrape (connect, headers and body together): a server that drips its
  answer a byte at a time, or accepts and never answers, is cut off when the deadline passes;
- endpoints are scraped side by side, so one slow endpoint does not delay another;
- the body is read line by line and only the catalog's series are kept, under a byte cap and a
  series cap: a huge page costs time, not memory;
- failing endpoints are retried with a short backoff (capped), so a dead one does not cost a
  timeout on every pass, and does not stretch unknown time far beyond its outage.
Messages name the endpoint (credentials hidden) and never echo the body's bytes.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import math
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from prometheus_client.parser import text_string_to_metric_families

from auditor.config import Config, deployments_on_host
from auditor.model import ServerSample
from auditor.redact import redact
from collectors.interface import Backoff, Collection, CollectorError, Problem
from collectors.metric_catalog import CATALOG, MODEL_LABELS, PREFIXES, CatalogEntry, ServerKind

NAME = "inference"
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_SERIES = 10_000
"""Series of the catalog's metrics kept from one page: a server with more is misconfigured."""
MAX_LINE_BYTES = 64 * 1024
DEFAULT_TIMEOUT_S = 5.0
MAX_WORKERS = 8

Fetch = Callable[[str, float], str]

_SOURCES = frozenset(e.source for e in CATALOG)


@dataclass(frozen=True, slots=True)
class Endpoint:
    deployment: str
    url: str
    kind: str = "auto"
    """`auto`, `vllm`, `sglang` or `tgi`."""
    model_name: str | None = None

    @property
    def shown(self) -> str:
        """The URL as logs and labels may show it: credentials hidden."""
        return shown_url(self.url)


def shown_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return redact(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return redact(parts._replace(netloc=f"***@{netloc}").geturl())


def catalog_lines(lines: Iterable[str]) -> Iterator[str]:
    """The sample lines of the catalog's metrics, out of a /metrics page's lines (comments dropped:
    without them every sample keeps its own name, which is what the catalog lists)."""
    for line in lines:
        if not line or line[0] == "#":
            continue
        end = len(line)
        for stop in ("{", " ", "\t"):
            at = line.find(stop)
            if at != -1 and at < end:
                end = at
        if line[:end] in _SOURCES:
            yield line if line.endswith("\n") else line + "\n"


def _http_error(shown: str, status: int) -> CollectorError:
    if status == 404:
        fix = "check the URL's path (usually /metrics)"
    elif status in (401, 403):
        fix = (
            "the endpoint asks for credentials: give them in the URL (user:password@) or open it to this host"
        )
    elif status >= 500:
        fix = "the server failed while answering: check its logs (it may be starting or overloaded)"
    else:
        fix = "check the URL"
    return CollectorError(f"{shown} answered HTTP {status}", kind="http_status", fix=fix)


def fetch_metrics(url: str, timeout_s: float, *, max_bytes: int = MAX_BODY_BYTES) -> str:
    """GET a /metrics page within one total deadline; returns only the catalog's sample lines.

    Transport failures become CollectorErrors a person can act on."""
    shown = shown_url(url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CollectorError(f"{shown} is not an http(s) URL", kind="config")
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=timeout_s)
    headers = {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "identity"}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = time.monotonic() + timeout_s
    expired = threading.Event()
    opened: list[socket.socket] = []

    def cut_off() -> None:  # the deadline: unblock whatever read is waiting, whatever the server does
        expired.set()
        for sock in opened:  # the socket itself: the connection object lets go of it once answered
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(timeout_s, cut_off)
    timer.daemon = True
    timer.start()
    try:
        connection.connect()  # bounded by timeout_s, like every read after it
        if connection.sock is not None:
            opened.append(connection.sock)
        if expired.is_set():
            raise TimeoutError
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        if response.status != 200:
            raise _http_error(shown, response.status)
        kept = _read_catalog_lines(response, shown, deadline, max_bytes)
    except CollectorError:
        raise
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set() or time.monotonic() >= deadline or isinstance(exc, TimeoutError):
            raise CollectorError(
                f"{shown} did not answer within {timeout_s:g} s",
                kind="timeout",
                fix="is the server overloaded?",
            ) from None
        if isinstance(exc, http.client.HTTPException):
            raise CollectorError(
                f"{shown} did not speak HTTP ({type(exc).__name__})", kind="protocol"
            ) from None
        reason = exc.strerror or type(exc).__name__
        raise CollectorError(
            f"{shown} is unreachable ({reason})", kind="unreachable", fix="is the inference server running?"
        ) from None
    finally:
        timer.cancel()
        connection.close()
    if expired.is_set():
        raise CollectorError(f"{shown} did not answer within {timeout_s:g} s", kind="timeout")
    return "".join(kept)


def _read_catalog_lines(
    response: http.client.HTTPResponse, shown: str, deadline: float, max_bytes: int
) -> list[str]:
    kept: list[str] = []
    total = 0
    partial = False
    while True:
        raw = response.readline(MAX_LINE_BYTES)
        if not raw:
            return kept
        total += len(raw)
        if total > max_bytes:
            raise CollectorError(f"{shown} sent more than {max_bytes} bytes", kind="too_large")
        if time.monotonic() >= deadline:
            raise TimeoutError
        complete = raw.endswith(b"\n")
        if partial or (not complete and len(raw) >= MAX_LINE_BYTES):
            partial = not complete  # the rest of a line too long to be one of ours: skipped
            continue
        for line in catalog_lines([raw.decode("utf-8", errors="replace")]):
            kept.append(line)
            if len(kept) > MAX_SERIES:
                raise CollectorError(
                    f"{shown} has more than {MAX_SERIES} series of the metrics the auditor reads",
                    kind="too_many_series",
                    fix="set model_name in the config, or scrape one server per endpoint",
                )


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
    """Read the catalog's fields out of a /metrics text. Raises CollectorError (`parse`, `unrecognised`,
    `too_many_series`); never echoes the text."""
    lines = list(catalog_lines(text.splitlines()))
    if len(lines) > MAX_SERIES:
        raise CollectorError(
            f"more than {MAX_SERIES} series of the metrics the auditor reads", kind="too_many_series"
        )
    try:
        samples = [s for family in text_string_to_metric_families("".join(lines)) for s in family.samples]
    except (ValueError, IndexError, KeyError, TypeError):
        raise CollectorError("not Prometheus text: a series line could not be read", kind="parse") from None
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
        if entry is None or not math.isfinite(sample.value):
            continue  # NaN or ±Inf is no reading: it would poison every sum it entered
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


Scraped = tuple[ServerSample, ParsedMetrics] | CollectorError


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """What `auditor doctor` says about one endpoint."""

    endpoint: Endpoint
    ok: bool
    detail: str
    fix: str | None = None


class InferenceCollector:
    """Scrapes every configured inference server once per pass, side by side, each within its deadline."""

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
        backoff_max_s: float = 30.0,
    ) -> None:
        self._endpoints = list(endpoints)
        self._host = host
        self._fetch = fetch
        self._clock = clock
        self._monotonic = monotonic
        self._timeout_s = timeout_s
        self._backoff = {e.url: Backoff(backoff_initial_s, backoff_max_s) for e in self._endpoints}
        self._last_error: dict[str, CollectorError] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @property
    def name(self) -> str:
        return NAME

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(self._endpoints)

    def scrape(self, endpoint: Endpoint) -> tuple[ServerSample, ParsedMetrics]:
        """One endpoint, now. Raises CollectorError."""
        text = self._fetch(endpoint.url, self._timeout_s)
        ts = self._clock()
        parsed = parse_server_metrics(text, kind=endpoint.kind, model_name=endpoint.model_name)
        sample = ServerSample(
            ts=ts,
            host=self._host,
            deployment=endpoint.deployment,
            instance=endpoint.shown,  # stored and shown: never the URL's credentials
            server_kind=parsed.kind,
            model_name=parsed.model_name,
            prompt_tokens_total=parsed.values.get("prompt_tokens_total"),
            generation_tokens_total=parsed.values.get("generation_tokens_total"),
            requests_running=parsed.values.get("requests_running"),
            requests_waiting=parsed.values.get("requests_waiting"),
            kv_cache_usage=parsed.values.get("kv_cache_usage"),
            prefill_seconds_total=parsed.values.get("prefill_seconds_total"),
            decode_seconds_total=parsed.values.get("decode_seconds_total"),
        )
        return sample, parsed

    def _scrape_each(
        self, endpoints: Sequence[Endpoint]
    ) -> list[tuple[ServerSample, ParsedMetrics] | CollectorError]:
        def one(endpoint: Endpoint) -> tuple[ServerSample, ParsedMetrics] | CollectorError:
            try:
                return self.scrape(endpoint)
            except CollectorError as exc:
                return exc

        if len(endpoints) <= 1:
            return [one(e) for e in endpoints]
        with self._pool_lock:
            if self._pool is None:
                workers = min(MAX_WORKERS, len(self._endpoints))
                self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scrape")
            pool = self._pool
        return list(pool.map(one, endpoints))

    def collect(self) -> Collection[ServerSample]:
        samples: list[ServerSample] = []
        problems: list[Problem] = []
        now = self._monotonic()
        due = []
        for endpoint in self._endpoints:
            if self._backoff[endpoint.url].ready(now):
                due.append(endpoint)
            else:
                error = self._last_error[endpoint.url]
                problems.append(Problem(endpoint.shown, error.kind, f"{error} (retrying)"))
        for endpoint, result in zip(due, self._scrape_each(due), strict=True):
            backoff = self._backoff[endpoint.url]
            if isinstance(result, CollectorError):
                backoff.failed(now)
                self._last_error[endpoint.url] = result
                problems.append(Problem(endpoint.shown, result.kind, str(result)))
                continue
            backoff.reset()
            samples.append(result[0])
        return Collection(tuple(samples), tuple(problems))

    def status(self) -> list[EndpointStatus]:
        """Each endpoint, scraped now within the same deadline as the daemon's: for `auditor doctor`."""
        statuses = []
        for endpoint, result in zip(self._endpoints, self._scrape_each(self._endpoints), strict=True):
            if isinstance(result, CollectorError):
                statuses.append(EndpointStatus(endpoint, False, result.message, result.fix))
                continue
            parsed = result[1]
            missing = sorted(
                {"prompt_tokens_total", "generation_tokens_total", "requests_running"} - set(parsed.values)
            )
            names = ", ".join(sorted(parsed.recognised))
            detail = f"{parsed.kind}, model {parsed.model_name or 'unnamed'}, recognised {names}"
            if missing:
                statuses.append(
                    EndpointStatus(
                        endpoint,
                        False,
                        f"{detail}; missing {', '.join(missing)}",
                        "is it the server kind configured?",
                    )
                )
            else:
                statuses.append(EndpointStatus(endpoint, True, detail))
        return statuses

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None


def endpoints_on_host(config: Config, host: str) -> list[Endpoint]:
    """The inference endpoints this host's daemon scrapes: its deployments' servers."""
    return [
        Endpoint(d.name, s.url, s.kind, s.model_name)
        for d in deployments_on_host(config, host)
        for s in d.servers
    ]
