"""idle-loaded: a GPU holds a model (memory in use) but does no work, outside its usual idle hours.

A minute counts when its activity (`sm_active`, else `gpu_util`) is known; it is idle-loaded when a
process holds memory (or memory in use is at least `min_mem_used_bytes`), activity is strictly under
`below`, and its deployment's server ran no request. The GPU is reported when at least 98% of its known
minutes over the last `hours` were idle-loaded (once firing: 90%), and enough of that time was observed
(`rules.min_coverage`); unknown minutes are never idle.

Idleness that repeats is a pattern, not a page: when the GPU sat idle-loaded over the same hours a day
or a week before and worked in between, the rule says nothing (off-hours-idle proposes a schedule for
it and the digest tracks it). A GPU idle without a break since then is still reported.

The dollars are those of the idle hours seen: the GPU's idle-loaded hours over the last 7 days, as a
share of the hours observed, projected over the calendar month at that rate × what a GPU-hour costs;
never the GPU's whole month. The GPUs of one deployment are one finding, their dollars added.

Config (defaults shown)::

    [rules.idle_loaded]
    below = 0.05
    hours = 4
    min_mem_used_bytes = 1073741824
    cooldown_h = 24

Says: "Unload the model from gpu-01 GPU 3 or give it work: $214.29/month at the rate it sat idle."
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar

from auditor.config import IdleLoadedRule
from auditor.model import Action, DeploymentMinute, Finding, GpuMinute, Severity, Window
from auditor.units import format_share, format_usd
from rules.common import live_gpu_hourly_usd, no_verdict
from rules.contract import RuleContext

ENTER_SHARE = 0.98
STAY_SHARE = 0.90
RATE_DAYS = 7
"""The idle hours of this many days price a finding (and hold the day and week before: the pattern)."""
DAY_S = 86400
REPEATS_AFTER_S = (DAY_S, 7 * DAY_S)
"""Idleness over the same hours this long before, with work in between, is a pattern."""


class IdleLoaded:
    name: ClassVar[str] = "idle-loaded"
    config_key: ClassVar[str] = "idle_loaded"
    action: ClassVar[Action] = Action.UNLOAD_IDLE
    announces_resolution: ClassVar[bool] = False

    def evaluate(self, context: RuleContext) -> list[Finding]:
        params = context.config.rules.idle_loaded
        end_ts = context.now.timestamp()
        start_ts = end_ts - params.hours * 3600
        busy = {(m.deployment, m.minute_ts): m for m in context.store.deployment_minutes(start_ts, end_ts)}
        by_gpu: dict[str, list[GpuMinute]] = defaultdict(list)
        for minute in context.store.gpu_minutes(start_ts, end_ts):
            by_gpu[minute.gpu_uuid].append(minute)
        history: _History | None = None
        findings = []
        for uuid, minutes in sorted(by_gpu.items()):
            if history is None and self._may_fire(context, params, uuid, minutes, _Judge(params, busy)):
                history = _History.read(context, start_ts, end_ts)  # only when some GPU sits idle
            judge = _Judge(params, busy if history is None else history.busy)
            recent = minutes if history is None else history.gpus.get(uuid, minutes)
            finding = self._judge(context, params, uuid, recent, judge, start_ts, end_ts)
            if finding is not None:
                findings.append(finding)
        return findings

    def _may_fire(
        self,
        context: RuleContext,
        params: IdleLoadedRule,
        uuid: str,
        minutes: Sequence[GpuMinute],
        judge: _Judge,
    ) -> bool:
        known = [m for m in minutes if _activity(m) is not None and m.observed_s > 0]
        return bool(known) and judge.idle_share(known) >= STAY_SHARE

    def _judge(
        self,
        context: RuleContext,
        params: IdleLoadedRule,
        uuid: str,
        history: Sequence[GpuMinute],
        judge: _Judge,
        start_ts: float,
        end_ts: float,
    ) -> Finding | None:
        """`history`: the GPU's minutes of the window, and of the days before when some GPU sat idle."""
        minutes = [m for m in history if m.minute_ts >= start_ts]
        last = minutes[-1]
        where = f"{last.host} GPU {last.gpu_index}"
        window_h = params.hours
        known = [m for m in minutes if _activity(m) is not None and m.observed_s > 0]
        known_s = sum(m.observed_s for m in known)
        window = Window(start_ts=start_ts, end_ts=end_ts, observed_h=known_s / 3600, expected_h=window_h)
        if known_s < context.config.rules.min_coverage * window_h * 3600:
            return no_verdict(
                self.name,
                uuid,
                f"{where}: only {known_s / 3600:.1f} h of the last {window_h:g} h observed",
                deployment=last.deployment,
                window=window,
            )
        share = judge.idle_share(known)
        needed = STAY_SHARE if context.is_firing(self.name, uuid) else ENTER_SHARE
        if share < needed:
            return None
        if _repeats(history, judge, start_ts, end_ts):
            return None  # the same hours were idle before, with work since: a pattern, not a page
        deployment = next((d for d in context.config.deployments if d.name == last.deployment), None)
        rate = (
            None
            if deployment is None
            else live_gpu_hourly_usd(deployment, context.gpu_catalog, context.month_hours())
        )
        month_h = context.month_hours()
        seen = [m for m in history if m.minute_ts >= end_ts - RATE_DAYS * DAY_S and _activity(m) is not None]
        seen_s = sum(m.observed_s for m in seen)
        idle_seen_s = sum(m.observed_s for m in seen if judge.idle(m))
        idle_h = Decimal(repr(idle_seen_s / 3600)).quantize(Decimal("0.01"))
        seen_h = Decimal(repr(seen_s / 3600)).quantize(Decimal("0.01"))
        monthly = None
        basis = None
        if rate is not None and seen_h > 0:
            monthly = idle_h / seen_h * month_h * rate
            basis = (
                f"{idle_h} h idle-loaded of {seen_h} h observed in the last {RATE_DAYS} days × "
                f"{format_usd(rate)} a GPU-hour, projected over the month's {month_h:.0f} hours at that rate"
            )
        cost = f": {format_usd(monthly)}/month at the rate it sat idle" if monthly is not None else ""
        mean = sum((_activity(m) or 0.0) * m.observed_s for m in known) / known_s
        gpus = deployment.billed_gpus if deployment is not None else 1
        return Finding(
            rule=self.name,
            subject=uuid,
            severity=Severity.WARNING,
            title=f"{where} ({last.deployment or 'no deployment'}) holds a model at {format_share(mean)} "
            f"for {window_h:g} h",
            text=f"Unload the model from {where} or give it work{cost}.",
            usd_per_month=monthly,
            figures=(
                ("GPU", f"{where}, {uuid}"),
                ("deployment", last.deployment or "—"),
                ("idle while loaded", f"{format_share(share)} of {known_s / 3600:.1f} observed h"),
                (f"idle-loaded in the last {RATE_DAYS} days", f"{idle_h} h of {seen_h} h observed"),
                ("mean activity", format_share(mean)),
                ("memory in use (max)", _gib(max((m.mem_used_max_bytes or 0) for m in known))),
            ),
            command="auditor status",
            deployment=last.deployment,
            window=window,
            basis=basis,
            monthly_cost_usd=None if rate is None else rate * month_h * gpus,
        )


@dataclass(frozen=True, slots=True)
class _History:
    """The GPUs' and deployments' minutes of the last `RATE_DAYS` days and the window a week before."""

    gpus: dict[str, list[GpuMinute]]
    busy: dict[tuple[str, int], DeploymentMinute]

    @classmethod
    def read(cls, context: RuleContext, start_ts: float, end_ts: float) -> _History:
        history_ts = min(start_ts - max(REPEATS_AFTER_S), end_ts - RATE_DAYS * DAY_S)
        gpus: dict[str, list[GpuMinute]] = defaultdict(list)
        for minute in context.store.gpu_minutes(history_ts, end_ts):
            gpus[minute.gpu_uuid].append(minute)
        busy = {(m.deployment, m.minute_ts): m for m in context.store.deployment_minutes(history_ts, end_ts)}
        return cls(gpus=dict(gpus), busy=busy)


class _Judge:
    """Whether a minute of a GPU is idle-loaded, given its deployment's served minutes."""

    def __init__(self, params: IdleLoadedRule, busy: dict[tuple[str, int], DeploymentMinute]) -> None:
        self.params = params
        self.busy = busy

    def idle(self, m: GpuMinute) -> bool:
        activity = _activity(m)
        if activity is None or activity >= self.params.below:
            return False
        served = self.busy.get((m.deployment or "", m.minute_ts))
        if served is not None and served.request_busy is not None and served.request_busy > 0:
            return False
        memory = m.mem_used_max_bytes is not None and m.mem_used_max_bytes >= self.params.min_mem_used_bytes
        return m.loaded_s > 0 or memory

    def idle_share(self, known: Sequence[GpuMinute]) -> float:
        total = sum(m.observed_s for m in known)
        return sum(m.observed_s for m in known if self.idle(m)) / total if total > 0 else 0.0


def _repeats(history: Sequence[GpuMinute], judge: _Judge, start_ts: float, end_ts: float) -> bool:
    """The GPU was idle-loaded over the same hours a day or a week before, and worked since then."""
    for offset in REPEATS_AFTER_S:
        before = [
            m
            for m in history
            if start_ts - offset <= m.minute_ts < end_ts - offset and _activity(m) is not None
        ]
        if not before or judge.idle_share(before) < STAY_SHARE:
            continue
        since = [m for m in history if end_ts - offset <= m.minute_ts < start_ts]
        if any(_activity(m) is not None and not judge.idle(m) for m in since):
            return True
    return False


def _activity(m: GpuMinute) -> float | None:
    return m.sm_active if m.sm_active is not None else m.gpu_util


def _gib(value: int) -> str:
    return f"{value / (1 << 30):.1f} GiB"
