"""`auditor doctor` and `auditor status`, run as a user runs them (subprocesses of the entry point)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from auditor.model import GpuSample, ServerSample
from auditor.rollup import minute_floor, run_rollup
from auditor.store import Store
from tests.hostkit import AUDITOR, HOST, THREE_GPUS, VllmServer, daemon_env, free_port, write_config


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AUDITOR), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_doctor_all_ok_with_fake_nvml_and_a_live_server(tmp_path: Path) -> None:
    with VllmServer() as server:
        config = write_config(tmp_path, servers=[server.url], slack_channel=True)
        env = daemon_env(tmp_path, THREE_GPUS, SLACK_BOT_TOKEN="xoxb-secret-value")  # noqa: S106  (a test value)
        result = run(["doctor", "--config", str(config)], env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok    nvml: 3 GPU(s), driver 590.48.01")
    assert any(
        line.startswith(f"ok    inference llama {server.url}: vllm, model facebook/opt-125m")
        for line in lines
    )
    assert any(line.startswith("ok    store: sqlite:///") for line in lines)
    assert "ok    slack: token present in $SLACK_BOT_TOKEN" in lines
    assert "xoxb-secret-value" not in result.stdout + result.stderr


def test_doctor_fails_on_missing_token_and_down_server_saying_the_fix(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}/metrics"
    config = write_config(tmp_path, servers=[down], slack_channel=True)
    env = daemon_env(tmp_path, THREE_GPUS)
    env.pop("SLACK_BOT_TOKEN", None)
    result = run(["doctor", "--config", str(config), "--json"], env)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    checks = {c["source"]: c for c in report["checks"]}
    assert checks["nvml"]["ok"]
    server = checks[f"inference llama {down}"]
    assert not server["ok"] and "unreachable" in server["detail"] and "running" in server["fix"]
    assert not checks["slack"]["ok"] and "SLACK_BOT_TOKEN" in checks["slack"]["fix"]


def test_doctor_without_nvml_library_says_why(tmp_path: Path) -> None:
    # The real nvidia-ml-py on a machine without a driver: NVML cannot start.
    config = write_config(tmp_path, servers=[])
    env = {k: v for k, v in os.environ.items() if k != "AUDITOR_CONFIG"} | {"AUDITOR_HOST": HOST}
    result = run(["doctor", "--config", str(config)], env)
    if result.stdout.startswith("ok    nvml"):
        return  # a machine with a GPU: nothing to show here
    assert result.returncode == 1
    first = result.stdout.splitlines()[0]
    assert first.startswith("FAIL  nvml: NVML cannot start")
    assert "->" in first and ("driver" in first or "NVML library" in first)


def _populate(db_url: str) -> None:
    now = time.time()
    start = now - 130
    store = Store.open(db_url)
    gpu, server = [], []
    for i in range(14):
        ts = start + 10 * i
        gpu.append(
            GpuSample(
                ts=ts,
                host=HOST,
                gpu_uuid="GPU-a",
                gpu_index=0,
                deployment="llama",
                gpu_name="NVIDIA H100",
                util_pct=97.0,
                mem_used_bytes=20 * 2**30,
                mem_total_bytes=80 * 2**30,
                power_w=633.0,
                process_count=3,
            )
        )
        server.append(
            ServerSample(
                ts=ts,
                host=HOST,
                deployment="llama",
                instance="u",
                prompt_tokens_total=1000.0 * i,
                generation_tokens_total=0.0,
                requests_running=2,
            )
        )
    store.add_gpu_samples(gpu)
    store.add_server_samples(server)
    run_rollup(
        store,
        minute_floor(start),
        minute_floor(now) + 60,
        max_gap_s=30,
        idle_threshold=0.05,
        capacity_tokens_per_s=lambda _: None,
    )
    store.close()


def test_status_json_and_table_from_the_store(tmp_path: Path) -> None:
    config = write_config(tmp_path, servers=["http://127.0.0.1:1/metrics"])
    _populate(f"sqlite:///{tmp_path / 'auditor.db'}")
    env = {k: v for k, v in os.environ.items() if k != "AUDITOR_CONFIG"}
    result = run(["status", "--config", str(config), "--json"], env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    [gpu] = data["gpus"]
    assert (gpu["gpu_uuid"], gpu["util_pct"], gpu["power_w"], gpu["process_count"]) == (
        "GPU-a",
        97.0,
        633.0,
        3,
    )
    [deployment] = data["deployments"]
    assert deployment["deployment"] == "llama"
    assert deployment["requests_running"] == 2
    assert deployment["cost_rate_usd_per_h"] == 5.0  # 2 GPUs selected × $2.50/h
    assert deployment["tokens_per_s"] is not None and deployment["tokens_per_s"] > 0
    table = run(["status", "--config", str(config)], env)
    assert table.returncode == 0, table.stderr
    assert "633 W" in table.stdout and "97%" in table.stdout and "20.0/80.0 GiB" in table.stdout
    assert "llama" in table.stdout and "5.00" in table.stdout


def test_status_with_no_samples_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path, servers=[])
    Store.open(f"sqlite:///{tmp_path / 'auditor.db'}").close()  # the daemon made it, then sampled nothing
    env = {k: v for k, v in os.environ.items() if k != "AUDITOR_CONFIG"}
    result = run(["status", "--config", str(config)], env)
    assert result.returncode == 0, result.stderr
    assert "No GPU samples in the last 5 minutes: is `auditor daemon` running?" in result.stdout
    assert "—" in result.stdout  # unknown figures shown as unknown, not 0
