"""Shared by the host tests: the fake NVML, a local /metrics server, a daemon config, the daemon process."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

TESTS = Path(__file__).resolve().parent
FAKE_NVML_DIR = TESTS / "fake_nvml"
SERVING = TESTS / "fixtures" / "serving_metrics"
AUDITOR = Path(sys.executable).parent / "auditor"
HOST = "testhost"

VLLM_PROMPT = 'vllm:prompt_tokens_total{model_name="facebook/opt-125m"} 5.0'
VLLM_GENERATION = 'vllm:generation_tokens_total{model_name="facebook/opt-125m"} 7.0'
VLLM_RUNNING = 'vllm:num_requests_running{model_name="facebook/opt-125m"} 0.0'
VLLM_PREFILL = 'vllm:request_prefill_time_seconds_sum{model_name="facebook/opt-125m"} 0.2140041133388877'
VLLM_DECODE = 'vllm:request_decode_time_seconds_sum{model_name="facebook/opt-125m"} 0.6237391703762114'


def load_fake_nvml(script: dict[str, Any]) -> ModuleType:
    """The fake pynvml as a module of its own name, scripted."""
    spec = importlib.util.spec_from_file_location("fake_pynvml", FAKE_NVML_DIR / "pynvml.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.configure(script)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class VllmServer:
    """The real vLLM fixture text, with its token counters advancing on every scrape
    (prompt +50, generation +20, one running request), or a reset to 0 after `restart()`.
    With `phase_s` (prefill, decode seconds per scrape), the phase histograms' sums advance too."""

    def __init__(self, phase_s: tuple[float, float] | None = None) -> None:
        self.phase_s = phase_s
        self.text = (SERVING / "datadog_vllm_metrics.txt").read_text()
        self.scrapes = 0
        self.offset = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = outer.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def render(self) -> str:
        with self.lock:
            self.scrapes += 1
            n = self.scrapes - self.offset
        text = (
            self.text.replace(VLLM_PROMPT, VLLM_PROMPT.replace("5.0", f"{5 + 50 * n}.0"))
            .replace(VLLM_GENERATION, VLLM_GENERATION.replace("7.0", f"{7 + 20 * n}.0"))
            .replace(VLLM_RUNNING, VLLM_RUNNING.replace("0.0", "1.0"))
        )
        if self.phase_s is not None:
            prefill, decode = self.phase_s
            text = text.replace(VLLM_PREFILL, VLLM_PREFILL.rsplit(" ", 1)[0] + f" {prefill * n!r}")
            text = text.replace(VLLM_DECODE, VLLM_DECODE.rsplit(" ", 1)[0] + f" {decode * n!r}")
        return text

    def __enter__(self) -> VllmServer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_config(
    directory: Path,
    *,
    servers: list[str],
    interval_s: float = 0.5,
    exporter_port: int | None = None,
    slack_channel: bool = False,
    extra: str = "",
) -> Path:
    server_list = ", ".join(f'{{url = "{url}", kind = "vllm"}}' for url in servers)
    text = f"""
[store]
url = "sqlite:///{directory / "auditor.db"}"

[daemon]
sample_interval_s = {interval_s}
exporter_listen = "127.0.0.1:{exporter_port or free_port()}"

[slack]
{'channel_warning = "#gpu-cost"' if slack_channel else ""}

[[deployments]]
name = "llama"
model = "facebook/opt-125m"
gpu_type = "H100"
gpus = [{{host = "{HOST}", indexes = [0, 1]}}]
servers = [{server_list}]
capacity_tokens_per_s = 1000

[deployments.price]
source = "static"
gpu_hourly_usd = 2.50
{extra}
"""
    path = directory / "auditor.toml"
    path.write_text(text)
    return path


THREE_GPUS: dict[str, Any] = {
    "gpus": [
        {"profile": "h100_load"},
        {"profile": "h200_idle", "not_supported": ["nvmlDeviceGetTotalEnergyConsumption"]},
        {"profile": "h100_idle"},
    ]
}


LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)
"""libfaketime (Debian package faketime), which moves a process's wall clock; None when not installed."""


def faketime_env(offset_file: Path) -> dict[str, str]:
    """Environment for a daemon whose wall clock is offset by the seconds written in `offset_file`
    (`+0`, `-120`; read again every second); its monotonic clock is left alone, as a real clock step
    leaves it. Use with `daemon_env(..., **faketime_env(f))`."""
    assert LIBFAKETIME is not None  # callers skip without it
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_CACHE_DURATION": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "PYTHONPATH": f"{FAKE_NVML_DIR}{os.pathsep}{TESTS / 'faketime_fix'}",
    }


def daemon_env(directory: Path, script: dict[str, Any], **extra: str) -> dict[str, str]:
    script_path = directory / "fake_nvml.json"
    script_path.write_text(json.dumps(script))
    base = {
        k: v for k, v in os.environ.items() if k not in {"AUDITOR_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC"}
    }
    return {
        **base,
        "PYTHONPATH": str(FAKE_NVML_DIR),
        "FAKE_NVML_SCRIPT": str(script_path),
        "AUDITOR_HOST": HOST,
        **extra,
    }


class DaemonProcess:
    """A running `auditor daemon` whose output goes to files, not pipes.

    A pipe nobody reads fills at 64 KiB and blocks the daemon mid-write (a debug-level start, a long
    migration), so the test would see a hung daemon that is only waiting for its reader.
    """

    def __init__(self, config: Path, env: dict[str, str], output_dir: Path) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        self._stdout_path = output_dir / "daemon.stdout"
        self._stderr_path = output_dir / "daemon.stderr"
        with self._stdout_path.open("w") as stdout, self._stderr_path.open("w") as stderr:
            self.popen = subprocess.Popen(
                [str(AUDITOR), "daemon", "--config", str(config)], env=env, stdout=stdout, stderr=stderr
            )

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def send_signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stderr_text(self) -> str:
        return self._stderr_path.read_text()

    def communicate(self, timeout: float) -> tuple[str, str]:
        """Wait for the exit, then return (stdout, stderr) as `Popen.communicate` would."""
        self.popen.wait(timeout=timeout)
        return self._stdout_path.read_text(), self.stderr_text()


@contextmanager
def daemon_process(config: Path, env: dict[str, str]) -> Iterator[DaemonProcess]:
    process = DaemonProcess(config, env, config.parent / f"daemon-output-{time.monotonic_ns()}")
    try:
        yield process
    finally:
        if process.poll() is None:
            process.popen.kill()
            process.popen.wait(timeout=10)
