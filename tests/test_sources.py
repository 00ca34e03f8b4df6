"""Each source costs only its own sample: a total deadline per scrape, bounded bodies, per-source health,
and the daemon's own failure boundaries, health and logging (issue 13)."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from auditor.config import Config
from auditor.daemon import Daemon, JobGuard, ProblemLog
from auditor.exporter import AuditorMetrics, ExporterState
from auditor.logs import JournalFormatter, RepeatFilter, configure, stderr_is_journal, syslog_priority
from auditor.store import OutboxMessage, Store
from collectors.inference import Endpoint, InferenceCollector, fetch_metrics, parse_server_metrics
from collectors.interface import CollectorError, Problem
from tests.hostkit import SERVING, VllmServer, free_port

VLLM_TEXT = (SERVING / "datadog_vllm_metrics.txt").read_text()

Handler = Callable[[BaseHTTPRequestHandler], None]


@contextmanager
def serving(handle: Handler) -> Iterator[str]:
    """A local HTTP server whose GET does `handle`; yields its /metrics URL."""
    stop = threading.Event()

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            handle(self)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    server.daemon_threads = True
    server.stop = stop  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def drip(request: BaseHTTPRequestHandler) -> None:
    """Headers, then a byte every 0.2 s, for as long as the client listens."""
    request.send_response(200)
    request.send_header("Content-Type", "text/plain")
    request.end_headers()
    for _ in range(3000):
        try:
            request.wfile.write(b"#")
            request.wfile.flush()
        except OSError:
            return
        time.sleep(0.2)


def headers_drip(request: BaseHTTPRequestHandler) -> None:
    """Even the status line comes a byte at a time."""
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 3000:
        try:
            request.wfile.write(bytes([byte]))
            request.wfile.flush()
        except OSError:
            return
        time.sleep(0.2)


def status(code: int) -> Handler:
    def handle(request: BaseHTTPRequestHandler) -> None:
        request.send_response(code)
        request.send_header("Content-Length", "0")
        request.end_headers()

    return handle


def body(chunks: Callable[[], Iterator[bytes]]) -> Handler:
    def handle(request: BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "text/plain")
        request.end_headers()
        try:
            for chunk in chunks():
                request.wfile.write(chunk)
        except OSError:
            return

    return handle


@contextmanager
def silent_listener() -> Iterator[str]:
    """Accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/metrics"
    finally:
        sock.close()


@pytest.mark.parametrize("handler", [drip, headers_drip], ids=["body", "headers"])
def test_a_dripping_endpoint_is_cut_off_at_the_deadline(handler: Handler) -> None:
    with serving(handler) as url, pytest.raises(CollectorError) as caught:
        fetch_metrics(url, 1.0)
    assert caught.value.kind == "timeout"


def test_a_hung_endpoint_costs_only_its_own_sample() -> None:
    with silent_listener() as hung, VllmServer() as healthy:
        collector = InferenceCollector(
            [Endpoint("a", hung, "vllm"), Endpoint("b", healthy.url, "vllm")], host="h", timeout_s=1.0
        )
        result = collector.collect()
        collector.close()
    assert [s.deployment for s in result.samples] == ["b"]
    assert [(p.subject, p.kind) for p in result.problems] == [(hung, "timeout")]


def test_http_500_is_not_given_the_fix_for_a_404() -> None:
    with serving(status(500)) as url, pytest.raises(CollectorError) as five:
        fetch_metrics(url, 5)
    with serving(status(404)) as url, pytest.raises(CollectorError) as four:
        fetch_metrics(url, 5)
    assert "path" in str(four.value) and "path" not in str(five.value)
    assert "server failed" in str(five.value)


def test_a_huge_body_is_refused_and_a_big_one_read_in_bounded_memory() -> None:
    filler = b"# HELP other_metric something else entirely, repeated to make a big page\n" * 1000

    def big() -> Iterator[bytes]:
        for _ in range(450):  # ~33 MB: under the cap
            yield filler
        yield VLLM_TEXT.encode()

    def huge() -> Iterator[bytes]:
        for _ in range(700):  # ~50 MB: over the cap
            yield filler

    with serving(body(huge)) as url, pytest.raises(CollectorError) as caught:
        fetch_metrics(url, 30)
    assert caught.value.kind == "too_large"
    with serving(body(big)) as url:
        tracemalloc.start()
        text = fetch_metrics(url, 30)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert parse_server_metrics(text).values["prompt_tokens_total"] == 5.0
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_too_many_series_is_a_problem_of_its_own() -> None:
    lines = "".join(f'vllm:num_requests_running{{model_name="m{i}"}} 1\n' for i in range(10_001))
    with pytest.raises(CollectorError) as caught:
        parse_server_metrics(lines)
    assert caught.value.kind == "too_many_series"


def test_messages_never_echo_the_body() -> None:
    page = 'vllm:prompt_tokens_total{model_name="m"} 1 2 3 xoxb-SECRET-BODY-BYTES\n'
    with pytest.raises(CollectorError) as caught:
        parse_server_metrics(page)
    assert "SECRET-BODY" not in str(caught.value)


def test_endpoint_credentials_are_never_in_a_sample_or_a_message() -> None:
    with VllmServer() as server:
        url = server.url.replace("http://", "http://scraper:s3cretpass@")
        collector = InferenceCollector([Endpoint("a", url, "vllm")], host="h")
        (sample,) = collector.collect().samples
        down = InferenceCollector([Endpoint("a", f"http://u:s3cretpass@127.0.0.1:{free_port()}/m")], host="h")
        (problem,) = down.collect().problems
    assert "s3cretpass" not in sample.instance
    assert "s3cretpass" not in problem.subject + problem.message


def test_problem_log_recovery_is_info(caplog: pytest.LogCaptureFixture) -> None:
    book = ProblemLog()
    with caplog.at_level(logging.INFO, logger="auditor.daemon"):
        book.update("inference", [Problem("u", "unreachable", "u is unreachable")])
        book.update("inference", [])
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]


def _daemon(tmp_path: Path, endpoints: list[Endpoint], clock: list[float]) -> Daemon:
    config = Config.model_validate(
        {"store": {"url": f"sqlite:///{tmp_path / 'a.db'}"}, "daemon": {"sample_interval_s": 10}}
    )
    return Daemon(
        config=config,
        store=Store.open(config.store.url),
        gpu_collectors=[],
        server_collectors=[InferenceCollector(endpoints, host="h")],
        state=ExporterState(),
        clock=lambda: 1_800_000_000.0 + clock[0],
        monotonic=lambda: clock[0],
    )


def test_per_endpoint_up_and_since_when(tmp_path: Path) -> None:
    down_url = f"http://127.0.0.1:{free_port()}/metrics"
    clock = [100.0]
    with VllmServer() as server:
        daemon = _daemon(
            tmp_path, [Endpoint("a", server.url, "vllm"), Endpoint("b", down_url, "vllm")], clock
        )
        daemon.sample()
        clock[0] = 110.0
        daemon.sample()
    metrics = {
        (m.name, tuple(sorted(s.labels.items()))): s.value
        for m in AuditorMetrics(daemon.state).collect()
        for s in m.samples
    }
    assert metrics[("auditor_source_up", (("collector", "inference"), ("source", server.url)))] == 1.0
    assert metrics[("auditor_source_up", (("collector", "inference"), ("source", down_url)))] == 0.0
    since = (
        "auditor_source_down_since_timestamp_seconds",
        (("collector", "inference"), ("source", down_url)),
    )
    assert metrics[since] == 1_800_000_100.0  # the first failure, not the latest


def test_the_collector_is_down_when_its_only_endpoint_is(tmp_path: Path) -> None:
    clock = [100.0]
    daemon = _daemon(tmp_path, [Endpoint("b", f"http://127.0.0.1:{free_port()}/metrics", "vllm")], clock)
    daemon.state.record_success("inference", 1.0)  # it was up before
    daemon.sample()
    assert daemon.state.up["inference"] is False


def test_healthy_only_after_a_recent_pass(tmp_path: Path) -> None:
    clock = [100.0]
    daemon = _daemon(tmp_path, [], clock)
    assert not daemon.healthy()  # nothing sampled yet: a pass hung from the start feeds no watchdog
    daemon.sample()
    assert daemon.healthy()
    clock[0] += 25.0  # two intervals and the scrape deadline have passed without a pass
    assert not daemon.healthy()


def test_outbox_is_pruned_on_the_retention_schedule(tmp_path: Path) -> None:
    clock = [0.0]
    daemon = _daemon(tmp_path, [], clock)
    now = 1_800_000_000.0
    store = daemon.store
    for sent_ts in (now - 40 * 86400, now - 86400, None):
        message = OutboxMessage(
            key="k",
            kind="firing",
            severity="warning",
            channel="#c",
            text="t",
            blocks="[]",
            created_ts=now - 50 * 86400,
        )
        message_id = store.enqueue(message)
        if sent_ts is not None:
            store.outbox_mark_sent(message_id, sent_ts, "ref")
    daemon.retention()
    left = store.outbox_messages()
    assert len(left) == 2 and all(m.sent_ts is None or m.sent_ts > now - 30 * 86400 for m in left)


def test_a_failing_job_logs_one_line_backs_off_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    calls: list[float] = []
    failing = [True]

    def job() -> None:
        calls.append(clock[0])
        if failing[0]:
            raise RuntimeError("the store said no: postgresql://u:hunter2@db/x")

    guard = JobGuard("rules", job, base_s=60, monotonic=lambda: clock[0])
    with caplog.at_level(logging.INFO, logger="auditor.daemon"):
        for t in range(0, 600, 10):  # the scheduler ticks every 10 s
            clock[0] = float(t)
            guard()
        failing[0] = False
        clock[0] = 10_000.0
        guard()
    # Tried at 0, then after 60, 120, 240 s of backoff: not on every tick.
    assert calls[:4] == [0.0, 60.0, 180.0, 420.0]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert (
        len(errors) == 3
    )  # failures 1, 2 and 4 are logged, the 3rd is not: one line per failure, fewer later
    assert all("\n" not in r.getMessage() and "hunter2" not in r.getMessage() for r in errors)
    assert caplog.records[-1].levelno == logging.INFO and "recovered" in caplog.records[-1].getMessage()


def test_scheduler_skipped_lines_are_not_repeated() -> None:
    clock = [0.0]
    repeat = RepeatFilter(window_s=600, monotonic=lambda: clock[0])
    message = 'Execution of job "%s" skipped: maximum number of running instances reached (%d)'
    passed = []
    for second in range(0, 1300):
        clock[0] = float(second)
        job = f"sample (trigger: interval[0:00:10], next run at: 2026-01-01 00:00:{second % 60:02d} UTC)"
        record = logging.LogRecord("apscheduler.scheduler", logging.WARNING, "", 0, message, (job, 1), None)
        if repeat.filter(record):
            passed.append(record.getMessage())
    assert len(passed) == 3  # at 0, 600 and 1200 s
    assert "and 599 more like it" in passed[1]


def test_journald_priority_prefixes(tmp_path: Path) -> None:
    assert [syslog_priority(lv) for lv in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]
    record = logging.LogRecord("auditor.daemon", logging.WARNING, "", 0, "GPU lost", None, None)
    assert JournalFormatter("%(message)s", journal=True).format(record) == "<4>GPU lost"
    assert JournalFormatter("%(message)s", journal=False).format(record) == "GPU lost"
    with (tmp_path / "journal").open("w") as stream:
        info = Path(tmp_path / "journal").stat()
        assert stderr_is_journal(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": "1:2"})
        assert not stderr_is_journal(stream, {})


def test_library_loggers_are_redacted_too() -> None:
    stream = io.StringIO()
    configure(logging.DEBUG, stream=stream, env={})
    webhook = "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"
    logging.getLogger("slack_sdk.webhook.client").debug("Sending a request - url: %s, body: {}", webhook)
    logging.getLogger("urllib3.connectionpool").debug("GET https://user:pa55word@example.com/x")
    try:
        raise ValueError("xoxb-1234567890-abcdefghij")
    except ValueError:
        logging.getLogger("auditor.daemon").exception("failed")
    text = stream.getvalue()
    assert "XXXXXXXX" not in text and "pa55word" not in text and "abcdefghij" not in text
    assert "https://hooks.slack.com/*** body" not in text and "hooks.slack.com/***," in text
    logging.getLogger().handlers.clear()
