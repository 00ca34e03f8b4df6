"""Fleet mode against a real Prometheus: generated dcgm-exporter and vLLM/SGLang history, backfilled
with promtool, rolled up into the store; every figure equals the one computed from the generated data."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from auditor.fleet import FleetResult, FleetRollup, rollup_fleet
from auditor.model import DeploymentMinute, GpuMinute
from auditor.store import Store
from collectors.prometheus import (
    DeploymentMatch,
    FleetReader,
    PromAuth,
    PrometheusUnavailable,
    PromQL,
    connect,
    selector,
)
from tests.fleetkit import MATCHERS, MINUTE, small_fleet
from tests.promkit import PromServer, Series, running_prometheus

T0 = 1_790_000_000 - 1_790_000_000 % 3600
MINUTES = 180
WINDOW = (T0, T0 + MINUTES * MINUTE)


def _matches() -> list[DeploymentMatch]:
    return [DeploymentMatch(name, m, m) for name, m in MATCHERS.items()]


def _reader(prom_url: str, *, chunk_minutes: int = 360, retries: int = 0) -> FleetReader:
    promql = PromQL(connect(prom_url, PromAuth(), timeout_s=10), retries=retries, sleep=lambda _s: None)
    return FleetReader(promql, _matches(), chunk_minutes=chunk_minutes)


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromServer]:
    fleet = small_fleet(T0, MINUTES)
    with running_prometheus(fleet.series(), tmp_path_factory.mktemp("prom")) as server:
        yield server


def _roll(store: Store, reader: FleetReader) -> FleetResult:
    return rollup_fleet(
        store, reader, *WINDOW, max_gap_s=180, idle_threshold=0.05, capacity_tokens_per_s=lambda _n: None
    )


def test_rollup_equals_the_generated_data(prom: PromServer, store_url: str) -> None:
    fleet = small_fleet(T0, MINUTES)
    store = Store.open(store_url)
    reader = _reader(prom.url, chunk_minutes=50)  # several chunks: their edges must not show
    result = _roll(store, reader)
    gpu_rows = store.gpu_minutes(*WINDOW)
    by_gpu: dict[str, list[GpuMinute]] = defaultdict(list)
    for row in gpu_rows:
        by_gpu[row.gpu_uuid].append(row)
    truth = fleet.gpu_truth(0, MINUTES)
    assert set(by_gpu) == set(truth)
    for key, expected in truth.items():
        rows = by_gpu[key]
        assert {(r.minute_ts - T0) // MINUTE for r in rows if r.observed_s > 0} == expected.minutes, key
        assert sum(r.observed_s for r in rows) == pytest.approx(expected.observed_s)
        assert sum((r.gpu_util or 0) * r.util_observed_s for r in rows) == pytest.approx(
            expected.util_weighted
        )
        assert sum((r.sm_active or 0) * r.util_observed_s for r in rows) == pytest.approx(
            expected.sm_weighted
        )
        assert sum(r.idle_s for r in rows) == pytest.approx(expected.idle_s)
        assert sum(r.energy_j or 0 for r in rows) == pytest.approx(expected.energy_j)
        # The GPU's memory, however dcgm-exporter tells it (used + free [+ reserved], or its total).
        [gpu] = [g for g in fleet.gpus if g.key == key]
        assert {r.mem_total_bytes for r in rows if r.observed_s} == {int(gpu.total_mib) << 20}, key
    # The MIG instance: no duty cycle (unknown, not 0), activity from the profiling fields.
    mig = by_gpu["GPU-33333333-cccc-4000-8000-000000000000/1"]
    assert all(r.gpu_util is None and r.sm_active is not None for r in mig if r.observed_s)
    assert {r.deployment for r in mig} == {"small"}
    assert {r.deployment for r in by_gpu["GPU-33333333-cccc-4000-8000-000000000001"]} == {None}
    # The GPU taken away at minute 120: nothing after it (unknown), nothing invented.
    gone = by_gpu["GPU-11111111-aaaa-4000-8000-000000000001"]
    assert max((r.minute_ts - T0) // MINUTE for r in gone) == 120
    # The scrape gap on h2 (no samples in minutes 60-74): unknown until the second point after it;
    # the energy used across the gap still lands in the minute the series comes back.
    h2 = {(r.minute_ts - T0) // MINUTE: r for r in by_gpu["GPU-22222222-bbbb-4000-8000-000000000000"]}
    assert not set(h2) & set(range(60, 75))
    assert h2[75].observed_s == 0 and h2[75].energy_j == pytest.approx(16 * 250.0)
    assert {r.host for r in gpu_rows} == {"h1", "h2", "h3"}

    dep_truth = fleet.deployment_truth(0, MINUTES)
    deployments: dict[str, list[DeploymentMinute]] = defaultdict(list)
    for d in store.deployment_minutes(*WINDOW):
        deployments[d.deployment].append(d)
    assert set(deployments) == set(dep_truth)
    for name, want in dep_truth.items():
        got = deployments[name]
        assert sum(r.prompt_tokens for r in got) == want.prompt_tokens, name
        assert sum(r.generation_tokens for r in got) == want.generation_tokens, name
        assert sum(r.server_observed_s for r in got) == pytest.approx(want.server_observed_s)
        assert sum(r.request_busy_s for r in got) == pytest.approx(want.request_busy_s)
        assert sum(r.gpu_observed_s for r in got) == pytest.approx(want.gpu_observed_s)
    # The vLLM restart at minute 90 counts the tokens after the reset (from 0), not a negative jump.
    restart = next(r for r in deployments["llama"] if r.minute_ts == T0 + 90 * MINUTE)
    assert restart.prompt_tokens == 0 and restart.generation_tokens == 0
    # Requests per chunk do not depend on the number of GPUs: 8 DCGM + 5 server queries. A chunk of
    # 50 minutes rolls up 42 (it reads the 4 minutes on each side that a 3-minute gap allows).
    assert result.chunks == 5
    assert reader.requests == 13 * 5
    # Re-rolling changes nothing (one row per GPU-minute, even on a second run).
    _roll(store, _reader(prom.url))
    assert len(store.gpu_minutes(*WINDOW)) == len(gpu_rows)
    store.close()


def test_queries_escape_matchers_and_join_server_names() -> None:
    assert selector({"pod": "~llama-.*", "ns": 'a"b'}, "DCGM_FI_DEV_GPU_UTIL") == (
        'DCGM_FI_DEV_GPU_UTIL{ns="a\\"b",pod=~"llama-.*"}'
    )
    assert selector({}, "vllm:prompt_tokens_total") == "vllm:prompt_tokens_total{}"
    reader = FleetReader(
        PromQL(connect("http://127.0.0.1:1", PromAuth(), timeout_s=1)), [], server_matchers={}
    )
    kv = reader.server_queries()["kv_cache_usage"]
    # vLLM >= 0.10's gauge first: `or` keeps it where the old name has the same labels.
    assert kv.index("vllm:kv_cache_usage_perc") < kv.index("vllm:gpu_cache_usage_perc")
    assert len(reader.gpu_queries()) == 8


class _Down(BaseHTTPRequestHandler):
    calls = 0

    def do_GET(self) -> None:
        type(self).calls += 1
        self.send_response(503)
        self.end_headers()
        self.wfile.write(b"overloaded")

    def log_message(self, *_args: object) -> None:
        pass


def test_prometheus_down_leaves_the_window_unknown_and_rereads_it(prom: PromServer, tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Down)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    store = Store.open(f"sqlite:///{tmp_path / 'a.db'}")
    waits: list[float] = []
    try:
        promql = PromQL(
            connect(f"http://127.0.0.1:{server.server_address[1]}", PromAuth(), timeout_s=5),
            retries=2,
            backoff_s=0.5,
            sleep=waits.append,
        )
        job = FleetRollup(
            store,
            FleetReader(promql, _matches()),
            reread_s=10 * MINUTE,
            max_gap_s=180,
            idle_threshold=0.05,
            capacity_tokens_per_s=lambda _n: None,
            catch_up_s=MINUTES * MINUTE,
        )
        now = WINDOW[1] + 5
        with pytest.raises(PrometheusUnavailable, match=r"HTTP 503 \(3 attempts\)"):
            job.run(now)
        assert waits == [0.5, 1.0]  # backoff doubles
        assert _Down.calls == 3
        assert store.gpu_minutes(*WINDOW) == []  # unknown, never zeros
        assert job.done_until == WINDOW[0]
        # Prometheus is back: the next run reads the whole window it missed.
        job.source = _reader(prom.url)
        result = job.run(now)
        assert result.start_minute_ts == WINDOW[0]
        assert len(store.gpu_minutes(*WINDOW)) > 0
        assert job.done_until == WINDOW[1]
    finally:
        server.shutdown()
        store.close()


def test_replicas_do_not_double_write(prom: PromServer, postgres_url: str) -> None:
    from sqlalchemy import create_engine, text

    name = "fleet_replicas"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    Store.open(url).close()
    errors: list[BaseException] = []

    def replica() -> None:
        store = Store.open(url)
        try:
            _roll(store, _reader(prom.url, chunk_minutes=30))
        except BaseException as exc:  # noqa: BLE001  (reported by the assertion below)
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=replica) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = Store.open(url)
    rows = store.gpu_minutes(*WINDOW)
    assert len(rows) == len({(r.gpu_uuid, r.minute_ts) for r in rows})
    truth = small_fleet(T0, MINUTES).gpu_truth(0, MINUTES)
    assert sum(r.observed_s for r in rows) == pytest.approx(sum(t.observed_s for t in truth.values()))
    # The lock: held by one, refused to another at once.
    with store.try_lock("fleet-rollup") as first:
        other = Store.open(url)
        with other.try_lock("fleet-rollup") as second:
            assert first and not second
        skipped = _roll(other, _reader(prom.url))
        assert skipped.skipped and skipped.chunks == 0  # left to the replica holding the lock
        other.close()
    store.close()
    admin.dispose()


DCGM_SCRAPE = Path(__file__).parent / "fixtures" / "dcgm_exporter" / "datadog_metrics.txt"


def test_a_real_dcgm_exporter_scrape_reads_with_its_labels(tmp_path: Path) -> None:
    """dcgm-exporter's real label shape (DataDog's recorded scrape), scraped twice a minute apart, as
    Prometheus stores it: the GPU is read by `UUID`, `gpu`, `Hostname`, `modelName`, in its units."""
    from prometheus_client.parser import text_string_to_metric_families

    t = T0 + 30
    body = DCGM_SCRAPE.read_text()
    series = []
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            # The parser adds `_total` to a counter's name; dcgm-exporter's counters have none.
            name = sample.name if sample.name in body else family.name
            # The energy counter advances 6,000 mJ between the two scrapes; gauges stay.
            later = sample.value + (6000 if name == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" else 0)
            series.append(Series(name, dict(sample.labels), [(t, sample.value), (t + 60, later)]))
    labelled = DeploymentMatch("t4", {"modelName": "~Tesla T4", "Hostname": "424773df46e0"}, {})
    with running_prometheus(series, tmp_path) as server:
        promql = PromQL(connect(server.url, PromAuth(), timeout_s=10), retries=0)
        block, servers = FleetReader(promql, [labelled]).read(T0, T0 + 2 * MINUTE)
    gpus = block.samples()
    assert servers == []
    # Series without a UUID (DataDog's dummies, the exporter's own) are not GPUs.
    assert {s.gpu_uuid for s in gpus} == {"GPU-20c56d28-0da5-6d26-a36a-e7af1ce2586e"}
    first, second = gpus
    assert (first.ts, second.ts) == (T0 + MINUTE, T0 + 2 * MINUTE)  # each minute's point at its end
    assert second.host == "424773df46e0" and second.gpu_index == 0 and second.gpu_name == "Tesla T4"
    assert second.deployment == "t4"
    assert second.util_pct == 0.0 and second.power_w == pytest.approx(8.969)
    assert second.mem_used_bytes == 0
    assert second.mem_total_bytes == 15_109 << 20  # FB_USED + FB_FREE (this exporter has no FB_RESERVED)
    assert second.energy_j == pytest.approx((128_996_013 + 6000) / 1000)  # mJ -> J
    assert second.sm_active_pct is None  # the profiling fields of this scrape carry no GPU labels


def test_the_fleet_example_config_is_valid() -> None:
    from auditor.config import load_config

    config = load_config(Path(__file__).parent.parent / "deploy" / "fleet.example.toml")
    assert config.fleet is not None and config.fleet.gpu_matchers == {"job": "dcgm-exporter"}
    assert all(d.prometheus_matchers for d in config.deployments)
