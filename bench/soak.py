"""Soak with faults: the real `auditor daemon` on 8 fake GPUs and 2 inference endpoints, for N minutes,
while a schedule injects faults; then it checks that nothing was lost and prints the figures.

    .venv/bin/python -m bench.soak [--minutes 30] [--interval-s 2]

Faults, on a schedule scaled to the run's length (each a share of it):
- GPU 3 lost and back (NVML raises GpuIsLost in that window: its time is unknown, not idle);
- endpoint B (deployment `mistral`): garbage bodies, a huge (50 MB) body, a body that never finishes,
  an outage (connection refused), then a restart with its counters reset to zero;
- a second process holding the SQLite write lock for 15 s;
- SIGHUP (the daemon logs and goes on), SIGTERM and a restart, `kill -9` and a restart.
Endpoint A (deployment `llama`) stays healthy throughout: its samples must keep their cadence whatever
B does.

Checks (printed; `run_soak` returns them for the slow test):
- no crash: every exit of the daemon was one we caused;
- A's tokens: the roll-ups count the counter's whole increase, less at most what it grew across gaps
  longer than max_gap_s (the restarts: unknown time); never more than the increase;
- B's tokens: counted only between good samples; the restart is a reset (no negative counts);
- A's and the GPUs' sampling cadence while B misbehaves (largest gap between A's samples);
- RSS of the daemon from after start-up to the end (growth under 5 MB is the target).
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.hostkit import AUDITOR, HOST, SERVING, VllmServer, daemon_env, free_port

PROFILES = ("h100_load", "h100_idle", "h200_load", "h200_idle")


class FaultyServer:
    """vLLM's /metrics whose counters grow with time, and a `mode` the schedule changes:
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
        return int((time.monotonic() - self.started) * 100)

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
class SoakResult:
    minutes: float
    unexpected_exits: list[int] = field(default_factory=list)
    a_counted: int = 0
    a_unknown: int = 0
    a_increase: int = 0
    b_counted: int = 0
    b_negative_minutes: int = 0
    a_max_gap_during_faults_s: float = 0.0
    gpu_samples: dict[int, int] = field(default_factory=dict)
    gpu3_lost_window_samples: int = 0
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    restarts: int = 0
    tracebacks: int = 0
    log_lines: int = 0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_soak_config(directory: Path, a_url: str, b_url: str, interval_s: float) -> Path:
    text = f"""
[store]
url = "sqlite:///{directory / "auditor.db"}"

[daemon]
sample_interval_s = {interval_s}
scrape_timeout_s = {max(1.0, interval_s * 0.8)}
exporter_listen = "127.0.0.1:{free_port()}"

[[deployments]]
name = "llama"
model = "facebook/opt-125m"
gpu_type = "H100"
gpus = [{{host = "{HOST}", indexes = [0, 1, 2, 3]}}]
servers = [{{url = "{a_url}", kind = "vllm"}}]
[deployments.price]
source = "static"
gpu_hourly_usd = 2.50

[[deployments]]
name = "mistral"
model = "facebook/opt-125m"
gpu_type = "H200"
gpus = [{{host = "{HOST}", indexes = [4, 5, 6, 7]}}]
servers = [{{url = "{b_url}", kind = "vllm"}}]
[deployments.price]
source = "static"
gpu_hourly_usd = 3.50
"""
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


def run_soak(minutes: float, interval_s: float, directory: Path) -> SoakResult:
    total_s = minutes * 60
    result = SoakResult(minutes)
    script = {
        "gpus": [
            {"profile": PROFILES[i % 4], "uuid": f"GPU-soak-{i}"}
            | ({"lost_after_s": 0.15 * total_s, "lost_until_s": 0.25 * total_s} if i == 3 else {})
            for i in range(8)
        ]
    }
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(directory / "notify.sock"))
    sock.settimeout(0.2)
    faulty = FaultyServer()
    faulty.start()
    with VllmServer() as healthy:
        config = write_soak_config(directory, healthy.url, faulty.url, interval_s)
        env = daemon_env(directory, script, NOTIFY_SOCKET=str(directory / "notify.sock"))
        started = time.monotonic()
        fault_window = (0.30 * total_s, 0.60 * total_s)
        schedule: list[tuple[float, Callable[[], None]]] = [
            (0.30, lambda: setattr(faulty, "mode", "garbage")),
            (0.35, lambda: setattr(faulty, "mode", "huge")),
            (0.40, lambda: setattr(faulty, "mode", "hang")),
            (0.45, faulty.stop),
            (0.55, faulty.restart),
        ]
        signals = [(0.20, "hup"), (0.65, "lock"), (0.75, "term"), (0.85, "kill")]
        command = [str(AUDITOR), "daemon", "--config", str(config)]
        log = (directory / "daemon.log").open("ab")  # a file, not a pipe: nobody must have to read it
        process = subprocess.Popen(command, env=env, stderr=log)  # noqa: S603
        time.sleep(min(10.0, total_s * 0.05))
        result.rss_start_mb = rss_mb(process.pid)
        pending: list[tuple[float, str, Callable[[], None] | None]] = sorted(
            [(at, "fault", f) for at, f in schedule] + [(at, s, None) for at, s in signals],
            key=lambda item: item[0],
        )
        for at, kind, action in pending:
            delay = started + at * total_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if process.poll() is not None:
                result.unexpected_exits.append(process.returncode)
                process = subprocess.Popen(command, env=env, stderr=log)  # noqa: S603
            if kind == "fault" and action is not None:
                action()
            elif kind == "hup":
                process.send_signal(signal.SIGHUP)
            elif kind == "lock":
                with write_lock(directory / "auditor.db", 15):
                    time.sleep(15)
            elif kind in ("term", "kill"):
                process.send_signal(signal.SIGTERM if kind == "term" else signal.SIGKILL)
                process.wait(timeout=30)
                if kind == "term" and process.returncode != 0:
                    result.unexpected_exits.append(process.returncode)
                result.restarts += 1
                process = subprocess.Popen(command, env=env, stderr=log)  # noqa: S603
                if kind == "kill":
                    time.sleep(min(10.0, total_s * 0.05))
                    result.rss_start_mb = rss_mb(process.pid)  # the last process's own start
        remaining = started + total_s - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        if process.poll() is not None:
            result.unexpected_exits.append(process.returncode)
        else:
            result.rss_end_mb = rss_mb(process.pid)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
            if process.returncode != 0:
                result.unexpected_exits.append(process.returncode)
        faulty.stop()
        wall_start = time.time() - (time.monotonic() - started)
    sock.close()
    _check_store(directory / "auditor.db", result, interval_s, wall_start, fault_window, healthy.url)
    log.close()
    text = (directory / "daemon.log").read_text(errors="replace")
    result.tracebacks = text.count("Traceback")
    result.log_lines = text.count("\n")
    return result


def _check_store(
    db: Path,
    result: SoakResult,
    interval_s: float,
    wall_start: float,
    fault_window: tuple[float, float],
    a_url: str,
) -> None:
    max_gap_s = 3 * interval_s
    with sqlite3.connect(db) as conn:
        a = conn.execute(
            "SELECT ts, prompt_tokens_total + generation_tokens_total FROM server_samples"
            " WHERE instance = ? ORDER BY ts",
            (a_url,),
        ).fetchall()
        result.a_increase = int(a[-1][1] - a[0][1]) if a else 0
        for (t0, c0), (t1, c1) in itertools.pairwise(a):
            if t1 - t0 > max_gap_s:
                result.a_unknown += int(c1 - c0)
            if fault_window[0] <= t0 - wall_start <= fault_window[1]:
                result.a_max_gap_during_faults_s = max(result.a_max_gap_during_faults_s, t1 - t0)
        result.a_counted = int(
            conn.execute(
                "SELECT COALESCE(SUM(prompt_tokens + generation_tokens), 0) FROM deployment_minutes"
                " WHERE deployment = 'llama'"
            ).fetchone()[0]
        )
        result.b_counted = int(
            conn.execute(
                "SELECT COALESCE(SUM(prompt_tokens + generation_tokens), 0) FROM deployment_minutes"
                " WHERE deployment = 'mistral'"
            ).fetchone()[0]
        )
        result.b_negative_minutes = conn.execute(
            "SELECT COUNT(*) FROM deployment_minutes WHERE prompt_tokens < 0 OR generation_tokens < 0"
        ).fetchone()[0]
        result.gpu_samples = dict(
            conn.execute("SELECT gpu_index, COUNT(*) FROM gpu_samples GROUP BY gpu_index").fetchall()
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--interval-s", type=float, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = run_soak(args.minutes, args.interval_s, Path(tmp))
    print(
        f"soak: {r.minutes:g} min at {args.interval_s:g} s sampling, 8 fake GPUs, 2 endpoints,"
        f" {r.restarts} restarts"
    )
    print(f"  unexpected exits: {r.unexpected_exits or 'none'}; tracebacks logged: {r.tracebacks}")
    print(f"  log lines: {r.log_lines} in {r.minutes:g} min")
    lost = r.a_increase - r.a_counted
    print(
        f"  llama tokens: counter increase {r.a_increase:,}, counted {r.a_counted:,}, not counted {lost:,}"
        f" (at most the {r.a_unknown:,} across gaps longer than max_gap_s, i.e. the restarts)"
    )
    print(f"  mistral tokens counted {r.b_counted:,}; minutes with negative counts: {r.b_negative_minutes}")
    print(
        "  llama's largest sampling gap while mistral's endpoint misbehaved:"
        f" {r.a_max_gap_during_faults_s:.1f} s"
    )
    print(f"  GPU samples by index: {r.gpu_samples}")
    print(f"  RSS {r.rss_start_mb:.1f} MB after start-up, {r.rss_end_mb:.1f} MB at the end")


if __name__ == "__main__":
    os.environ.setdefault("NO_GCE_CHECK", "true")
    main()
