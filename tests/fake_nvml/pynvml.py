# ruff: noqa: N802, N815, N816, N801
"""A fake `pynvml` at the function boundary: the names, constants and error classes of nvidia-ml-py,
scripted per GPU from JSON. Put this folder first on PYTHONPATH and the real `auditor daemon` runs
on it; in-process tests load it under another name and call `configure()`.

The script (a JSON file named by $FAKE_NVML_SCRIPT, or a dict given to `configure`):

    {"init_error": null,                # or "LibraryNotFound", "DriverNotLoaded", "NoPermission"
     "init_error_windows": [[2.0, 5.0, "Unknown"]],  # nvmlInit raises NVMLError_<name> in [from, until) s
     "t0_monotonic": null,              # the fake clock's zero (time.monotonic(), system-wide: several
                                        # processes share it); null: the first init
     "driver_version": "590.48.01",
     "gpus": [{"profile": "h100_load",  # values from tests/fixtures/nvidia_smi/gpus.json, then overrides:
               "not_supported": ["nvmlDeviceGetTotalEnergyConsumption"],
               "lost_after_s": 1.5,      # from configure()/first init on, every call raises GpuIsLost…
               "lost_until_s": null,     # …until then (null: for good)
               "hang_after_s": null,     # from then on, every call on this GPU blocks forever
               "util_samples": [0, 100], # the utilization buffer cycles through these (one per 1/6 s)
               "gpm": null}]}            # null: no GPM (pre-Hopper)

Energy advances as power × time since the start, so the counter behaves as on a real GPU. The fake's
clock is the monotonic one, as a driver's counters are: setting the wall clock changes none of them.
"""

from __future__ import annotations

import json
import os
import string
import time
from pathlib import Path
from typing import Any

PROFILES = Path(__file__).resolve().parent.parent / "fixtures" / "nvidia_smi" / "gpus.json"
SCRIPT_ENV = "FAKE_NVML_SCRIPT"

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_NO_DATA = 21
NVML_ERROR_UNKNOWN = 999

NVML_CLOCK_SM = 1
NVML_GPU_UTILIZATION_SAMPLES = 1
NVML_VALUE_TYPE_UNSIGNED_INT = 1
nvmlMemory_v2 = 0x02000028
NVML_GPM_METRIC_SM_UTIL = 2
NVML_GPM_METRIC_ANY_TENSOR_UTIL = 5
NVML_GPM_METRICS_GET_VERSION = 1
_SAMPLE_PERIOD_US = 166_667


class NVMLError(Exception):
    _valClassMapping: dict[int, type[NVMLError]] = {}  # noqa: RUF012  (as in nvidia-ml-py)
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


def _make_error_classes() -> None:
    """NVMLError_<CamelName> subclasses, named exactly as nvidia-ml-py names them."""
    module = globals()
    for name in [n for n in list(module) if n.startswith("NVML_ERROR_")]:
        class_name = "NVMLError_" + string.capwords(name.replace("NVML_ERROR_", ""), "_").replace("_", "")
        value = module[name]

        def new(cls: type[NVMLError], *_args: object, _value: int = value) -> NVMLError:
            return NVMLError.__new__(cls, _value)

        error_class = type(class_name, (NVMLError,), {"__new__": new})
        module[class_name] = error_class
        NVMLError._valClassMapping[value] = error_class


_make_error_classes()


class _Struct:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


class c_nvmlGpmMetricsGet_t:
    def __init__(self) -> None:
        self.version = 0
        self.numMetrics = 0
        self.sample1: Any = None
        self.sample2: Any = None
        self.metrics = [_Struct(metricId=0, nvmlReturn=0, value=0.0) for _ in range(8)]


_state: dict[str, Any] = {"script": None, "t0": None, "initialized": False, "calls": 0}


def configure(script: dict[str, Any] | None) -> None:
    """Install a script (None: read $FAKE_NVML_SCRIPT at the next init) and restart the fake clock."""
    _state.update(script=None if script is None else _resolve(script), t0=None, initialized=False, calls=0)


def _resolve(script: dict[str, Any]) -> dict[str, Any]:
    profiles = json.loads(PROFILES.read_text())
    gpus = []
    for gpu in script.get("gpus", []):
        base = dict(profiles[gpu["profile"]]) if "profile" in gpu else {}
        base.update({k: v for k, v in gpu.items() if k != "profile"})
        gpus.append(base)
    return {**script, "gpus": gpus}


def _script() -> dict[str, Any]:
    if _state["script"] is None:
        path = os.environ.get(SCRIPT_ENV)
        _state["script"] = _resolve(json.loads(Path(path).read_text()) if path else {"gpus": []})
    script: dict[str, Any] = _state["script"]
    return script


def _elapsed() -> float:
    if _state["t0"] is None:
        anchor = _script().get("t0_monotonic")
        _state["t0"] = time.monotonic() if anchor is None else float(anchor)
    return time.monotonic() - float(_state["t0"])


def _check_init() -> None:
    _state["calls"] += 1
    if not _state["initialized"]:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)


def _gpu(handle: Any, function: str) -> dict[str, Any]:
    _check_init()
    gpu: dict[str, Any] = _script()["gpus"][handle.index]
    lost_after, lost_until = gpu.get("lost_after_s"), gpu.get("lost_until_s")
    elapsed = _elapsed()
    if lost_after is not None and elapsed >= lost_after and (lost_until is None or elapsed < lost_until):
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)
    hang_after = gpu.get("hang_after_s")
    if hang_after is not None and elapsed >= hang_after:
        while True:  # a driver call that never returns (a wedged GPU): only the watchdog can end it
            time.sleep(3600)
    if function in gpu.get("not_supported", ()):
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return gpu


# -- the functions the auditor calls ------------------------------------------------------------


def nvmlInit() -> None:
    script = _script()
    if script.get("init_error"):
        raise globals()["NVMLError_" + script["init_error"]]()
    elapsed = _elapsed()
    for start, until, error in script.get("init_error_windows", ()):
        if start <= elapsed < until:
            raise globals()["NVMLError_" + error]()
    _state["initialized"] = True


def nvmlShutdown() -> None:
    _check_init()
    _state["initialized"] = False


def nvmlSystemGetDriverVersion() -> str:
    _check_init()
    return str(_script().get("driver_version", "590.48.01"))


def nvmlDeviceGetCount() -> int:
    _check_init()
    return len(_script()["gpus"])


def nvmlDeviceGetHandleByIndex(index: int) -> Any:
    _check_init()
    if not 0 <= index < len(_script()["gpus"]):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    handle = _Struct(index=index)
    _gpu(handle, "nvmlDeviceGetHandleByIndex")
    return handle


def nvmlDeviceGetUUID(handle: Any) -> str:
    return str(_gpu(handle, "nvmlDeviceGetUUID")["uuid"])


def nvmlDeviceGetName(handle: Any) -> str:
    return str(_gpu(handle, "nvmlDeviceGetName")["name"])


def nvmlDeviceGetUtilizationRates(handle: Any) -> Any:
    gpu = _gpu(handle, "nvmlDeviceGetUtilizationRates")
    return _Struct(gpu=gpu["util_gpu"], memory=gpu["util_mem"])


def nvmlDeviceGetSamples(handle: Any, sampling_type: int, last_seen_us: int) -> tuple[int, list[Any]]:
    gpu = _gpu(handle, "nvmlDeviceGetSamples")
    if sampling_type != NVML_GPU_UTILIZATION_SAMPLES:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    pattern = gpu.get("util_samples") or [gpu["util_gpu"]]
    now_us = int(time.time() * 1e6)
    first = max(last_seen_us + 1, now_us - 20 * 1_000_000)
    tick = -(-first // _SAMPLE_PERIOD_US)
    samples = []
    while tick * _SAMPLE_PERIOD_US <= now_us:
        value = pattern[tick % len(pattern)]
        samples.append(_Struct(timeStamp=tick * _SAMPLE_PERIOD_US, sampleValue=_Struct(uiVal=value)))
        tick += 1
    if not samples:
        raise NVMLError(NVML_ERROR_NOT_FOUND)  # what NVML says when no sample is newer than last_seen
    return NVML_VALUE_TYPE_UNSIGNED_INT, samples


def nvmlDeviceGetMemoryInfo(handle: Any, version: int | None = None) -> Any:
    gpu = _gpu(handle, "nvmlDeviceGetMemoryInfo")
    total, used = gpu["mem_total_bytes"], gpu["mem_used_bytes"]
    return _Struct(total=total, used=used, free=total - used, reserved=0, version=version)


def nvmlDeviceGetPowerUsage(handle: Any) -> int:
    return int(_gpu(handle, "nvmlDeviceGetPowerUsage")["power_mw"])


def nvmlDeviceGetTotalEnergyConsumption(handle: Any) -> int:
    gpu = _gpu(handle, "nvmlDeviceGetTotalEnergyConsumption")
    return int(gpu["energy_mj_at_start"] + gpu["power_mw"] * _elapsed())


def nvmlDeviceGetClockInfo(handle: Any, clock_type: int) -> int:
    gpu = _gpu(handle, "nvmlDeviceGetClockInfo")
    if clock_type != NVML_CLOCK_SM:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return int(gpu["sm_clock_mhz"])


def nvmlDeviceGetComputeRunningProcesses(handle: Any) -> list[Any]:
    gpu = _gpu(handle, "nvmlDeviceGetComputeRunningProcesses")
    return [_Struct(pid=pid, usedGpuMemory=used) for pid, used in gpu["processes"]]


def nvmlGpmQueryDeviceSupport(handle: Any) -> Any:
    gpu = _gpu(handle, "nvmlGpmQueryDeviceSupport")
    return _Struct(version=1, isSupportedDevice=1 if gpu.get("gpm") else 0)


def nvmlGpmSampleAlloc() -> Any:
    _check_init()
    return _Struct(handle=None, taken_s=None)


def nvmlGpmSampleFree(sample: Any) -> None:
    _check_init()


def nvmlGpmSampleGet(handle: Any, sample: Any) -> Any:
    gpu = _gpu(handle, "nvmlGpmSampleGet")
    if not gpu.get("gpm"):
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    sample.handle, sample.taken_s = handle, time.time()
    return sample


def nvmlGpmMetricsGet(request: Any) -> Any:
    gpu = _gpu(request.sample2.handle, "nvmlGpmMetricsGet")
    by_id = {NVML_GPM_METRIC_SM_UTIL: "sm_util", NVML_GPM_METRIC_ANY_TENSOR_UTIL: "tensor_util"}
    for metric in request.metrics[: request.numMetrics]:
        value = gpu["gpm"].get(by_id.get(metric.metricId, ""))
        metric.nvmlReturn = NVML_SUCCESS if value is not None else NVML_ERROR_NOT_SUPPORTED
        metric.value = 0.0 if value is None else float(value)
    return request
