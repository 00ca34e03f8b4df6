"""move-to-api: sustained low utilization, and a comparable API cheaper than the deployment's TCO.

Config (defaults shown)::

    [rules.move_to_api]
    below = 0.40         # fires when utilization over the window is under this…
    leave_above = 0.45   # …and, once firing, clears only above this (no flapping around 40%)
    window_days = 7
    cooldown_h = 24

Says: "Move llama to together:…: saves $X/month." The saving is TCO − the API's cost of the same
tokens over the window, as a month. It never fires on a window with too little observed GPU time
(`rules.min_coverage`), nor without inference-server metrics (tokens unknown is not zero tokens).
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from auditor.model import Finding, Severity
from auditor.units import format_share, format_tokens, format_usd
from rules.common import costed, judgement_problem, no_verdict, per_month, report_command, window_figures
from rules.contract import RuleContext


class MoveToApi:
    name: ClassVar[str] = "move-to-api"
    config_key: ClassVar[str] = "move_to_api"

    def evaluate(self, context: RuleContext) -> list[Finding]:
        params = context.config.rules.move_to_api
        findings: list[Finding] = []
        for dc in costed(context, params.window_days):
            if not context.config.deployment(dc.deployment).compare_to:
                continue  # nothing to move to: the config compares it with no API
            problem = judgement_problem(dc, context.config.rules.min_coverage, needs_tokens=True)
            if problem is not None:
                findings.append(no_verdict(self.name, dc.deployment, problem))
                continue
            assert dc.utilization is not None  # noqa: S101  (judgement_problem checked it)
            firing = context.is_firing(self.name, dc.deployment)
            threshold = params.leave_above if firing else params.below
            cheapest = dc.cheapest_api
            if dc.utilization >= threshold or cheapest is None or cheapest.savings_usd <= 0:
                continue
            saving = per_month(cheapest.savings_usd, dc)
            findings.append(
                Finding(
                    rule=self.name,
                    subject=dc.deployment,
                    severity=Severity.WARNING,
                    title=f"{dc.deployment}: {format_share(dc.utilization)} utilized; "
                    f"{cheapest.price.ref} is cheaper",
                    text=f"Move {dc.deployment} to {cheapest.price.ref}: saves {format_usd(saving)}/month.",
                    usd_per_month=saving,
                    figures=(
                        *window_figures(dc),
                        ("threshold", f"under {format_share(threshold)}"),
                        ("tokens a month", format_tokens(per_month(Decimal(dc.tokens), dc))),
                        (f"{cheapest.price.ref} a month", format_usd(per_month(cheapest.usd, dc))),
                    ),
                    command=report_command(context),
                )
            )
        return findings
