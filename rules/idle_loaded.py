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

The days before the window come from the minute rows where they are kept, and from the GPU-hour
tier before that (a large fleet keeps ~2 days of minutes): its idle-loaded seconds are summed at the
defaults below, so with another `below` or `min_mem_used_bytes` only the minutes kept count.

Config (defaults shown)::

    [rules.idle_loaded]
    below = 0.05
    hours = 4
    min_mem_used_bytes = 1073741824
    cooldown_h = 24

Says: "Unload the model from gpu-01 GPU 3 or give it work: $214.29/month at the rate it sat idle."
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from auditor.config import IdleLoadedRule
from auditor.model import Action, Finding, Severity, Window
from auditor.store import GpuWhere, IdleHours, IdleSpan
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
        """Summed in SQL per GPU (a fleet's GPU-minutes are never loaded as records): first the window
        for every GPU, then the days before (the rate and the pattern) only for the GPUs that sat idle."""
        params = context.config.rules.idle_loaded
        end_ts = context.now.timestamp()
        start_ts = end_ts - params.hours * 3600
        window = context.store.idle_loaded_spans(
            [(start_ts, end_ts)], params.below, params.min_mem_used_bytes
        )
        if not window:
            return []
        places = context.store.last_gpu_places(start_ts, end_ts)
        min_known_s = context.config.rules.min_coverage * params.hours * 3600
        idle = [
            uuid
            for uuid, (span,) in window.items()
            if span.known_s >= min_known_s
            and _share(span) >= (STAY_SHARE if context.is_firing(self.name, uuid) else ENTER_SHARE)
        ]
        # From the minute rows where kept, and the GPU-hour tier before them: a fleet keeps ~2 days
        # of minutes, and the rate and the week-before pattern look 7 days back.
        history = context.store.idle_loaded_history(
            _history_spans(start_ts, end_ts), params.below, params.min_mem_used_bytes, idle
        )
        findings = []
        for uuid in sorted(window):
            finding = self._judge(
                context, params, uuid, places[uuid], window[uuid][0], history.get(uuid), start_ts, end_ts
            )
            if finding is not None:
                findings.append(finding)
        return findings

    def _judge(
        self,
        context: RuleContext,
        params: IdleLoadedRule,
        uuid: str,
        last: GpuWhere,
        span: IdleSpan,
        history: list[IdleHours] | None,
        start_ts: float,
        end_ts: float,
    ) -> Finding | None:
        """`span`: the GPU's window; `history`: its spans of `_history_spans`, read when it sat idle."""
        where = f"{last.host} GPU {last.gpu_index}"
        window_h = params.hours
        known_s = span.known_s
        window = Window(start_ts=start_ts, end_ts=end_ts, observed_h=known_s / 3600, expected_h=window_h)
        if known_s < context.config.rules.min_coverage * window_h * 3600:
            return no_verdict(
                self.name,
                uuid,
                f"{where}: only {known_s / 3600:.1f} h of the last {window_h:g} h observed",
                deployment=last.deployment,
                window=window,
            )
        share = _share(span)
        needed = STAY_SHARE if context.is_firing(self.name, uuid) else ENTER_SHARE
        if share < needed or history is None:
            return None
        seen, *pattern = history
        if _repeats(pattern):
            return None  # the same hours were idle before, with work since: a pattern, not a page
        deployment = next((d for d in context.config.deployments if d.name == last.deployment), None)
        rate = (
            None
            if deployment is None
            else live_gpu_hourly_usd(deployment, context.gpu_catalog, context.month_hours())
        )
        month_h = context.month_hours()
        idle_h = Decimal(repr(seen.idle_s / 3600)).quantize(Decimal("0.01"))
        seen_h = Decimal(repr(seen.known_s / 3600)).quantize(Decimal("0.01"))
        monthly = None
        basis = None
        if rate is not None and seen_h > 0:
            monthly = idle_h / seen_h * month_h * rate
            basis = (
                f"{idle_h} h idle-loaded of {seen_h} h observed in the last {RATE_DAYS} days × "
                f"{format_usd(rate)} a GPU-hour, projected over the month's {month_h:.0f} hours at that rate"
            )
        cost = f": {format_usd(monthly)}/month at the rate it sat idle" if monthly is not None else ""
        mean = span.activity_weighted / known_s
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
                ("memory in use (max)", _gib(span.mem_used_max_bytes)),
            ),
            command="auditor status",
            deployment=last.deployment,
            window=window,
            basis=basis,
            monthly_cost_usd=None if rate is None else rate * month_h * gpus,
        )


def _history_spans(start_ts: float, end_ts: float) -> list[tuple[float, float]]:
    """The last `RATE_DAYS` days (the rate), then for each repeat offset the same hours that long
    before and the time since then (the pattern)."""
    spans = [(end_ts - RATE_DAYS * DAY_S, end_ts)]
    for offset in REPEATS_AFTER_S:
        spans += [(start_ts - offset, end_ts - offset), (end_ts - offset, start_ts)]
    return spans


def _share(span: IdleSpan | IdleHours) -> float:
    return span.idle_s / span.known_s if span.known_s > 0 else 0.0


def _repeats(pattern: list[IdleHours]) -> bool:
    """The GPU was idle-loaded over the same hours a day or a week before, and worked since then."""
    for before, since in zip(pattern[::2], pattern[1::2], strict=True):
        if before.known_s > 0 and _share(before) >= STAY_SHARE and since.working_minutes > 0:
            return True
    return False


def _gib(value: int) -> str:
    return f"{value / (1 << 30):.1f} GiB"
