"""idle-loaded: a GPU holds a model (memory in use) but does no work, hour after hour.

A minute counts when its activity (`sm_active`, else `gpu_util`) is known; it is idle-loaded when a
process holds memory (or memory in use is at least `min_mem_used_bytes`), activity is under `below`,
and its deployment's server ran no request. The GPU is reported when at least 98% of its known minutes
over the last `hours` were idle-loaded (once firing: 90%), and enough of that time was observed
(`rules.min_coverage`); unknown minutes are never idle.

Config (defaults shown)::

    [rules.idle_loaded]
    below = 0.05
    hours = 4
    min_mem_used_bytes = 1073741824
    cooldown_h = 24

Says: "Unload the model from gpu-01 GPU 3 or give it work: it costs $X/month idle."
"""

from __future__ import annotations

from collections import defaultdict
from typing import ClassVar

from auditor.config import IdleLoadedRule
from auditor.costing import HOURS_PER_MONTH
from auditor.model import DeploymentMinute, Finding, GpuMinute, Severity
from auditor.units import format_share, format_usd
from rules.common import live_gpu_hourly_usd, no_verdict
from rules.contract import RuleContext

ENTER_SHARE = 0.98
STAY_SHARE = 0.90


class IdleLoaded:
    name: ClassVar[str] = "idle-loaded"
    config_key: ClassVar[str] = "idle_loaded"

    def evaluate(self, context: RuleContext) -> list[Finding]:
        params = context.config.rules.idle_loaded
        end_ts = context.now.timestamp()
        start_ts = end_ts - params.hours * 3600
        busy = {(m.deployment, m.minute_ts): m for m in context.store.deployment_minutes(start_ts, end_ts)}
        by_gpu: dict[str, list[GpuMinute]] = defaultdict(list)
        for minute in context.store.gpu_minutes(start_ts, end_ts):
            by_gpu[minute.gpu_uuid].append(minute)
        findings = []
        for uuid, minutes in sorted(by_gpu.items()):
            finding = self._judge(context, params, uuid, minutes, busy)
            if finding is not None:
                findings.append(finding)
        return findings

    def _judge(
        self,
        context: RuleContext,
        params: IdleLoadedRule,
        uuid: str,
        minutes: list[GpuMinute],
        busy: dict[tuple[str, int], DeploymentMinute],
    ) -> Finding | None:
        last = minutes[-1]
        where = f"{last.host} GPU {last.gpu_index}"
        known = [m for m in minutes if _activity(m) is not None and m.observed_s > 0]
        known_s = sum(m.observed_s for m in known)
        if known_s < context.config.rules.min_coverage * params.hours * 3600:
            return no_verdict(
                self.name,
                uuid,
                f"{where}: only {known_s / 3600:.1f} h of the last {params.hours:g} h observed",
            )
        idle_s = sum(m.observed_s for m in known if self._idle_loaded(params, m, busy))
        share = idle_s / known_s
        needed = STAY_SHARE if context.is_firing(self.name, uuid) else ENTER_SHARE
        if share < needed:
            return None
        deployment = next((d for d in context.config.deployments if d.name == last.deployment), None)
        rate = None if deployment is None else live_gpu_hourly_usd(deployment, context.gpu_catalog)
        monthly = None if rate is None else rate * HOURS_PER_MONTH
        cost = f": it costs {format_usd(monthly)}/month" if monthly is not None else ""
        mean = sum((_activity(m) or 0.0) * m.observed_s for m in known) / known_s
        return Finding(
            rule=self.name,
            subject=uuid,
            severity=Severity.WARNING,
            title=f"{where} ({last.deployment or 'no deployment'}) holds a model at {format_share(mean)} "
            f"for {params.hours:g} h",
            text=f"Unload the model from {where} or give it work{cost} while it sits idle.",
            usd_per_month=monthly,
            figures=(
                ("GPU", f"{where}, {uuid}"),
                ("deployment", last.deployment or "—"),
                ("idle while loaded", f"{format_share(share)} of {known_s / 3600:.1f} observed h"),
                ("mean activity", format_share(mean)),
                ("memory in use (max)", _gib(max((m.mem_used_max_bytes or 0) for m in known))),
            ),
            command="auditor status",
        )

    def _idle_loaded(
        self, params: IdleLoadedRule, m: GpuMinute, busy: dict[tuple[str, int], DeploymentMinute]
    ) -> bool:
        activity = _activity(m)
        if activity is None or activity >= params.below:
            return False
        served = busy.get((m.deployment or "", m.minute_ts))
        if served is not None and served.request_busy is not None and served.request_busy > 0:
            return False
        memory = m.mem_used_max_bytes is not None and m.mem_used_max_bytes >= params.min_mem_used_bytes
        return m.loaded_s > 0 or memory


def _activity(m: GpuMinute) -> float | None:
    return m.sm_active if m.sm_active is not None else m.gpu_util


def _gib(value: int) -> str:
    return f"{value / (1 << 30):.1f} GiB"
