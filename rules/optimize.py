"""optimize: utilization in the middle band (40–60%): consolidate onto fewer GPUs, with the saving.

GPUs needed = ceil(billed GPUs × utilization / high); the saving is the GPUs freed × what a GPU-hour
cost over the window × 730 hours. A deployment that would free no GPU gets no finding (off-hours-idle
covers scheduled scale-down).

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

from auditor.costing import HOURS_PER_MONTH
from auditor.model import Finding, Severity
from auditor.units import format_share, format_usd
from rules.common import (
    costed,
    gpu_rate_in_window,
    judgement_problem,
    no_verdict,
    report_command,
    window_figures,
)
from rules.contract import RuleContext


class Optimize:
    name: ClassVar[str] = "optimize"
    config_key: ClassVar[str] = "optimize"

    def evaluate(self, context: RuleContext) -> list[Finding]:
        params = context.config.rules.optimize
        findings: list[Finding] = []
        for dc in costed(context, params.window_days):
            problem = judgement_problem(dc, context.config.rules.min_coverage, needs_tokens=False)
            if problem is not None:
                findings.append(no_verdict(self.name, dc.deployment, problem))
                continue
            assert dc.utilization is not None  # noqa: S101  (judgement_problem checked it)
            margin = params.hysteresis if context.is_firing(self.name, dc.deployment) else 0.0
            if not params.low - margin <= dc.utilization < params.high + margin:
                continue
            gpus = context.config.deployment(dc.deployment).billed_gpus
            needed = max(1, math.ceil(gpus * dc.utilization / params.high))
            rate = gpu_rate_in_window(dc)
            if needed >= gpus or rate is None:
                continue
            saving = (gpus - needed) * rate * HOURS_PER_MONTH
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
                        *window_figures(dc),
                        ("band", f"{format_share(params.low)}–{format_share(params.high)}"),
                        ("GPU-hour cost", format_usd(rate)),
                        ("GPUs needed at the band's top", str(needed)),
                    ),
                    command=report_command(context),
                )
            )
        return findings
