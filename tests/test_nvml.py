"""The NVML collector on the fake pynvml (values from real H100/H200 captures), and on the real one."""

from __future__ import annotations

import time
from typing import Any

import pytest

from auditor.config import Config
from collectors.interface import CollectorUnavailable
from collectors.nvml import GpuDeploymentMap, NvmlCollector, load_pynvml
from tests.hostkit import THREE_GPUS, load_fake_nvml

DEPLOYMENTS = GpuDeploymentMap([("llama", "h", (0, 1))])


def collector(script: dict[str, Any], **kwargs: Any) -> NvmlCollector:
    return NvmlCollector(load_fake_nvml(script), host="h", deployments=DEPLOYMENTS, interval_s=1.0, **kwargs)


def test_three_gpus_one_without_energy_golden_values() -> None:
    nvml = collector(THREE_GPUS)
    result = nvml.collect()
    by_index = {s.gpu_index: s for s in result.samples}
    assert sorted(by_index) == [0, 1, 2]
    load = by_index[0]
    # nvidia-smi under gpu-burn on the H100: 100 %, 633 W (dmon), 19818 MiB, 1980 MHz, 3 processes.
    assert (load.gpu_name, load.util_pct, load.mem_util_pct) == ("NVIDIA H100 80GB HBM3", 100.0, 10.0)
    assert load.power_w == 633.0
    assert load.mem_used_bytes == 19818 * 2**20 and load.mem_total_bytes == 81559 * 2**20
    assert load.sm_clock_mhz == 1980
    assert load.process_count == 3
    assert load.process_mem_bytes == (2566 + 1542 + 15690) * 2**20
    assert load.energy_j is not None and load.energy_j >= 987654.321
    assert load.deployment == "llama"
    idle = by_index[1]
    assert idle.energy_j is None  # NotSupported: unknown, not zero
    assert idle.power_w == 77.0 and idle.util_pct == 0.0 and idle.process_count == 0
    assert by_index[2].deployment is None  # not selected by any deployment
    assert result.problems == ()
    assert ("GPU-00000000-0000-0000-0000-000000000200", "energy") in nvml.unsupported()


def test_energy_counter_advances_with_power() -> None:
    nvml = collector({"gpus": [{"profile": "h100_load"}]})
    first = nvml.collect().samples[0]
    time.sleep(0.3)
    second = nvml.collect().samples[0]
    assert first.energy_j is not None and second.energy_j is not None
    joules = second.energy_j - first.energy_j
    assert 633 * (second.ts - first.ts) * 0.5 < joules < 633 * (second.ts - first.ts) * 2


def test_utilization_is_averaged_over_the_interval_from_nvml_samples() -> None:
    # The instantaneous reading says 100 %; NVML's buffer alternates 0 and 100 over the interval.
    nvml = collector({"gpus": [{"profile": "h100_load", "util_samples": [0, 100]}]})
    util = nvml.collect().samples[0].util_pct
    assert util is not None and 40 <= util <= 60


def test_utilization_falls_back_to_the_instant_reading_without_samples() -> None:
    nvml = collector(
        {"gpus": [{"profile": "h100_load", "util_samples": [0], "not_supported": ["nvmlDeviceGetSamples"]}]}
    )
    assert nvml.collect().samples[0].util_pct == 100.0


def test_gpm_sm_activity_from_the_second_pass_and_none_without_gpm() -> None:
    nvml = collector({"gpus": [{"profile": "h100_load"}, {"profile": "h100_idle", "gpm": None}]})
    first = {s.gpu_index: s for s in nvml.collect().samples}
    second = {s.gpu_index: s for s in nvml.collect().samples}
    assert first[0].sm_active_pct is None  # GPM needs two samples
    assert second[0].sm_active_pct == 100.0
    assert second[0].tensor_active_pct is None  # the metric came back NotSupported
    assert second[1].sm_active_pct is None  # no GPM on this GPU


def test_gpu_lost_mid_run_the_others_go_on_and_it_comes_back_after_reinit() -> None:
    script = {
        "gpus": [{"profile": "h100_load"}, {"profile": "h200_load", "lost_after_s": 0.2, "lost_until_s": 0.8}]
    }
    nvml = collector(script, backoff_initial_s=0.1, backoff_max_s=0.2)
    assert {s.gpu_index for s in nvml.collect().samples} == {0, 1}
    time.sleep(0.3)
    lost = nvml.collect()
    assert {s.gpu_index for s in lost.samples} == {0}
    assert [p.kind for p in lost.problems] == ["gpu_lost"]
    assert lost.problems[0].subject == "GPU-00000000-0000-0000-0000-000000000201"
    time.sleep(0.15)
    still = nvml.collect()  # re-init attempted: still lost, still named by its UUID
    assert {s.gpu_index for s in still.samples} == {0}
    assert still.problems[0].subject == "GPU-00000000-0000-0000-0000-000000000201"
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        time.sleep(0.1)
        back = nvml.collect()
        if {s.gpu_index for s in back.samples} == {0, 1}:
            break
    assert {s.gpu_index for s in back.samples} == {0, 1}
    assert back.problems == ()


@pytest.mark.parametrize(
    ("error", "kind", "fix_words"),
    [
        ("LibraryNotFound", "no_library", "install the NVIDIA driver"),
        ("DriverNotLoaded", "no_driver", "lsmod"),
    ],
)
def test_no_library_or_driver_makes_the_collector_unavailable(error: str, kind: str, fix_words: str) -> None:
    nvml = collector({"init_error": error, "gpus": [{"profile": "h100_load"}]})
    with pytest.raises(CollectorUnavailable) as caught:
        nvml.collect()
    assert caught.value.kind == kind
    assert caught.value.fix is not None and fix_words in caught.value.fix
    status = nvml.status()
    assert not status.available and status.fix == caught.value.fix


def _real_nvml_works() -> bool:
    try:
        nvml = load_pynvml()
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001  (any failure means: no usable GPU here)
        return False
    nvml.nvmlShutdown()
    return True


def test_real_pynvml_without_a_driver_says_why() -> None:
    if _real_nvml_works():
        pytest.skip("this machine has a working NVML")
    nvml = NvmlCollector(load_pynvml(), host="h", deployments=DEPLOYMENTS, interval_s=1.0)
    with pytest.raises(CollectorUnavailable) as caught:
        nvml.collect()
    assert caught.value.kind in {"no_library", "no_driver"}
    assert "NVML cannot start" in caught.value.message


def test_deployment_map_from_config() -> None:
    config = Config.model_validate(
        {
            "deployments": [
                {
                    "name": "a",
                    "model": "m",
                    "gpu_type": "H100",
                    "gpus": [{"host": "h", "indexes": [0, 1]}],
                    "price": {"source": "static", "gpu_hourly_usd": 1},
                },
                {
                    "name": "b",
                    "model": "m",
                    "gpu_type": "H100",
                    "gpu_count": 8,
                    "gpus": [{"host": "other"}],
                    "price": {"source": "static", "gpu_hourly_usd": 1},
                },
            ]
        }
    )
    mapping = GpuDeploymentMap.from_config(config)
    assert mapping.deployment("h", 1) == "a"
    assert mapping.deployment("h", 2) is None
    assert mapping.deployment("other", 7) == "b"


@pytest.mark.gpu
def test_real_gpu_sampling_pass() -> None:
    if not _real_nvml_works():
        pytest.skip("no NVIDIA GPU and driver here")
    nvml = NvmlCollector(load_pynvml(), host="h", deployments=DEPLOYMENTS, interval_s=1.0)
    try:
        samples = nvml.collect().samples
    finally:
        nvml.close()
    assert samples
    for s in samples:
        assert s.gpu_uuid.startswith(("GPU-", "MIG-"))
        assert s.mem_total_bytes is None or s.mem_total_bytes > 0
        assert s.power_w is None or 0 < s.power_w < 2000
