"""The exporter: figures from a real SQLite store, served over HTTP on its own registry."""

from __future__ import annotations

import base64
import logging
import re
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from auditor.cli.host import _exporter
from auditor.config import Config
from auditor.exporter import (
    DeploymentFigures,
    Exporter,
    ExporterState,
    deployment_figures,
    is_loopback,
    parse_listen,
)
from auditor.gpu_prices import load_gpu_prices
from auditor.model import GpuSample, ServerSample
from auditor.prices import ApiPriceCatalog
from auditor.rollup import minute_floor, run_rollup
from auditor.store import Store
from tests.hostkit import free_port

CONFIG = Config.model_validate(
    {
        "deployments": [
            {
                "name": "llama",
                "model": "m",
                "gpu_type": "H100",
                "gpus": [{"host": "h", "indexes": [0, 1]}],
                "servers": [{"url": "http://127.0.0.1:1/metrics"}],
                "price": {"source": "static", "gpu_hourly_usd": "2.50"},
            }
        ]
    }
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path / 'a.db'}")


def _fill(store: Store, now: int) -> None:
    """70 minutes at 10 s: two busy GPUs, a server serving 100 tokens/s (60 prompt, 40 generated)."""
    start = now - 70 * 60
    gpu, server = [], []
    for i, ts in enumerate(range(start, now + 1, 10)):
        for index in (0, 1):
            gpu.append(
                GpuSample(
                    ts=ts,
                    host="h",
                    gpu_uuid=f"GPU-{index}",
                    gpu_index=index,
                    deployment="llama",
                    util_pct=80.0,
                    power_w=500.0,
                    energy_j=1000.0 + 5000 * i,
                    process_count=1,
                )
            )
        server.append(
            ServerSample(
                ts=ts,
                host="h",
                deployment="llama",
                instance="u",
                prompt_tokens_total=600.0 * i,
                generation_tokens_total=400.0 * i,
                requests_running=2,
            )
        )
    store.add_gpu_samples(gpu)
    store.add_server_samples(server)
    run_rollup(
        store,
        minute_floor(start),
        now,
        max_gap_s=30,
        idle_threshold=0.05,
        capacity_tokens_per_s=lambda _: None,
    )


def test_deployment_figures_agree_with_hand_arithmetic(store: Store) -> None:
    now = minute_floor(datetime.now(UTC).timestamp())
    _fill(store, now)
    [figures] = deployment_figures(
        store, CONFIG, datetime.fromtimestamp(now, UTC), ApiPriceCatalog(None), load_gpu_prices()
    )
    assert figures.tokens_per_s == pytest.approx(100.0)
    # 2 GPUs × $2.50/h
    assert figures.cost_rate_usd_per_h is not None
    assert abs(figures.cost_rate_usd_per_h - Decimal(5)) < Decimal("1e-9")
    # $5 for 360,000 tokens in the last hour: $13.89 per million.
    per_mtok = figures.cost_per_mtok_usd["1h"]
    assert per_mtok is not None and abs(per_mtok - Decimal(5) / Decimal(360_000) * 10**6) < Decimal("1e-6")
    assert figures.idle_cost_month_usd is not None and figures.idle_cost_month_usd == 0  # busy all along
    # The design's measures that are known: NVML's 80%, a request running all the time, and the
    # throughput at its measured capacity (no capacity configured: a steady 100 tokens/s is its own
    # sustained peak). No GPM: no sm_active.
    assert figures.utilization == {
        (window, measure): pytest.approx(value)
        for window in ("1h", "1d")
        for measure, value in (("gpu_util", 0.8), ("request_busy", 1.0), ("throughput_util", 1.0))
    }


def test_deployment_without_data_has_unknown_figures(store: Store) -> None:
    [figures] = deployment_figures(store, CONFIG, datetime.now(UTC), ApiPriceCatalog(None), load_gpu_prices())
    assert figures.tokens_per_s is None
    assert figures.cost_per_mtok_usd["1h"] is None


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def _served(state: ExporterState) -> dict[str, list[tuple[dict[str, str], float]]]:
    """One scrape of an exporter serving `state` over HTTP on loopback."""
    port = free_port()
    exporter = Exporter(state, f"127.0.0.1:{port}")
    exporter.start()
    try:
        return _scrape(port)
    finally:
        exporter.stop()


def test_exporter_serves_samples_figures_and_health_on_its_own_registry() -> None:
    state = ExporterState()
    state.set_gpu_samples(
        [
            GpuSample(
                ts=1.0,
                host="h",
                gpu_uuid="GPU-0",
                gpu_index=0,
                deployment="llama",
                util_pct=100.0,
                power_w=633.0,
                energy_j=1000.0,
            ),
            GpuSample(ts=1.0, host="h", gpu_uuid="GPU-1", gpu_index=1, util_pct=None, power_w=77.0),
        ]
    )
    state.set_deployments(
        [
            DeploymentFigures(
                "llama",
                100.0,
                Decimal("5"),
                {"1h": Decimal("13.89"), "1d": None},
                Decimal("1.25"),
                {"openai:gpt-4o": Decimal("0.4")},
                {("1h", "sm_active"): 0.25, ("1h", "throughput_util"): 0.125},
            )
        ]
    )
    state.record_success("nvml", 1234.0)
    state.record_errors("inference", ["unreachable", "unreachable"], down=True)
    metrics = _served(state)
    util = {labels["UUID"]: v for labels, v in metrics["auditor_gpu_utilization_ratio"]}
    assert util == {"GPU-0": 1.0}  # GPU-1's utilization is unknown: not exported as 0
    assert {labels["UUID"]: v for labels, v in metrics["auditor_gpu_power_watts"]} == {
        "GPU-0": 633.0,
        "GPU-1": 77.0,
    }
    assert metrics["auditor_gpu_energy_joules_total"][0][1] == 1000.0
    assert metrics["auditor_deployment_tokens_per_second"] == [({"deployment": "llama"}, 100.0)]
    assert metrics["auditor_deployment_cost_rate_usd_per_hour"] == [({"deployment": "llama"}, 5.0)]
    assert metrics["auditor_cost_per_mtok_usd"] == [({"deployment": "llama", "window": "1h"}, 13.89)]
    assert metrics["auditor_idle_cost_usd_total"] == [({"deployment": "llama"}, 1.25)]
    assert metrics["auditor_breakeven_utilization_ratio"] == [
        ({"deployment": "llama", "api": "openai:gpt-4o"}, 0.4)
    ]
    assert metrics["auditor_deployment_utilization_ratio"] == [
        ({"deployment": "llama", "window": "1h", "measure": "sm_active"}, 0.25),
        ({"deployment": "llama", "window": "1h", "measure": "throughput_util"}, 0.125),
    ]
    assert metrics["auditor_collector_last_success_timestamp_seconds"] == [({"collector": "nvml"}, 1234.0)]
    assert metrics["auditor_collector_errors_total"] == [
        ({"collector": "inference", "kind": "unreachable"}, 2.0)
    ]
    assert ({"collector": "inference"}, 0.0) in metrics["auditor_collector_up"]
    assert all(name.startswith("auditor_") for name in metrics)
    # Nothing leaked into the global default registry.
    assert REGISTRY.get_sample_value("auditor_deployment_tokens_per_second", {"deployment": "llama"}) is None


def test_docs_host_md_lists_every_metric_and_its_labels_and_no_other() -> None:
    """The exporter's catalog in docs/host.md, checked both ways against what it serves."""
    table = Path(__file__).parent.parent / "docs" / "host.md"
    documented: dict[str, set[str]] = {}
    previous: set[str] = set()
    for line in table.read_text().splitlines():
        row = re.fullmatch(r"\| `(auditor_\w+)` \| ([^|]+) \|.*", line)
        if row:
            cell = re.sub(r"\s*\([^)]*\)", "", row.group(2)).strip()  # "window (`1h`, `1d`)": window
            labels = previous if cell == "same" else {w.strip() for w in cell.split(",")}
            documented[row.group(1)] = labels
            previous = labels
    state = ExporterState()
    state.set_gpu_samples(
        [
            GpuSample(
                ts=1.0,
                host="h",
                gpu_uuid="GPU-0",
                gpu_index=0,
                gpu_name="NVIDIA H100 80GB HBM3",
                deployment="llama",
                util_pct=50.0,
                sm_active_pct=40.0,
                power_w=300.0,
                mem_used_bytes=2**30,
                energy_j=1.0,
            )
        ]
    )
    state.set_deployments(
        [
            DeploymentFigures(
                "llama",
                1.0,
                Decimal(1),
                {"1h": Decimal(1)},
                Decimal(1),
                {"openai:gpt-4o": Decimal("0.5")},
                {("1h", "gpu_util"): 0.5},
            )
        ]
    )
    state.record_success("nvml", 1.0)
    state.record_errors("nvml", ["gpu_lost"])
    state.record_source("nvml", "GPU-0", up=False, ts=1.0)
    served = {name: set(samples[0][0]) for name, samples in _served(state).items()}
    assert served == documented


DCGM_SCRAPE = Path(__file__).parent / "fixtures" / "dcgm_exporter" / "datadog_metrics.txt"


def _dcgm_series(name: str) -> list[dict[str, str]]:
    """The label sets of one metric in a real dcgm-exporter scrape body."""
    found = [
        sample.labels
        for family in text_string_to_metric_families(DCGM_SCRAPE.read_text())
        for sample in family.samples
        if sample.name == name
    ]
    assert found, name
    return found


def test_gpu_labels_are_named_and_valued_as_dcgm_exporter_names_them() -> None:
    """The same GPU seen by dcgm-exporter (a real scrape) and by the auditor carries the same `Hostname`,
    `gpu`, `UUID` and `modelName`: a PromQL join `on(UUID)` or `on(Hostname, gpu)` finds it."""
    [dcgm] = _dcgm_series("DCGM_FI_DEV_POWER_USAGE")
    state = ExporterState()
    state.set_gpu_samples(
        [
            GpuSample(
                ts=1.0,
                host=dcgm["Hostname"],
                gpu_uuid=dcgm["UUID"],
                gpu_index=int(dcgm["gpu"]),
                gpu_name=dcgm["modelName"],
                deployment="llama",
                util_pct=40.0,
                power_w=8.969,
                energy_j=128996.013,
            ),
            GpuSample(ts=1.0, host="h", gpu_uuid="GPU-x", gpu_index=3, power_w=70.0),
        ]
    )
    metrics = _served(state)
    keys = ("Hostname", "gpu", "UUID", "modelName")
    for name in (
        "auditor_gpu_info",
        "auditor_gpu_utilization_ratio",
        "auditor_gpu_power_watts",
        "auditor_gpu_energy_joules_total",
    ):
        ours = next(labels for labels, _ in metrics[name] if labels.get("UUID") == dcgm["UUID"])
        assert {k: ours[k] for k in keys} == {k: dcgm[k] for k in keys}, name
        assert ours["deployment"] == "llama"
        # No label of ours collides with one of dcgm-exporter's under another meaning.
        assert set(ours) - set(dcgm) == {"deployment"}
    # A GPU without a known model name or deployment has those labels empty, i.e. absent in Prometheus.
    other = next(labels for labels, _ in metrics["auditor_gpu_power_watts"] if labels["UUID"] == "GPU-x")
    assert other["gpu"] == "3" and other["Hostname"] == "h"
    assert other.get("modelName", "") == "" and other.get("deployment", "") == ""
    # The old label names are gone, not served twice.
    power = metrics["auditor_gpu_power_watts"]
    assert not any("gpu_uuid" in labels or "host" in labels for labels, _ in power)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _get(url: str, *, context: ssl.SSLContext | None = None, auth: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)  # noqa: S310  (a local test server)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_basic_auth_guards_every_scrape() -> None:
    state = ExporterState()
    state.record_success("nvml", 1.0)
    exporter = Exporter(state, "127.0.0.1:0", basic_auth=("prometheus", "s3cret-pass"))
    exporter.start()
    try:
        url = f"http://127.0.0.1:{exporter.port}/metrics"
        assert _get(url)[0] == 401
        assert _get(url, auth="prometheus:wrong")[0] == 401
        code, text = _get(url, auth="prometheus:s3cret-pass")
    finally:
        exporter.stop()
    assert code == 200 and "auditor_collector_up" in text


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_through_prometheus_clients_own_server(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    exporter = Exporter(ExporterState(), "127.0.0.1:0", tls_cert=cert, tls_key=key)
    exporter.start()
    try:
        context = ssl.create_default_context(cafile=str(cert))
        code, _ = _get(f"https://127.0.0.1:{exporter.port}/metrics", context=context)
        with pytest.raises((ConnectionError, urllib.error.URLError)):  # plain HTTP is refused
            _get(f"http://127.0.0.1:{exporter.port}/metrics")
    finally:
        exporter.stop()
    assert code == 200


def test_only_loopback_counts_as_private() -> None:
    assert parse_listen("[::1]:9478") == ("::1", 9478)
    assert parse_listen(":9478") == ("127.0.0.1", 9478)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("gpu-01")  # noqa: S104


def test_a_network_facing_exporter_without_tls_and_auth_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    open_config = Config.model_validate({"daemon": {"exporter_listen": "0.0.0.0:9478"}})
    with caplog.at_level(logging.WARNING, logger="auditor.exporter"):
        _exporter(open_config)
        _exporter(Config.model_validate({}))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "0.0.0.0:9478, reachable from the network" in warnings[0]
