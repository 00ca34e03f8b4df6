"""off-hours-idle: the same hours of the week idle, week after week: a scale-down schedule and its saving.

Over the last `weeks` whole weeks, each hour of the week (in the config's time zone) is *idle* in a
week when enough of its GPU time was observed (`rules.min_coverage`) and no request ran (the server's
metrics, where known) or activity stayed under `below`. An hour idle in every one of the weeks joins the
schedule; runs shorter than `min_block_h` are dropped. An hour unobserved in any week is unknown: never
idle. Fewer than `weeks` weeks of history give no verdict.

Saving = scheduled hours a week × billed GPUs × what a GPU-hour cost over the window × the calendar
month's hours / 168: the idle hours seen, projected over the month at the rate they recur. While it
fires, idle-loaded says nothing about the same idleness (it repeats: a schedule, not a page).

Config (defaults shown)::

    [rules.off_hours_idle]
    below = 0.05
    weeks = 3
    min_block_h = 2
    cooldown_h = 24

Says: "Scale llama to zero Sat 00:00–Mon 00:00: saves $X/month."
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import ClassVar

from auditor.analysis import Bucket, merged
from auditor.config import OffHoursIdleRule
from auditor.model import Action, Finding, Severity
from auditor.units import format_usd
from rules.common import (
    aggregated,
    deployment_window,
    gpu_rate_in_window,
    no_verdict,
    per_month,
    report_command,
)
from rules.contract import RuleContext

WEEK_S = 7 * 86400
HOURS_PER_WEEK = 168
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def hour_of_week(ts: float, tz: object) -> int:
    local = datetime.fromtimestamp(ts, tz)  # type: ignore[arg-type]
    return local.weekday() * 24 + local.hour


def describe(start: int, length: int) -> str:
    """`Sat 00:00–Mon 00:00` for a run of hours of the week (Monday 00:00 is hour 0)."""
    end = (start + length) % HOURS_PER_WEEK
    return f"{DAYS[start // 24]} {start % 24:02d}:00–{DAYS[end // 24]} {end % 24:02d}:00"


def runs(hours: set[int]) -> list[tuple[int, int]]:
    """(start, length) of each run of consecutive hours of the week, wrapping from Sunday to Monday."""
    if len(hours) == HOURS_PER_WEEK:
        return [(0, HOURS_PER_WEEK)]
    found = []
    for hour in sorted(hours):
        if (hour - 1) % HOURS_PER_WEEK in hours:
            continue  # not the start of a run
        length = 1
        while (hour + length) % HOURS_PER_WEEK in hours:
            length += 1
        found.append((hour, length))
    return found


class OffHoursIdle:
    name: ClassVar[str] = "off-hours-idle"
    config_key: ClassVar[str] = "off_hours_idle"
    action: ClassVar[Action] = Action.SCALE_DOWN_OFF_HOURS
    announces_resolution: ClassVar[bool] = False

    def evaluate(self, context: RuleContext) -> list[Finding]:
        params = context.config.rules.off_hours_idle
        window = aggregated(context, params.weeks * 7)
        findings: list[Finding] = []
        month_h = context.month_hours()
        for dc in window.window.deployments:
            gpus = context.config.deployment(dc.deployment).billed_gpus
            idle, weeks_seen = self._idle_hours(context, params, window.buckets[dc.deployment], gpus)
            if weeks_seen < params.weeks:
                findings.append(
                    no_verdict(
                        self.name,
                        dc.deployment,
                        f"only {weeks_seen} of the last {params.weeks} weeks have enough observed time "
                        "(unobserved hours are unknown, not idle)",
                        window=deployment_window(dc),
                    )
                )
                continue
            kept = [(s, n) for s, n in runs(idle) if n >= params.min_block_h]
            rate = gpu_rate_in_window(dc)
            if not kept or rate is None:
                continue
            hours = sum(n for _, n in kept)
            saving = Decimal(hours) * gpus * rate * month_h / HOURS_PER_WEEK
            schedule = ", ".join(describe(s, n) for s, n in kept)
            findings.append(
                Finding(
                    rule=self.name,
                    subject=dc.deployment,
                    severity=Severity.WARNING,
                    title=f"{dc.deployment}: idle {hours} h every week for {params.weeks} weeks",
                    text=f"Scale {dc.deployment} to zero {schedule} ({context.config.timezone}): saves "
                    f"{format_usd(saving)}/month.",
                    usd_per_month=saving,
                    figures=(
                        ("schedule", schedule),
                        ("idle hours a week", str(hours)),
                        ("weeks checked", str(params.weeks)),
                        ("GPUs", str(gpus)),
                        ("GPU-hour cost", format_usd(rate)),
                    ),
                    command=report_command(context),
                    deployment=dc.deployment,
                    window=deployment_window(dc),
                    basis=f"{hours} idle hours a week in each of the last {params.weeks} weeks × {gpus} GPUs "
                    f"× {format_usd(rate)} a GPU-hour, projected over the month's {month_h:.0f} hours "
                    f"({month_h / HOURS_PER_WEEK:.2f} weeks)",
                    monthly_cost_usd=per_month(dc.tco_usd, dc, month_h),
                )
            )
        return findings

    def _idle_hours(
        self, context: RuleContext, params: OffHoursIdleRule, buckets: Mapping[int, Bucket], gpus: int
    ) -> tuple[set[int], int]:
        """The hours of the week idle in every week, and how many weeks had any hour known."""
        end_ts = context.now.timestamp()
        tz = context.config.tz
        slots: dict[tuple[int, int], list[Bucket]] = defaultdict(list)
        for bucket_ts, bucket in buckets.items():
            # Weeks are counted back from now by each local hour's start, so that an hour is never split.
            hour_start_ts = bucket_ts - datetime.fromtimestamp(bucket_ts, tz).minute * 60
            week = int((end_ts - hour_start_ts - 1) // WEEK_S)
            if 0 <= week < params.weeks:
                slots[(week, hour_of_week(bucket_ts, tz))].append(bucket)
        needed_s = context.config.rules.min_coverage * gpus * 3600
        idle_by_week: dict[int, set[int]] = defaultdict(set)
        known_hours: dict[int, int] = defaultdict(int)
        for (week, hour), parts in slots.items():
            total = merged(parts)
            if total.gpu_observed_s < needed_s:
                continue
            known_hours[week] += 1
            if _idle(total, params.below):
                idle_by_week[week].add(hour)
        # A week counts as observed when enough of its hours were.
        needed_hours = context.config.rules.min_coverage * HOURS_PER_WEEK
        known_weeks = {week for week, count in known_hours.items() if count >= needed_hours}
        if len(known_weeks) < params.weeks:
            return set(), len(known_weeks)
        common = set.intersection(*(idle_by_week[w] for w in range(params.weeks)))
        return common, len(known_weeks)


def _idle(bucket: Bucket, below: float) -> bool:
    measures = bucket.measures(None)
    if measures.request_busy is not None:
        return measures.request_busy < below
    activity = measures.sm_active if measures.sm_active is not None else measures.gpu_util
    return activity is not None and activity < below
