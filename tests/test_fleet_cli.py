"""Fleet mode end to end: a Prometheus-only config (no host, no NVML) against a real Prometheus and a
real PostgreSQL; `auditor fleet rollup`, the daemon's fleet job, `report --month`, `rules check` and
the digest, with the report's figures equal to those computed from the generated data."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from auditor.store import Store
from tests.fleetkit import MATCHERS, MINUTE, Fleet, small_fleet
from tests.hostkit import AUDITOR, daemon_process, free_port
from tests.promkit import PromServer, running_prometheus

DAY = 86_400
NOW = time.time()
T0 = int(NOW // DAY * DAY - 15 * DAY)
MINUTES = int((NOW // MINUTE * MINUTE - 3600 - T0) // MINUTE)
EVERY = 5
"""A sample every 5 minutes (dcgm-exporter scraped every 5 minutes): 15 days stay small."""


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return small_fleet(T0, MINUTES, every=EVERY)


@pytest.fixture(scope="module")
def prom(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromServer]:
    with running_prometheus(fleet.series(), tmp_path_factory.mktemp("prom")) as server:
        yield server


def _database(postgres_url: str, name: str) -> str:
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


def _config(path: Path, prom_url: str, store_url: str, fleet: Fleet) -> Path:
    deployments = ""
    for name, matchers in MATCHERS.items():
        labels = ", ".join(f'{k} = "{v}"' for k, v in matchers.items())
        gpus = sum(1 for g in fleet.gpus if g.deployment == name)
        deployments += f"""
[[deployments]]
name = "{name}"
model = "{name}"
gpu_type = "H100"
gpu_count = {gpus}
prometheus_matchers = {{ {labels} }}
compare_to = ["gpt-4o"]
capacity_tokens_per_s = 100
price = {{ source = "static", gpu_hourly_usd = 2.50 }}
"""
    path.write_text(
        f"""
[store]
url = "{store_url}"

[daemon]
exporter_listen = "127.0.0.1:{free_port()}"

[fleet]
url = "{prom_url}"
max_gap_s = {fleet.max_gap_s}
{deployments}"""
    )
    path.chmod(0o600)
    return path


def _auditor(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AUDITOR), *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_report_rules_and_digest_from_prometheus_only(
    prom: PromServer, fleet: Fleet, postgres_url: str, tmp_path: Path
) -> None:
    config = _config(tmp_path / "auditor.toml", prom.url, _database(postgres_url, "fleet_cli"), fleet)
    start = datetime.fromtimestamp(T0, UTC).strftime("%Y-%m-%dT%H:%M")
    done = _auditor("fleet", "rollup", "--from", start, "--json", config=config)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["gpu_minutes"] > 0 and not figures["skipped"]
    # 13 queries per chunk of `chunk_minutes` (less the minutes read on each side): not per GPU.
    assert figures["requests"] == 13 * figures["chunks"]

    month_start = datetime.fromtimestamp(T0 + 14 * DAY, UTC).replace(day=1, hour=0, minute=0)
    month = month_start.strftime("%Y-%m")
    report = _auditor("report", "--month", month, "--json", config=config)
    assert report.returncode == 0, report.stderr
    by_name = {d["name"]: d for d in json.loads(report.stdout)["deployments"]}
    next_month = (month_start.replace(day=28).timestamp() + 4 * DAY) // DAY * DAY
    next_month = datetime.fromtimestamp(next_month, UTC).replace(day=1).timestamp()
    first = max(0, int(month_start.timestamp() - T0) // MINUTE)
    after = min(MINUTES, int(next_month - T0) // MINUTE)
    gpu_truth = fleet.gpu_truth(first, after)
    for name, want in fleet.deployment_truth(first, after).items():
        got = by_name[name]
        assert got["prompt_tokens"] == want.prompt_tokens, name
        assert got["generation_tokens"] == want.generation_tokens, name
        keys = [g.key for g in fleet.gpus if g.deployment == name]
        observed = sum(gpu_truth[k].observed_s for k in keys)
        assert got["observed_gpu_hours"] == pytest.approx(observed / 3600, abs=1e-5), name
        sm = sum(gpu_truth[k].sm_weighted for k in keys) / observed
        assert got["utilization_measures"]["sm_active"] == pytest.approx(sm, abs=1e-5), name
        duty = [k for k in keys if not k.endswith("/1")]  # the MIG instance has no duty cycle
        if duty:
            util = sum(gpu_truth[k].util_weighted for k in duty) / sum(gpu_truth[k].observed_s for k in duty)
            assert got["utilization_measures"]["gpu_util"] == pytest.approx(util, abs=1e-5), name
        else:
            assert got["utilization_measures"]["gpu_util"] is None  # unknown, never 0
        assert got["utilization_metric"] == "sm_active"
        assert math.isclose(
            got["coverage"], min(1.0, got["observed_gpu_hours"] / got["billed_gpu_hours"]), abs_tol=1e-5
        )

    rules = _auditor("rules", "check", "--json", config=config)
    assert rules.returncode in (0, 1), rules.stderr
    findings = json.loads(rules.stdout)["findings"]
    texts = [(f["rule"], f["subject"], f["verdict"], f["text"]) for f in findings]
    # The rules judged the fleet from the store the roll-up filled: a verdict, and no "no data".
    assert any(verdict for _r, _s, verdict, _t in texts), texts
    assert not any("no data" in t for _r, _s, _v, t in texts), texts

    digest = _auditor("digest", config=config)
    assert digest.returncode == 0, digest.stderr
    assert "llama" in digest.stdout and "mistral" in digest.stdout

    # status shows the fleet's GPUs from their newest rolled-up minutes (no samples in fleet mode).
    status = _auditor("status", "--minutes", "120", "--json", config=config)
    assert status.returncode == 0, status.stderr
    shown = {g["gpu_uuid"]: g for g in json.loads(status.stdout)["gpus"]}
    assert set(shown) == {g.key for g in fleet.gpus if g.last == MINUTES - 1}  # h1 GPU 1 left days ago
    for gpu in fleet.gpus:
        if gpu.key in shown:
            got = shown[gpu.key]
            assert got["host"] == gpu.host and got["deployment"] == gpu.deployment
            assert (
                got["mem_total_bytes"] == int(gpu.total_mib) << 20 and got["mem_used_bytes"] == 40_000 << 20
            )
            assert got["sm_active_pct"] is not None and got["age_s"] > 3600
            assert (got["util_pct"] is None) == (gpu.mig_instance is not None)  # MIG: no duty cycle

    # doctor checks Prometheus, not this host's NVML (there is none in fleet mode).
    doctor = _auditor("doctor", "--json", config=config)
    checks = {c["source"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert "nvml" not in checks
    assert checks["prometheus"]["ok"], checks["prometheus"]
    # h1 GPU 1 left days ago; the MIG instance counts as one GPU.
    assert "for 4 GPU(s)" in checks["prometheus"]["detail"], checks["prometheus"]


@pytest.mark.slow
def test_daemon_in_fleet_mode_rolls_up_prometheus(
    prom: PromServer, fleet: Fleet, postgres_url: str, tmp_path: Path
) -> None:
    store_url = _database(postgres_url, "fleet_daemon")
    config = _config(tmp_path / "auditor.toml", prom.url, store_url, fleet)
    with daemon_process(config, dict(os.environ)) as process:
        deadline = time.monotonic() + 120
        rows = 0
        while time.monotonic() < deadline and rows == 0 and process.poll() is None:
            time.sleep(1)
            store = Store.open(store_url)
            rows = len(store.deployment_minutes(T0, NOW))
            store.close()
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=60)
    assert rows > 0, err
    assert process.returncode == 0, err
    assert "fleet mode" in err
    assert "nvml" not in err.lower()  # nothing is sampled on this host
