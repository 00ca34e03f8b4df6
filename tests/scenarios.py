"""Scenario histories written straight into a real store as minute roll-ups (fast: no raw samples).

`Fleet` collects `GpuMinute`/`DeploymentMinute` rows for one or more deployments, from functions of the
minute that give utilization, tokens and busy share, and writes them with `Store.replace_minutes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from auditor.model import MINUTE_S, DeploymentMinute, GpuMinute
from auditor.store import Store

GIB = 1 << 30
UtilAt = Callable[[int], float | None]


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp())


def weekday_weekend(weekday: float, weekend: float) -> UtilAt:
    """Utilization that is `weekday` Monday to Friday and `weekend` on Saturday and Sunday (UTC)."""

    def at(minute_ts: int) -> float:
        return weekend if datetime.fromtimestamp(minute_ts, UTC).weekday() >= 5 else weekday

    return at


def constant(value: float | None) -> UtilAt:
    return lambda _minute_ts: value


@dataclass
class Fleet:
    gpu_rows: list[GpuMinute] = field(default_factory=list)
    deployment_rows: list[DeploymentMinute] = field(default_factory=list)

    def add(
        self,
        deployment: str,
        start_ts: int,
        end_ts: int,
        *,
        gpus: Sequence[str] | Callable[[int], Sequence[str]],
        util: UtilAt,
        tokens_per_min: Callable[[int], tuple[int, int]] | None = None,
        busy: UtilAt | None = None,
        loaded: bool = True,
        host: str = "h1",
        waiting: float | None = None,
        kv_cache: float | None = None,
    ) -> Fleet:
        """Every minute of [start, end): each GPU observed the whole minute at `util` (None: unknown
        utilization), and, when `tokens_per_min` is given, an inference server observed too."""
        for minute in range(start_ts, end_ts, MINUTE_S):
            uuids = gpus(minute) if callable(gpus) else gpus
            value = util(minute)
            for index, uuid in enumerate(uuids):
                self.gpu_rows.append(
                    GpuMinute(
                        minute_ts=minute,
                        host=host,
                        gpu_uuid=uuid,
                        gpu_index=index,
                        deployment=deployment,
                        observed_s=60.0,
                        util_observed_s=0.0 if value is None else 60.0,
                        idle_s=60.0 if value is not None and value < 0.05 else 0.0,
                        loaded_s=60.0 if loaded else 0.0,
                        gpu_util=value,
                        gpu_util_max=value,
                        sm_active=None,
                        energy_j=None,
                        power_mean_w=None,
                        mem_used_max_bytes=40 * GIB if loaded else 0,
                        mem_total_bytes=80 * GIB,
                    )
                )
            served = tokens_per_min is not None
            prompt, generation = tokens_per_min(minute) if tokens_per_min is not None else (0, 0)
            share = busy(minute) if busy is not None else None
            self.deployment_rows.append(
                DeploymentMinute(
                    minute_ts=minute,
                    deployment=deployment,
                    instances=1 if served else 0,
                    server_observed_s=60.0 if served else 0.0,
                    prompt_tokens=prompt,
                    generation_tokens=generation,
                    request_busy_s=60.0 * (share or 0.0),
                    requests_running_mean=None if share is None else share * 4,
                    requests_waiting_mean=waiting,
                    kv_cache_mean=kv_cache,
                    kv_cache_max=kv_cache,
                    gpu_observed_s=60.0 * len(uuids),
                    gpu_util=value,
                    sm_active=None,
                    request_busy=share if served else None,
                    throughput_util=None,
                )
            )
        return self

    def write(self, store: Store) -> None:
        """Replace the roll-ups over the span these rows cover with them."""
        minutes = [r.minute_ts for r in self.gpu_rows] + [r.minute_ts for r in self.deployment_rows]
        if minutes:
            store.replace_minutes(min(minutes), max(minutes) + MINUTE_S, self.gpu_rows, self.deployment_rows)
        self.gpu_rows, self.deployment_rows = [], []


def weekend_idle_rag(start_ts: int, end_ts: int) -> Fleet:
    """The design's real case: two A100s serving RAG at 18% on weekdays, holding the model idle every
    weekend (deployment "rag", GPU-a and GPU-b on h1)."""
    weekday = weekday_weekend(1, 0)
    return Fleet().add(
        "rag",
        start_ts,
        end_ts,
        gpus=["GPU-a", "GPU-b"],
        util=weekday_weekend(0.18, 0.005),
        tokens_per_min=lambda m: (2000, 500) if weekday(m) else (0, 0),
        busy=weekday_weekend(0.30, 0.0),
    )
