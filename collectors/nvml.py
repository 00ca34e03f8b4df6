"""NVML: the one module that talks to the NVIDIA driver (through nvidia-ml-py, module `pynvml`).

What each NVML error means here (nvitop's lesson: handle each for what it is):
- `NotSupported`, `NoData`, `NotFound`, `FunctionNotFound` (an older driver lacks the call): that
  field is unknown (`None`) on that GPU; a missing function is logged once.
- `GpuIsLost`, `Unknown`, `ResetRequired`: the GPU fell off the bus or its driver state is broken
  (`nvidia-smi` shows "Unable to determine the device handle … GPU is lost"). That GPU is marked
  unavailable and gives no samples (its time becomes *unknown*, never idle); the others go on, and
  NVML is re-initialised with backoff until it answers again.
- `LibraryNotFound`, `DriverNotLoaded`, `NoPermission`, `LibRmVersionMismatch` at init: the whole
  collector is unavailable (`CollectorUnavailable`, with the fix `auditor doctor` prints); init is
  retried with backoff, so a driver loaded later is picked up without a restart.

Every outside thing comes in through the constructor: the `pynvml` module itself (tests pass a fake
at exactly this boundary), the clocks and the host name.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Any

from auditor.config import Config
from auditor.model import GpuSample
from collectors.interface import Backoff, Collection, CollectorUnavailable, Problem

log = logging.getLogger(__name__)

NAME = "nvml"

# Errors that make one field unknown on one GPU.
_FIELD_UNKNOWN = ("NVMLError_NotSupported", "NVMLError_NoData", "NVMLError_NotFound")
# Errors that make the whole GPU unavailable until NVML is re-initialised.
_GPU_UNAVAILABLE = ("NVMLError_GpuIsLost", "NVMLError_Unknown", "NVMLError_ResetRequired")
# Errors at init that mean NVML cannot run on this host at all, with the fix for each.
_INIT_FIXES = {
    "NVMLError_LibraryNotFound": (
        "no_library",
        "the NVML library (libnvidia-ml.so.1) is not installed: install the NVIDIA driver, "
        "or run the daemon where it is (inference metrics are still collected)",
    ),
    "NVMLError_DriverNotLoaded": (
        "no_driver",
        "the NVIDIA kernel driver is not loaded: check `nvidia-smi` and `lsmod | grep nvidia`",
    ),
    "NVMLError_NoPermission": (
        "no_permission",
        "no permission to open /dev/nvidia*: add the daemon's user to the group that owns them",
    ),
    "NVMLError_LibRmVersionMismatch": (
        "driver_mismatch",
        "the NVML library and the kernel driver differ in version: reboot or reload the driver",
    ),
}


def _error_named(nvml: ModuleType, names: Sequence[str]) -> tuple[type[BaseException], ...]:
    return tuple(getattr(nvml, n) for n in names if hasattr(nvml, n))


class GpuDeploymentMap:
    """Which deployment a GPU of this host belongs to, from the config's `deployments[].gpus`."""

    def __init__(self, selectors: Sequence[tuple[str, str, tuple[int, ...] | None]]) -> None:
        self._selectors = list(selectors)

    @classmethod
    def from_config(cls, config: Config) -> GpuDeploymentMap:
        return cls(
            [
                (d.name, sel.host, None if sel.indexes is None else tuple(sel.indexes))
                for d in config.deployments
                for sel in d.gpus
            ]
        )

    def deployment(self, host: str, gpu_index: int) -> str | None:
        for name, selector_host, indexes in self._selectors:
            if selector_host == host and (indexes is None or gpu_index in indexes):
                return name
        return None

    def hosts(self) -> set[str]:
        return {host for _, host, _ in self._selectors}


@dataclass
class _Gpu:
    index: int
    handle: Any
    uuid: str
    name: str | None
    last_sample_us: int
    gpm: bool | None = None
    """None until asked; False when the GPU (pre-Hopper, MIG, vGPU) has no GPM."""
    gpm_samples: list[Any] = field(default_factory=list)
    gpm_primed: bool = False


@dataclass(frozen=True, slots=True)
class NvmlStatus:
    """What `auditor doctor` says about NVML."""

    available: bool
    gpu_count: int
    driver_version: str | None
    reason: str | None = None
    fix: str | None = None
    unavailable_gpus: tuple[str, ...] = ()


class NvmlCollector:
    """Samples every GPU NVML sees. `collect()` is one pass; thread-safe (one lock around NVML)."""

    def __init__(
        self,
        nvml: ModuleType,
        *,
        host: str,
        deployments: GpuDeploymentMap,
        interval_s: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 300.0,
    ) -> None:
        self._nvml = nvml
        self._host = host
        self._deployments = deployments
        self._interval_s = interval_s
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._initialized = False
        self._init_error: CollectorUnavailable | None = None
        self._init_backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._reinit_backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._gpus: list[_Gpu] = []
        self._unavailable: dict[int, str] = {}
        """GPU index → UUID (or index) of GPUs marked lost, until a re-init finds them again."""
        self._missing_functions: set[str] = set()
        self._unsupported: set[tuple[str, str]] = set()
        self._driver_version: str | None = None
        self._field_unknown = _error_named(nvml, _FIELD_UNKNOWN)
        self._gpu_unavailable = _error_named(nvml, _GPU_UNAVAILABLE)
        self._function_not_found = _error_named(nvml, ("NVMLError_FunctionNotFound",))

    @property
    def name(self) -> str:
        return NAME

    # -- life cycle -----------------------------------------------------------------------------

    def _init(self) -> None:
        """nvmlInit and enumerate the GPUs. Raises CollectorUnavailable. Call with the lock held."""
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            kind, fix = _INIT_FIXES.get(type(exc).__name__, ("init_failed", "check `nvidia-smi`"))
            raise CollectorUnavailable(f"NVML cannot start: {exc}", kind=kind, fix=fix) from None
        self._initialized = True
        self._driver_version = self._query(nvml.nvmlSystemGetDriverVersion, default=None)
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            self._shutdown()
            raise CollectorUnavailable(
                f"NVML cannot count the GPUs: {exc}", kind="init_failed", fix="check `nvidia-smi`"
            ) from None
        start_us = int((self._clock() - self._interval_s) * 1e6)
        gpus = []
        known = {g.index: g.uuid for g in self._gpus} | self._unavailable
        self._unavailable = {}
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            except self._gpu_unavailable as exc:
                self._unavailable[index] = known.get(index, f"GPU {index}")
                log.debug("nvml: GPU %d is unavailable (%s); the other GPUs go on", index, exc)
                continue
            name = self._query(partial(_device_name, nvml, handle), default=None)
            gpus.append(_Gpu(index=index, handle=handle, uuid=uuid, name=name, last_sample_us=start_us))
        self._gpus = gpus

    def _shutdown(self) -> None:
        if not self._initialized:
            return
        for gpu in self._gpus:
            for sample in gpu.gpm_samples:
                # Freeing may fail when NVML is already going down; there is nothing left to do then.
                with contextlib.suppress(self._nvml.NVMLError):
                    self._nvml.nvmlGpmSampleFree(sample)
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            log.debug("nvml: shutdown: %s", exc)
        self._initialized = False
        self._gpus = []

    def _shutdown_keeping_names(self) -> None:
        """Shut down for a re-init; GPM samples are re-primed after it, so one GPM reading is lost."""
        names = {g.index: g.uuid for g in self._gpus}
        self._shutdown()
        self._unavailable = names | self._unavailable

    def close(self) -> None:
        with self._lock:
            self._shutdown()

    def _ensure_initialized(self) -> None:
        if self._initialized:
            return
        now = self._monotonic()
        if not self._init_backoff.ready(now) and self._init_error is not None:
            raise self._init_error
        try:
            self._init()
        except CollectorUnavailable as exc:
            self._init_backoff.failed(now)
            self._init_error = exc
            raise
        self._init_backoff.reset()
        self._init_error = None

    def _maybe_reinit(self) -> None:
        """GPUs were lost: shut NVML down and start it again, at most as often as the backoff allows."""
        now = self._monotonic()
        if not self._unavailable or not self._reinit_backoff.ready(now):
            return
        lost = dict(self._unavailable)
        self._shutdown_keeping_names()
        self._ensure_initialized()
        found = {g.index for g in self._gpus} & set(lost)
        if found:
            log.warning("nvml: GPU(s) %s available again after re-initialising NVML", sorted(found))
        if self._unavailable:
            self._reinit_backoff.failed(now)
        else:
            self._reinit_backoff.reset()

    # -- one pass -------------------------------------------------------------------------------

    def status(self) -> NvmlStatus:
        with self._lock:
            try:
                self._ensure_initialized()
            except CollectorUnavailable as exc:
                return NvmlStatus(False, 0, None, exc.message, exc.fix)
            return NvmlStatus(
                True,
                len(self._gpus) + len(self._unavailable),
                self._driver_version,
                unavailable_gpus=tuple(self._unavailable.values()),
            )

    def collect(self) -> Collection[GpuSample]:
        with self._lock:
            self._ensure_initialized()
            self._maybe_reinit()
            ts = self._clock()
            samples: list[GpuSample] = []
            problems = [
                Problem(subject, "gpu_lost", f"GPU {index} ({subject}) is unavailable")
                for index, subject in self._unavailable.items()
            ]
            for gpu in list(self._gpus):
                try:
                    sample, unknown = self._sample(gpu, ts)
                except self._gpu_unavailable as exc:
                    self._mark_unavailable(gpu, exc)
                    problems.append(Problem(gpu.uuid, "gpu_lost", f"GPU {gpu.index} ({gpu.uuid}): {exc}"))
                    continue
                samples.append(sample)
                self._note_unsupported(gpu, unknown)
            return Collection(tuple(samples), tuple(problems))

    def _note_unsupported(self, gpu: _Gpu, fields: list[str]) -> None:
        """A field this GPU cannot give is a property of the GPU, not an error: logged once."""
        for name in fields:
            if (gpu.uuid, name) not in self._unsupported:
                self._unsupported.add((gpu.uuid, name))
                log.info(
                    "nvml: GPU %d (%s) does not report %s; it is recorded as unknown",
                    gpu.index,
                    gpu.uuid,
                    name,
                )

    def unsupported(self) -> set[tuple[str, str]]:
        """(GPU UUID, field) pairs NVML could not give so far."""
        with self._lock:
            return set(self._unsupported)

    def _mark_unavailable(self, gpu: _Gpu, exc: BaseException) -> None:
        log.debug(
            "nvml: GPU %d (%s) is unavailable: %s; its time is unknown until NVML finds it again",
            gpu.index,
            gpu.uuid,
            exc,
        )
        self._gpus.remove(gpu)
        self._unavailable[gpu.index] = gpu.uuid
        self._reinit_backoff.failed(self._monotonic())

    def _query(
        self, fn: Callable[[], Any], *, default: Any, unknown: list[str] | None = None, what: str = ""
    ) -> Any:
        """Call NVML; a field it cannot give is `default`. GPU-lost errors propagate to `collect`."""
        try:
            return fn()
        except self._gpu_unavailable:
            raise
        except self._function_not_found:
            if what not in self._missing_functions:
                self._missing_functions.add(what)
                log.warning("nvml: this driver has no function for %s; it is recorded as unknown", what)
        except self._field_unknown:
            if unknown is not None and what:
                unknown.append(what)
        except self._nvml.NVMLError as exc:
            log.debug("nvml: %s: %s", what, exc)
            if unknown is not None and what:
                unknown.append(what)
        return default

    def _sample(self, gpu: _Gpu, ts: float) -> tuple[GpuSample, list[str]]:
        nvml, h = self._nvml, gpu.handle
        unknown: list[str] = []
        rates = self._query(
            lambda: nvml.nvmlDeviceGetUtilizationRates(h), default=None, unknown=unknown, what="utilization"
        )
        util = self._buffered_utilization(gpu)
        if util is None and rates is not None:
            util = float(rates.gpu)
        memory = self._memory(h, unknown)
        power_mw = self._query(
            lambda: nvml.nvmlDeviceGetPowerUsage(h), default=None, unknown=unknown, what="power"
        )
        energy_mj = self._query(
            lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(h), default=None, unknown=unknown, what="energy"
        )
        sm_clock = self._query(
            lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM),
            default=None,
            unknown=unknown,
            what="sm_clock",
        )
        processes = self._query(
            lambda: nvml.nvmlDeviceGetComputeRunningProcesses(h),
            default=None,
            unknown=unknown,
            what="processes",
        )
        sm_pct, tensor_pct = self._gpm(gpu)
        process_mem = None
        if processes is not None:
            known = [p.usedGpuMemory for p in processes if getattr(p, "usedGpuMemory", None) is not None]
            process_mem = sum(int(m) for m in known) if known or not processes else None
        sample = GpuSample(
            ts=ts,
            host=self._host,
            gpu_uuid=gpu.uuid,
            gpu_index=gpu.index,
            deployment=self._deployments.deployment(self._host, gpu.index),
            gpu_name=gpu.name,
            util_pct=util,
            mem_util_pct=None if rates is None else float(rates.memory),
            sm_active_pct=sm_pct,
            tensor_active_pct=tensor_pct,
            mem_used_bytes=None if memory is None else int(memory.used),
            mem_total_bytes=None if memory is None else int(memory.total),
            power_w=None if power_mw is None else power_mw / 1000,
            energy_j=None if energy_mj is None else energy_mj / 1000,
            sm_clock_mhz=None if sm_clock is None else int(sm_clock),
            process_count=None if processes is None else len(processes),
            process_mem_bytes=process_mem,
        )
        return sample, unknown

    def _memory(self, h: Any, unknown: list[str]) -> Any:
        nvml = self._nvml
        version = getattr(nvml, "nvmlMemory_v2", None)
        if version is not None:
            info = self._query(
                lambda: nvml.nvmlDeviceGetMemoryInfo(h, version=version), default=None, what="memory_v2"
            )
            if info is not None:
                return info
        return self._query(
            lambda: nvml.nvmlDeviceGetMemoryInfo(h), default=None, unknown=unknown, what="memory"
        )

    def _buffered_utilization(self, gpu: _Gpu) -> float | None:
        """Mean of NVML's own utilization samples since the last pass (`nvidia-smi dmon`'s sm %):
        a 10 s interval averages the whole 10 s, not one instant. None when the driver keeps none."""
        nvml = self._nvml
        result = self._query(
            lambda: nvml.nvmlDeviceGetSamples(
                gpu.handle, nvml.NVML_GPU_UTILIZATION_SAMPLES, gpu.last_sample_us
            ),
            default=None,
            what="utilization_samples",
        )
        if not result:
            return None
        value_type, samples = result
        fresh = [s for s in samples if s.timeStamp > gpu.last_sample_us]
        if not fresh:
            return None
        gpu.last_sample_us = max(s.timeStamp for s in fresh)
        values = [_sample_value(value_type, s.sampleValue) for s in fresh]
        return sum(values) / len(values)

    def _gpm(self, gpu: _Gpu) -> tuple[float | None, float | None]:
        """SM and any-tensor activity (0–100) from GPM (Hopper and later) between this pass and the last."""
        nvml = self._nvml
        if gpu.gpm is None:
            support = self._query(
                lambda: nvml.nvmlGpmQueryDeviceSupport(gpu.handle), default=None, what="gpm"
            )
            gpu.gpm = bool(support is not None and support.isSupportedDevice)
            if gpu.gpm:
                alloc = [self._query(nvml.nvmlGpmSampleAlloc, default=None, what="gpm") for _ in range(2)]
                gpu.gpm_samples = [s for s in alloc if s is not None]
                gpu.gpm = len(gpu.gpm_samples) == 2
        if not gpu.gpm:
            return None, None
        previous, current = gpu.gpm_samples
        if self._query(lambda: nvml.nvmlGpmSampleGet(gpu.handle, current), default=None, what="gpm") is None:
            gpu.gpm_primed = False
            return None, None
        gpu.gpm_samples = [current, previous]
        if not gpu.gpm_primed:
            gpu.gpm_primed = True
            return None, None
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = 2
        request.sample1 = previous
        request.sample2 = current
        request.metrics[0].metricId = nvml.NVML_GPM_METRIC_SM_UTIL
        request.metrics[1].metricId = nvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL
        result = self._query(lambda: nvml.nvmlGpmMetricsGet(request), default=None, what="gpm")
        if result is None:
            return None, None
        values = [m.value if m.nvmlReturn == 0 else None for m in (result.metrics[0], result.metrics[1])]
        return values[0], values[1]


def _device_name(nvml: ModuleType, handle: Any) -> str:
    return _text(nvml.nvmlDeviceGetName(handle))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _sample_value(value_type: int, value: Any) -> float:
    """A `c_nvmlValue_t` by its NVML_VALUE_TYPE_* (double, uint, ulong, ulonglong, sll, sint, ushort)."""
    attribute = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")[value_type]
    return float(getattr(value, attribute))


def load_pynvml() -> ModuleType:
    """The real binding, imported when the daemon starts (never at import time of this module)."""
    return importlib.import_module("pynvml")
