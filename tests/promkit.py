"""A real Prometheus for the tests: history written as OpenMetrics text, backfilled with promtool, then
served on loopback.

    series = [Series("DCGM_FI_DEV_GPU_UTIL", {"gpu": "0", "UUID": "GPU-a", "Hostname": "h1"},
                     [(t0, 30.0), (t0 + 60, 45.0)])]
    with running_prometheus(series, tmp_path) as prom:
        prom.query("DCGM_FI_DEV_GPU_UTIL", at=t0 + 60)   # -> the API's `result` list

Prometheus (Debian package `prometheus`, which ships `promtool`) reads its history only from blocks
made before it starts, so the history is complete before the first query. Pitfalls handled here:
timestamps are written in *seconds* (promtool silently reads milliseconds as seconds), each series'
samples in time order (out-of-order samples are silently dropped), one `# TYPE` per metric family
with its samples together, `# EOF` at the end, and a 100-year retention (retention counts back from
the newest block, so month-old test data would otherwise be deleted on start). Instant queries take
an explicit time: at "now" backfilled data is stale.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pytest

PROMETHEUS = "prometheus"
PROMTOOL = "promtool"


@dataclass(frozen=True)
class Series:
    """One time series: its sample name (`vllm:prompt_tokens_total`, `DCGM_FI_DEV_GPU_UTIL`), labels,
    and (epoch seconds, value) samples. A gap is simply samples left out."""

    name: str
    labels: dict[str, str]
    samples: Sequence[tuple[float, float]] = field(default_factory=list)


def binaries_available() -> bool:
    return shutil.which(PROMETHEUS) is not None and shutil.which(PROMTOOL) is not None


def require_prometheus() -> None:
    """Skip the calling test when the Prometheus binaries are not installed (`.ci/run` installs them)."""
    if not binaries_available():
        pytest.skip("prometheus/promtool are not installed (Debian package prometheus)")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _family(name: str) -> tuple[str, str]:
    """(family, type) for a sample name: a `_total` name is a counter's sample, anything else `unknown`
    (PromQL does not look at the type; `unknown` accepts any sample name, dcgm-exporter's counters
    without `_total` included)."""
    if name.endswith("_total"):
        return name[: -len("_total")], "counter"
    return name, "unknown"


def write_openmetrics(series: Iterable[Series], out: TextIO) -> int:
    """Write the series as one OpenMetrics exposition (families together, samples sorted, `# EOF`);
    returns the number of samples written."""
    families: dict[tuple[str, str], list[Series]] = defaultdict(list)
    for one in series:
        families[_family(one.name)].append(one)
    written = 0
    for (family, kind), members in families.items():
        out.write(f"# TYPE {family} {kind}\n")
        for one in members:
            head = one.name + _labels(one.labels)
            for ts, value in sorted(one.samples):
                out.write(f"{head} {_number(value)} {ts:.3f}\n")
                written += 1
    out.write("# EOF\n")
    return written


def backfill(openmetrics: Path, tsdb: Path) -> None:
    """`promtool tsdb create-blocks-from openmetrics` into `tsdb` (before the server starts).

    Blocks of up to 31 days: with promtool's default of 2 hours, four days of history make 48 blocks
    and take 16 s to write instead of 1 s."""
    tsdb.mkdir(parents=True, exist_ok=True)
    command = [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=744h"]
    done = subprocess.run(
        [*command, str(openmetrics), str(tsdb)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"promtool backfill failed: {(done.stderr or done.stdout).strip()[-2000:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PromServer:
    """A running Prometheus on loopback."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str | float) -> Any:
        """GET /api/v1/<path>; returns `data` (raises on an error answer)."""
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as reply:  # noqa: S310
            body = json.loads(reply.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus answered {body}")
        return body["data"]

    def query(self, promql: str, *, at: float) -> list[dict[str, Any]]:
        """An instant query at `at` (always explicit: at "now" backfilled data is stale)."""
        result: list[dict[str, Any]] = self.api("query", query=promql, time=at)["result"]
        return result

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query_range", query=promql, start=start, end=end, step=step)[
            "result"
        ]
        return result


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as reply:  # noqa: S310
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"prometheus not ready after {timeout_s:.0f} s: {log.read_text()[-2000:]}")


@contextmanager
def serve(tsdb: Path, *, extra_args: Sequence[str] = (), ready_timeout_s: float = 60) -> Iterator[PromServer]:
    """Start Prometheus over an existing (backfilled) TSDB directory; stop it on exit."""
    tsdb.mkdir(parents=True, exist_ok=True)
    config = tsdb.parent / f"{tsdb.name}.prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
    log = tsdb.parent / f"{tsdb.name}.prometheus.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tsdb}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=100y",
                "--log.level=warn",
                *extra_args,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(url, process, log, ready_timeout_s)
        yield PromServer(url=url, process=process, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_prometheus(series: Iterable[Series], workdir: Path) -> Iterator[PromServer]:
    """Write the series as OpenMetrics, backfill them, start Prometheus over them (skips the test when
    the binaries are missing)."""
    require_prometheus()
    workdir.mkdir(parents=True, exist_ok=True)
    openmetrics = workdir / "history.om"
    with openmetrics.open("w") as out:
        write_openmetrics(series, out)
    tsdb = workdir / "tsdb"
    backfill(openmetrics, tsdb)
    with serve(tsdb) as server:
        yield server
