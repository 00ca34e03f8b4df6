"""runaway-spend: GPUs burning money far faster than usual, before the bill shows it. Critical.

Its dollars are money *above* the usual cost, if the burn continues: shown beside a list's total at
stake, never in it. Three checks, each its own subject:
- `DEPLOYMENT`: the live burn rate (GPUs seen in the last `live_minutes` × USD per GPU-hour from the
  price config and the GPU catalog) above `factor` × the trailing baseline (the mean GPUs running over
  the observed minutes of the last `baseline_days`, at the same rate). Live GPU counts come from raw
  samples and roll-ups, so it fires within minutes of an autoscaler's runaway, not a day later.
- `DEPLOYMENT/budget`: month-to-date cost plus the live burn rate to the month's end above the
  deployment's `monthly_budget_usd`.
- `DEPLOYMENT/billing` (or `unattributed/billing`): a billed day more than `day_over_day_factor` × the
  day before, and more than `min_jump_usd` dollars above it.

Config (defaults shown)::

    [rules.runaway_spend]
    factor = 2.0             # fires strictly above 2× the baseline…
    leave_factor = 1.8       # …and clears only strictly under 1.8× it
    baseline_days = 7
    min_baseline_h = 24      # no verdict before a day of history
    live_minutes = 10
    day_over_day_factor = 1.5
    min_jump_usd = 100
    cooldown_h = 1
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import ClassVar

from auditor.analysis import cost_window
from auditor.config import DeploymentConfig, RunawaySpendRule
from auditor.costing import SECONDS_PER_HOUR
from auditor.model import Action, Finding, Severity, Window
from auditor.units import format_usd
from rules.common import (
    costed,
    fires_above,
    gpu_rate_in_window,
    live_gpu_hourly_usd,
    no_verdict,
    window_start,
)
from rules.contract import RuleContext

HOURS_PER_DAY = Decimal(24)


class RunawaySpend:
    name: ClassVar[str] = "runaway-spend"
    config_key: ClassVar[str] = "runaway_spend"
    action: ClassVar[Action] = Action.STOP_OVERSPEND
    announces_resolution: ClassVar[bool] = True

    def evaluate(self, context: RuleContext) -> list[Finding]:
        params = context.config.rules.runaway_spend
        now_ts = context.now.timestamp()
        live_start = now_ts - params.live_minutes * 60
        live: dict[str | None, set[str]] = defaultdict(set)
        for owner, uuid in context.store.gpus_seen(live_start, now_ts):
            live[owner].add(uuid)
        baseline_start_ts = window_start(context, params.baseline_days).timestamp()
        counts = context.store.gpu_minute_counts(
            baseline_start_ts, live_start, [d.name for d in context.config.deployments]
        )
        findings: list[Finding] = []
        for deployment in context.config.deployments:
            rate = self._rate(context, deployment, params)
            burn = None if rate is None else rate * len(live[deployment.name])
            findings.extend(self._burn(context, deployment, params, rate, burn, counts[deployment.name]))
            findings.extend(self._budget(context, deployment, burn))
        findings.extend(self._billing_jumps(context, params))
        return findings

    def _rate(
        self, context: RuleContext, deployment: DeploymentConfig, params: RunawaySpendRule
    ) -> Decimal | None:
        rate = live_gpu_hourly_usd(deployment, context.gpu_catalog, context.month_hours())
        if rate is not None:
            return rate
        for dc in costed(context, params.baseline_days):
            if dc.deployment == deployment.name:
                return gpu_rate_in_window(dc)
        return None

    def _burn(
        self,
        context: RuleContext,
        deployment: DeploymentConfig,
        params: RunawaySpendRule,
        rate: Decimal | None,
        burn: Decimal | None,
        counts: tuple[int, int],
    ) -> list[Finding]:
        """`counts`: minutes of the baseline with a GPU observed, and GPU-minutes observed in it."""
        name = deployment.name
        if rate is None or burn is None:
            return [
                no_verdict(
                    self.name,
                    name,
                    "no GPU-hour rate: give the price an instance_type or a rate",
                    deployment=name,
                )
            ]
        minutes, gpu_minutes = counts
        observed_h = minutes / 60
        if observed_h < params.min_baseline_h:
            return [
                no_verdict(
                    self.name,
                    name,
                    f"only {observed_h:.1f} h of GPU history in the last {params.baseline_days} days "
                    f"(the baseline needs {params.min_baseline_h:g} h)",
                    deployment=name,
                )
            ]
        mean_gpus = Decimal(gpu_minutes) / minutes
        baseline = mean_gpus * rate
        firing = context.is_firing(self.name, name)
        factor = params.leave_factor if firing else params.factor
        if burn <= 0:
            return []
        ratio = float(burn / baseline) if baseline > 0 else float("inf")
        if not fires_above(ratio, params.factor, params.leave_factor, firing=firing):
            return []
        gpus = burn / rate
        month_h = context.month_hours()
        excess = (burn - baseline) * month_h
        return [
            Finding(
                rule=self.name,
                subject=name,
                severity=Severity.CRITICAL,
                title=f"{name}: {gpus:.0f} GPUs burning {format_usd(burn)}/h, "
                f"{burn / baseline:.1f}× its usual {format_usd(baseline)}/h",
                text=f"Check {name}'s autoscaler now: {gpus:.0f} GPUs run against {mean_gpus:.1f} usually, "
                f"{format_usd(excess)}/month over its baseline if it stays so.",
                usd_per_month=excess,
                figures=(
                    ("GPUs running now", f"{gpus:.0f} (seen in the last {params.live_minutes} min)"),
                    ("baseline GPUs", f"{mean_gpus:.1f} (mean over {observed_h:.0f} observed h)"),
                    ("USD per GPU-hour", format_usd(rate)),
                    ("burn rate", f"{format_usd(burn)}/h"),
                    ("baseline burn", f"{format_usd(baseline)}/h"),
                    ("fires above" if not firing else "holds down to", f"{factor:g}× baseline"),
                ),
                command="auditor status",
                deployment=name,
                window=Window(
                    start_ts=window_start(context, params.baseline_days).timestamp(),
                    end_ts=context.now.timestamp(),
                    observed_h=observed_h,
                    expected_h=params.baseline_days * 24.0,
                    unit="h",
                ),
                basis=f"(burn rate − baseline burn) × {month_h:.0f} hours in the month, if it stays so",
            )
        ]

    def _budget(
        self, context: RuleContext, deployment: DeploymentConfig, burn: Decimal | None
    ) -> list[Finding]:
        budget = deployment.monthly_budget_usd
        if budget is None:
            return []
        tz = context.config.tz
        local = context.now.astimezone(tz)
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
        subject = f"{deployment.name}/budget"
        if context.now <= start:
            return []
        window = cost_window(
            context.store,
            context.config,
            start,
            context.now,
            context.api_catalog,
            context.gpu_catalog,
            only=[deployment.name],
        ).window
        spent = window.deployments[0].cost_usd
        hours_left = _hours(context.now, end)
        if burn is None:
            elapsed = _hours(start, context.now)
            burn = spent / elapsed if elapsed > 0 else Decimal(0)
        projected = spent + burn * hours_left
        if projected <= budget:
            return []
        return [
            Finding(
                rule=self.name,
                subject=subject,
                severity=Severity.CRITICAL,
                title=f"{deployment.name}: projected {format_usd(projected)} this month, budget "
                f"{format_usd(budget)}",
                text=f"Scale {deployment.name} down or raise its budget: at {format_usd(burn)}/h it ends "
                f"{start:%B} {format_usd(projected - budget)} over budget.",
                usd_per_month=projected - budget,
                figures=(
                    ("spent this month", format_usd(spent)),
                    ("burn rate", f"{format_usd(burn)}/h"),
                    ("hours left in the month", f"{hours_left:.1f}"),
                    ("projected", format_usd(projected)),
                    ("budget", format_usd(budget)),
                ),
                command=f"auditor report --month {start:%Y-%m}",
                deployment=deployment.name,
                basis="spent this month + burn rate × hours left − budget",
            )
        ]

    def _billing_jumps(self, context: RuleContext, params: RunawaySpendRule) -> list[Finding]:
        today = context.now.astimezone(context.config.tz).date()
        by_day: dict[str, dict[date, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        for line in context.store.cost_lines(today - timedelta(days=14), today + timedelta(days=1)):
            by_day[line.deployment or "unattributed"][line.day] += line.amount_usd
        findings = []
        for owner, days in sorted(by_day.items()):
            last = max(days)
            before = last - timedelta(days=1)
            if before not in days:
                continue
            jump = days[last] - days[before]
            factor = Decimal(repr(params.day_over_day_factor))
            if days[last] <= days[before] * factor or jump < params.min_jump_usd:
                continue
            monthly = jump * context.month_hours() / HOURS_PER_DAY
            findings.append(
                Finding(
                    rule=self.name,
                    subject=f"{owner}/billing",
                    severity=Severity.CRITICAL,
                    title=f"{owner}: billed {format_usd(days[last])} on {last}, "
                    f"{format_usd(days[before])} the day before",
                    text=f"Find what started on {last} in {owner}'s bill: "
                    f"{format_usd(monthly)}/month more if it stays.",
                    usd_per_month=monthly,
                    figures=(
                        (f"billed {last}", format_usd(days[last])),
                        (f"billed {before}", format_usd(days[before])),
                        ("fires above", f"{params.day_over_day_factor:g}× the day before"),
                    ),
                    command=f"auditor report --month {last:%Y-%m}",
                    deployment=None if owner == "unattributed" else owner,
                    basis=f"the day's jump × {context.month_hours() / HOURS_PER_DAY:.2f} days in the month, "
                    "if it stays",
                )
            )
        return findings


def _hours(start: datetime, end: datetime) -> Decimal:
    return Decimal(int((end - start).total_seconds())) / SECONDS_PER_HOUR
