"""Soak with faults: the real `auditor daemon` on 8 fake GPUs, 2 inference endpoints and a local Slack,
for N minutes, while a schedule injects faults; then it checks what was kept against the injected truth
and prints the figures.

    .venv/bin/python -m bench.soak [--minutes 30] [--interval-s 2]

Faults, on a schedule scaled to the run's length (fractions of it):
- 0.15–0.25 GPU 3 lost (NVML raises GpuIsLost: its time is unknown, not idle), then found again;
- 0.20 SIGHUP (the daemon logs it and goes on);
- 0.30–0.55 endpoint B (deployment `mistral`): garbage bodies, a huge (50 MB) body, a body that never
  finishes, an outage (connection refused), then a restart with its counters back at zero;
- 0.48–0.56 GPU 5 lost; 0.50–0.54 NVML's init fails (`NVMLError_Unknown`), so the re-init that the lost
  GPU calls for fails too and every GPU is unknown until NVML answers again;
- Slack: a 10-minute outage (every connection closed unanswered) from 0.30, and a 429 storm
  (`Retry-After: 1`, the next 8 requests) from 0.74; runs shorter than 20 minutes have the storm (2
  requests) from 0.50 and the outage from 0.70 to 0.95, so that an alert cycle meets each;
- 0.60 the wall clock set back (5% of the run, at most 2 minutes; libfaketime, the monotonic clock
  goes on), 0.80 set forward again;
- 0.65 a second process holds the SQLite write lock for 15 s (at most a tenth of the run);
- 0.75 SIGTERM and a restart; 0.85 `kill -9` and a restart.
Endpoint A (deployment `llama`) stays healthy. Both endpoints' prompt counters grow at RATE tokens per
second of real time: the injected truth. The alerts that go through Slack: every deployment has a $1
monthly budget, so runaway-spend fires in the first minute; the restart at 0.75 comes with budgets of
$1M (the alerts resolve), the one at 0.85 with $1 again (they fire again, the cooldown being a
twentieth of the run); idle-loaded fires on the idle GPUs at the every-15-minutes rules run.

Checks (printed; `run_soak` returns them for the slow test):
- no crash: every exit of the daemon was one we caused; no traceback logged;
- tokens: each endpoint's counted tokens = RATE × its observed seconds (what was observed is counted
  exactly; what was not is unknown, not 0 and not guessed), and never a negative minute;
- GPU-hours: each GPU's observed seconds = the run less the injected unknown time (daemon restarts,
  its lost window, NVML's failed init), within a tolerance per fault boundary; never more;
- Slack: each outbox message in Slack at most once; every one marked sent is there exactly once; every
  one not sent is not there and waits for a retry (in runs of 20 minutes or more: none is left); the
  messages about one alert arrive in the order they were queued;
- RSS of the first daemon process, from after warm-up to just before its SIGTERM (a restart-free
  stretch through most faults): growth under 5 MB is the target;
- A's and the GPUs' sampling cadence while B misbehaves (largest gap between A's samples).
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.hostkit import AUDITOR, HOST, LIBFAKETIME, SERVING, daemon_env, faketime_env, free_port
from tests.slack_server import SlackServer, start_slack_server

PROFILES = ("h100_load", "h100_idle", "h200_load", "h200_idle")
RATE = 100
"""Prompt tokens per second of real time that each endpoint's counter grows by: the injected truth."""
TOKEN = "xoxb-soak-not-a-real-token"  # noqa: S105  (a fake token for the local Slack)


class CounterServer:
    """vLLM's /metrics whose prompt counter grows at RATE per second, and a `mode` the schedule changes:
    ok, garbage, huge, hang, down (port closed), and `restart()` (counters back to zero)."""

    def __init__(self) -> None:
        self.text = (SERVING / "datadog_vllm_metrics.txt").read_text()
        self.mode = "ok"
        self.started = time.monotonic()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    def counter(self) -> int:
        return int((time.monotonic() - self.started) * RATE)

    def render(self) -> bytes:
        n = self.counter()
        text = self.text.replace(
            'vllm:prompt_tokens_total{model_name="facebook/opt-125m"} 5.0',
            f'vllm:prompt_tokens_total{{model_name="facebook/opt-125m"}} {n}.0',
        ).replace(
            'vllm:generation_tokens_total{model_name="facebook/opt-125m"} 7.0',
            'vllm:generation_tokens_total{model_name="facebook/opt-125m"} 0.0',
        )
        return text.encode()

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mode = outer.mode
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                try:
                    if mode == "garbage":
                        self.wfile.write(b'\x00\xffvllm:prompt_tokens_total{model_name="x} oops\n' * 100)
                    elif mode == "huge":
                        chunk = b"# HELP filler " + b"x" * 1000 + b"\n"
                        for _ in range(50_000):  # 50 MB
                            self.wfile.write(chunk)
                    elif mode == "hang":
                        for _ in range(600):
                            self.wfile.write(b"#")
                            self.wfile.flush()
                            time.sleep(1)
                    else:
                        self.wfile.write(outer.render())
                except OSError:
                    return

            def log_message(self, *_args: object) -> None:
                pass

        with self._lock:
            self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
            self._server.daemon_threads = True
            threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None

    def restart(self) -> None:
        self.stop()
        self.started = time.monotonic()
        self.mode = "ok"
        self.start()


@dataclass
class Endpoint:
    counted: int = 0
    observed_s: float = 0.0
    negative_minutes: int = 0

    @property
    def expected(self) -> float:
        return RATE * self.observed_s


@dataclass
class SoakResult:
    minutes: float
    interval_s: float
    unexpected_exits: list[int] = field(default_factory=list)
    restarts: int = 0
    tracebacks: int = 0
    log_lines: int = 0
    llama: Endpoint = field(default_factory=Endpoint)
    mistral: Endpoint = field(default_factory=Endpoint)
    a_max_gap_during_faults_s: float = 0.0
    gpu_samples: dict[int, int] = field(default_factory=dict)
    gpu_observed_s: dict[int, float] = field(default_factory=dict)
    gpu_truth_s: float = 0.0
    """Real seconds from the first daemon's READY to the end."""
    gpu_injected_unknown_s: dict[int, float] = field(default_factory=dict)
    gpu_allowance_s: dict[int, float] = field(default_factory=dict)
    outbox: int = 0
    delivered: int = 0
    pending: int = 0
    duplicates: int = 0
    sent_not_in_slack: int = 0
    pending_in_slack: int = 0
    pending_without_retry: int = 0
    out_of_order: int = 0
    """Alerts whose messages arrived in Slack in another order than they were queued."""
    slack_429: int = 0
    slack_dropped: int = 0
    clock_jumps_logged: int = 0
    rss: list[tuple[float, float]] = field(default_factory=list)
    """(fraction of the run, MB) of the first daemon process, until its SIGTERM."""
    rss_end_mb: float = 0.0

    @property
    def rss_growth_mb(self) -> float:
        warm = [mb for at, mb in self.rss if at >= 0.10]
        return warm[-1] - warm[0] if len(warm) >= 2 else float("nan")

    def unexplained_s(self, index: int) -> float:
        """GPU time neither observed nor injected as unknown: lost (positive) or invented (negative)."""
        return self.gpu_truth_s - self.gpu_injected_unknown_s[index] - self.gpu_observed_s.get(index, 0.0)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def write_soak_config(
    directory: Path,
    a_url: str,
    b_url: str,
    interval_s: float,
    slack: SlackServer,
    *,
    cooldown_h: float,
    idle_h: float,
    budget_usd: float,
) -> Path:
    deployments = ""
    for name, gpu_type, indexes, url, rate in (
        ("llama", "H100", [0, 1, 2, 3], a_url, 2.50),
        ("mistral", "H200", [4, 5, 6, 7], b_url, 3.50),
    ):
        deployments += f"""
[[deployments]]
name = "{name}"
model = "facebook/opt-125m"
gpu_type = "{gpu_type}"
gpus = [{{host = "{HOST}", indexes = {indexes}}}]
servers = [{{url = "{url}", kind = "vllm"}}]
monthly_budget_usd = {budget_usd:g}
[deployments.price]
source = "static"
gpu_hourly_usd = {rate}
"""
    text = f"""
[store]
url = "sqlite:///{directory / "auditor.db"}"

[daemon]
sample_interval_s = {interval_s}
scrape_timeout_s = {max(1.0, interval_s * 0.8)}
exporter_listen = "127.0.0.1:{free_port()}"

[slack]
api_base_url = "{slack.base_url}"
channel_critical = "#gpu-cost"
channel_warning = "#gpu-cost"

[rules.runaway_spend]
cooldown_h = {cooldown_h:.6f}

[rules.idle_loaded]
hours = {idle_h:.6f}
{deployments}"""
    path = directory / "auditor.toml"
    path.write_text(text)
    return path


@contextmanager
def write_lock(db: Path, seconds: float) -> Iterator[None]:
    """A second process's write transaction on the store, held for `seconds`."""
    code = (
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], timeout=30); "
        "c.execute('BEGIN IMMEDIATE'); time.sleep(float(sys.argv[2])); c.rollback()"
    )
    python = str(Path(AUDITOR).parent / "python")
    holder = subprocess.Popen([python, "-c", code, str(db), str(seconds)])  # noqa: S603
    try:
        yield
    finally:
        holder.wait(timeout=seconds + 60)


def set_clock(offset_file: Path, seconds: float) -> None:
    """Move the daemon's wall clock (libfaketime reads the offset from this file)."""
    offset_file.write_text(f"{seconds:+.0f}\n")


class Notifications:
    """systemd's notify socket: when each daemon process said READY=1 (monotonic times)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.ready: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if message == b"READY=1":
                self.ready.append(time.monotonic())

    def wait_ready(self, count: int, timeout_s: float = 60) -> float:
        deadline = time.monotonic() + timeout_s
        while len(self.ready) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.ready[count - 1] if len(self.ready) >= count else time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@dataclass(frozen=True)
class Schedule:
    total_s: float
    interval_s: float

    @property
    def long(self) -> bool:
        return self.total_s >= 20 * 60

    def at(self, fraction: float) -> float:
        return fraction * self.total_s

    @property
    def slack_outage(self) -> tuple[float, float]:
        return (0.30, 0.30 + 600.0 / self.total_s) if self.long else (0.70, 0.95)

    @property
    def slack_storm(self) -> tuple[float, int]:
        """When, and how many requests are answered 429."""
        return (0.74, 8) if self.long else (0.50, 2)

    @property
    def clock_back_s(self) -> float:
        return min(120.0, 0.05 * self.total_s)

    @property
    def lock_s(self) -> float:
        return min(15.0, 0.1 * self.total_s)


GPU3_LOST = (0.15, 0.25)
GPU5_LOST = (0.48, 0.56)
NVML_INIT_FAILS = (0.50, 0.54)


def run_soak(minutes: float, interval_s: float, directory: Path) -> SoakResult:
    plan = Schedule(minutes * 60, interval_s)
    total_s = plan.total_s
    result = SoakResult(minutes, interval_s)
    t0 = time.monotonic()
    script = {
        "t0_monotonic": t0,  # every daemon process shares the fake driver's clock
        "init_error_windows": [[plan.at(NVML_INIT_FAILS[0]), plan.at(NVML_INIT_FAILS[1]), "Unknown"]],
        "gpus": [
            {"profile": PROFILES[i % 4], "uuid": f"GPU-soak-{i}"}
            | (
                {"lost_after_s": plan.at(lost[0]), "lost_until_s": plan.at(lost[1])}
                if (lost := {3: GPU3_LOST, 5: GPU5_LOST}.get(i))
                else {}
            )
            for i in range(8)
        ],
    }
    notify = Notifications(directory / "notify.sock")
    slack = start_slack_server()
    offset = directory / "clock-offset"
    set_clock(offset, 0)
    healthy, faulty = CounterServer(), CounterServer()
    healthy.start()
    faulty.start()

    def configure(budget_usd: float) -> Path:
        return write_soak_config(
            directory,
            healthy.url,
            faulty.url,
            interval_s,
            slack,
            cooldown_h=total_s / 20 / 3600,
            idle_h=max(10 * interval_s, total_s / 10) / 3600,
            budget_usd=budget_usd,
        )

    config = configure(1)
    extra = {"NOTIFY_SOCKET": str(directory / "notify.sock"), "SLACK_BOT_TOKEN": TOKEN}
    if LIBFAKETIME is not None:
        extra |= faketime_env(offset)
    env = daemon_env(directory, script, **extra)
    fault_window = (plan.at(0.30), plan.at(0.60))

    def slack_down(down: bool) -> Callable[[], None]:
        def act() -> None:
            slack.down = down

        return act

    outage, storm = plan.slack_outage, plan.slack_storm
    faults: list[tuple[float, Callable[[], None]]] = [
        (0.30, lambda: setattr(faulty, "mode", "garbage")),
        (0.35, lambda: setattr(faulty, "mode", "huge")),
        (0.40, lambda: setattr(faulty, "mode", "hang")),
        (0.45, faulty.stop),
        (0.55, faulty.restart),
        (outage[0], slack_down(True)),
        (outage[1], slack_down(False)),
        (storm[0], lambda: setattr(slack, "rate_limited", storm[1])),
        (0.60, lambda: set_clock(offset, -plan.clock_back_s)),
        (0.80, lambda: set_clock(offset, 0)),
    ]
    signals = [(0.20, "hup"), (0.65, "lock"), (0.75, "term"), (0.85, "kill")]
    command = [str(AUDITOR), "daemon", "--config", str(config)]
    log = (directory / "daemon.log").open("ab")  # a file, not a pipe: nobody must have to read it
    process = subprocess.Popen(command, env=env, stderr=log)  # noqa: S603
    first_pid = process.pid
    truth_start = notify.wait_ready(1)
    down_s = 0.0
    pending: list[tuple[float, str, Callable[[], None] | None]] = sorted(
        [(at, "fault", f) for at, f in faults]
        + [(at, s, None) for at, s in signals]
        + [(at / 20, "rss", None) for at in range(1, 16)],
        key=lambda item: item[0],
    )
    for at, kind, action in pending:
        delay = t0 + at * total_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if process.poll() is not None:
            result.unexpected_exits.append(process.returncode)
            process = subprocess.Popen(command, env=env, stderr=log)  # noqa: S603
        if kind == "fault" and action is not None:
            action()
        elif kind == "rss" and process.pid == first_pid:
            result.rss.append((at, rss_mb(first_pid)))
        elif kind == "hup":
            process.send_signal(signal.SIGHUP)
        elif kind == "lock":
            with write_lock(directory / "auditor.db", plan.lock_s):
                time.sleep(plan.lock_s)
        elif kind in ("term", "kill"):
            if process.pid == first_pid:
                result.rss.append((at, rss_mb(first_pid)))
            stopped = time.monotonic()
            process.send_signal(signal.SIGTERM if kind == "term" else signal.SIGKILL)
            process.wait(timeout=30)
            if kind == "term" and process.returncode != 0:
                result.unexpected_exits.append(process.returncode)
            result.restarts += 1
            configure(1_000_000 if kind == "term" else 1)  # the budget alerts resolve, then fire again
            process = subprocess.Popen(command, env=env, stderr=log)  # noqa: S603
            down_s += notify.wait_ready(1 + result.restarts + len(result.unexpected_exits)) - stopped
    remaining = t0 + total_s - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    end = time.monotonic()
    if process.poll() is not None:
        result.unexpected_exits.append(process.returncode)
    else:
        result.rss_end_mb = rss_mb(process.pid)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        if process.returncode != 0:
            result.unexpected_exits.append(process.returncode)
    healthy.stop()
    faulty.stop()
    slack.close()
    notify.close()
    log.close()

    result.gpu_truth_s = end - truth_start
    max_gap_s = 3 * interval_s
    retry_cap_s = min(60.0, max(3 * interval_s, 10.0))
    boundaries = 1 + result.restarts  # the start, each restart
    for index in range(8):
        lost = {3: GPU3_LOST, 5: GPU5_LOST}.get(index)
        injected = down_s + (plan.at(lost[1]) - plan.at(lost[0]) if lost else 0.0)
        if index != 5:  # GPU 5 is lost for the whole of NVML's failed init
            injected += plan.at(NVML_INIT_FAILS[1]) - plan.at(NVML_INIT_FAILS[0])
        result.gpu_injected_unknown_s[index] = injected
        # Each boundary of unknown time costs up to two sampling gaps; the NVML re-init waits up to the
        # retry cap after the driver answers again (once for the init failure, once for a lost GPU).
        result.gpu_allowance_s[index] = (boundaries + 3) * 2 * max_gap_s + retry_cap_s * (2 if lost else 1)
    _check_store(directory / "auditor.db", result, t0, fault_window, healthy.url, faulty.url, max_gap_s)
    _check_slack(directory / "auditor.db", result, slack)
    text = (directory / "daemon.log").read_text(errors="replace")
    result.tracebacks = text.count("Traceback")
    result.log_lines = text.count("\n")
    result.clock_jumps_logged = text.count("the wall clock jumped")
    return result


def _check_store(
    db: Path,
    result: SoakResult,
    t0: float,
    fault_window: tuple[float, float],
    a_url: str,
    b_url: str,
    max_gap_s: float,
) -> None:
    wall_start = time.time() - (time.monotonic() - t0)
    with sqlite3.connect(db) as conn:
        for name, endpoint in (("llama", result.llama), ("mistral", result.mistral)):
            counted, observed, negative = conn.execute(
                "SELECT COALESCE(SUM(prompt_tokens + generation_tokens), 0),"
                " COALESCE(SUM(server_observed_s), 0), SUM(prompt_tokens < 0 OR generation_tokens < 0)"
                " FROM deployment_minutes WHERE deployment = ?",
                (name,),
            ).fetchone()
            endpoint.counted, endpoint.observed_s, endpoint.negative_minutes = (
                int(counted),
                observed,
                negative or 0,
            )
        a = conn.execute("SELECT ts FROM server_samples WHERE instance = ? ORDER BY ts", (a_url,)).fetchall()
        for (t1,), (t2,) in itertools.pairwise(a):
            if fault_window[0] <= t1 - wall_start <= fault_window[1]:
                result.a_max_gap_during_faults_s = max(result.a_max_gap_during_faults_s, t2 - t1)
        result.gpu_samples = dict(
            conn.execute("SELECT gpu_index, COUNT(*) FROM gpu_samples GROUP BY gpu_index").fetchall()
        )
        result.gpu_observed_s = dict(
            conn.execute("SELECT gpu_index, SUM(observed_s) FROM gpu_minutes GROUP BY gpu_index").fetchall()
        )


def _check_slack(db: Path, result: SoakResult, slack: SlackServer) -> None:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, sent_ts, next_attempt_ts, key FROM outbox").fetchall()
    arrived = [(m.get("metadata") or {}).get("event_payload", {}).get("outbox_id") for m in slack.history]
    in_slack = Counter(arrived)
    key_of = {i: key for i, _, _, key in rows}
    by_key: dict[str, list[int]] = {}
    for outbox_id in arrived:
        by_key.setdefault(key_of.get(outbox_id, "?"), []).append(outbox_id)
    result.out_of_order = sum(1 for ids in by_key.values() if ids != sorted(ids))
    result.outbox = len(rows)
    result.delivered = sum(1 for _, sent, _, _ in rows if sent is not None)
    result.pending = result.outbox - result.delivered
    result.duplicates = sum(1 for n in in_slack.values() if n > 1)
    result.sent_not_in_slack = sum(1 for i, sent, _, _ in rows if sent is not None and in_slack[i] != 1)
    result.pending_in_slack = sum(1 for i, sent, _, _ in rows if sent is None and in_slack[i])
    result.pending_without_retry = sum(1 for _, sent, due, _ in rows if sent is None and due is None)
    result.slack_429 = slack.refused["429"]
    result.slack_dropped = slack.refused["down"]


def report(r: SoakResult) -> str:
    lines = [
        f"soak: {r.minutes:g} min at {r.interval_s:g} s sampling, 8 fake GPUs, 2 endpoints, local Slack,"
        f" {r.restarts} restarts",
        f"  unexpected exits: {r.unexpected_exits or 'none'}; tracebacks logged: {r.tracebacks};"
        f" log lines: {r.log_lines}; wall-clock jumps logged: {r.clock_jumps_logged}",
    ]
    for name, e in (("llama (healthy)", r.llama), ("mistral (faulty)", r.mistral)):
        off = e.counted - e.expected
        lines.append(
            f"  {name} tokens: counted {e.counted:,} over {e.observed_s:,.0f} s observed; truth for that"
            f" time {e.expected:,.0f} ({off:+,.0f}, {off / max(e.expected, 1):+.2%}); negative minutes:"
            f" {e.negative_minutes}"
        )
    lines.append(
        "  llama's largest sampling gap while mistral's endpoint misbehaved:"
        f" {r.a_max_gap_during_faults_s:.1f} s"
    )
    lines.append(f"  GPU-seconds (truth {r.gpu_truth_s:,.0f} s each from the first READY):")
    for index in range(8):
        lines.append(
            f"    GPU {index}: observed {r.gpu_observed_s.get(index, 0):,.0f}, injected unknown"
            f" {r.gpu_injected_unknown_s[index]:,.0f}, unexplained {r.unexplained_s(index):+,.1f}"
            f" (allowed ±{r.gpu_allowance_s[index]:.0f}); samples {r.gpu_samples.get(index, 0)}"
        )
    lines.append(
        f"  Slack: {r.outbox} messages queued, {r.delivered} delivered, {r.pending} waiting; in Slack twice:"
        f" {r.duplicates}; sent but not in Slack: {r.sent_not_in_slack}; waiting but in Slack:"
        f" {r.pending_in_slack}; alerts out of order: {r.out_of_order}; answered 429: {r.slack_429};"
        f" dropped in the outage: {r.slack_dropped}"
    )
    lines.append(
        "  RSS of the first daemon process (fraction of the run: MB): "
        + ", ".join(f"{at:.2f}: {mb:.1f}" for at, mb in r.rss)
        + f"; growth from 0.10 to its SIGTERM {r.rss_growth_mb:+.1f} MB; last process at the end"
        f" {r.rss_end_mb:.1f} MB"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--interval-s", type=float, default=2)
    args = parser.parse_args()
    if LIBFAKETIME is None:
        print("soak: libfaketime is not installed (Debian package faketime): no wall-clock jump")
    with tempfile.TemporaryDirectory() as tmp:
        r = run_soak(args.minutes, args.interval_s, Path(tmp))
    print(report(r))


if __name__ == "__main__":
    os.environ.setdefault("NO_GCE_CHECK", "true")
    main()
