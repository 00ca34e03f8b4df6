"""optimize: utilization in the middle band (40–60%): consolidate onto fewer GPUs, with the saving.

GPUs needed = ceil(billed GPUs × utilization / high); the saving is the GPUs freed × what a GPU-hour
cost over the window × the calendar month's hours. It fires when utilization is at least `low` and
strictly under `high`; once firing, it clears only strictly outside the band widened by `hysteresis`.
A deployment that would free no GPU gets no finding (off-hours-idle covers scheduled scale-down).

Config (defaults shown)::

    [rules.optimize]
    low = 0.40
    high = 0.60
    hysteresis = 0.05   # once firing, it clears only 5 points outside the band
    window_days = 7
    cooldown_h = 24

Says: "Consolidate llama from 8 to 6 GPUs: saves $X/month."
"""

from __future__ import annotations

import math
from typing import ClassVar

from auditor.model import Action, Finding, Severity
from auditor.units import format_share, format_usd
from rules.common import (
    costed,
    deployment_window,
    gpu_rate_in_window,
    judgement_problem,
    no_verdict,
    per_month,
    report_command,
    window_figures,
)
from rules.contract import RuleContext


class Optimize:
    name: ClassVar[str] = "optimize"
    config_key: ClassVar[str] = "optimize"
    action: ClassVar[Action] = Action.CONSOLIDATE
    announces_resolution: ClassVar[bool] = False

    def evaluate(self, context: RuleContext) -> list[Finding]:
        params = context.config.rules.optimize
        findings: list[Finding] = []
        month_h = context.month_hours()
        for dc in costed(context, params.window_days):
            problem = judgement_problem(dc, context.config.rules.min_coverage, needs_tokens=False)
            if problem is not None:
                findings.append(no_verdict(self.name, dc.deployment, problem, window=deployment_window(dc)))
                continue
            assert dc.utilization is not None  # noqa: S101  (judgement_problem checked it)
            if context.is_firing(self.name, dc.deployment):
                inside = params.low - params.hysteresis <= dc.utilization <= params.high + params.hysteresis
            else:
                inside = params.low <= dc.utilization < params.high
            if not inside:
                continue
            gpus = context.config.deployment(dc.deployment).billed_gpus
            needed = max(1, math.ceil(gpus * dc.utilization / params.high))
            rate = gpu_rate_in_window(dc)
            if needed >= gpus or rate is None:
                continue
            saving = (gpus - needed) * rate * month_h
            findings.append(
                Finding(
                    rule=self.name,
                    subject=dc.deployment,
                    severity=Severity.INFO,
                    title=f"{dc.deployment}: {format_share(dc.utilization)} utilized on {gpus} GPUs",
                    text=f"Consolidate {dc.deployment} from {gpus} to {needed} GPUs: saves "
                    f"{format_usd(saving)}/month.",
                    usd_per_month=saving,
                    figures=(
                        *window_figures(dc, month_h),
                        ("band", f"{format_share(params.low)}–{format_share(params.high)}"),
                        ("GPU-hour cost", format_usd(rate)),
                        ("GPUs needed at the band's top", str(needed)),
                    ),
                    command=report_command(context),
                    deployment=dc.deployment,
                    window=deployment_window(dc),
                    basis=f"{gpus - needed} GPUs freed × {format_usd(rate)} a GPU-hour over the window × "
                    f"{month_h:.0f} hours in the month",
                    monthly_cost_usd=per_month(dc.tco_usd, dc, month_h),
                )
            )
        return findings
