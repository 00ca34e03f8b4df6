"""move-to-api: sustained low utilization, and a comparable API cheaper than the deployment's TCO.

Config (defaults shown)::

    [rules.move_to_api]
    below = 0.40         # fires when utilization over the window is strictly under this…
    leave_above = 0.45   # …and, once firing, clears only strictly above this (no flapping around 40%)
    window_days = 7
    cooldown_h = 24

Says: "Move llama to together:…: saves $X/month." The saving is TCO − the API's cost of the same
tokens over the window, projected over the calendar month at the window's rate (the one savings
figure, `rules.common.api_saving_per_month`). It never fires on a window with too little observed GPU time
(`rules.min_coverage`), nor without inference-server metrics (tokens unknown is not zero tokens).
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from auditor.model import Action, Finding, Severity
from auditor.units import format_share, format_tokens, format_usd
from rules.common import (
    api_saving_per_month,
    costed,
    deployment_window,
    fires_below,
    judgement_problem,
    no_verdict,
    observed_per_month,
    per_month,
    report_command,
    savings_basis,
    window_figures,
)
from rules.contract import RuleContext


class MoveToApi:
    name: ClassVar[str] = "move-to-api"
    config_key: ClassVar[str] = "move_to_api"
    action: ClassVar[Action] = Action.MOVE_TO_API
    announces_resolution: ClassVar[bool] = False

    def evaluate(self, context: RuleContext) -> list[Finding]:
        params = context.config.rules.move_to_api
        findings: list[Finding] = []
        month_h = context.month_hours()
        for dc in costed(context, params.window_days):
            if not context.config.deployment(dc.deployment).compare_to:
                continue  # nothing to move to: the config compares it with no API
            problem = judgement_problem(dc, context.config.rules.min_coverage, needs_tokens=True)
            if problem is not None:
                findings.append(no_verdict(self.name, dc.deployment, problem, window=deployment_window(dc)))
                continue
            assert dc.utilization is not None  # noqa: S101  (judgement_problem checked it)
            firing = context.is_firing(self.name, dc.deployment)
            threshold = params.leave_above if firing else params.below
            cheapest = dc.cheapest_api
            if not fires_below(dc.utilization, params.below, params.leave_above, firing=firing):
                continue
            saving = api_saving_per_month(dc, month_h)
            if cheapest is None or saving is None or saving <= 0:
                continue
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
                        *window_figures(dc, month_h),
                        ("threshold", f"{'at most' if firing else 'under'} {format_share(threshold)}"),
                        (
                            "tokens a month",
                            format_tokens(observed_per_month(Decimal(dc.tokens), dc, month_h)),
                        ),
                        (
                            f"{cheapest.price.ref} a month",
                            format_usd(observed_per_month(cheapest.usd, dc, month_h)),
                        ),
                    ),
                    command=report_command(context),
                    deployment=dc.deployment,
                    window=deployment_window(dc),
                    basis=savings_basis(dc, cheapest.price.ref, month_h),
                    monthly_cost_usd=per_month(dc.tco_usd, dc, month_h),
                )
            )
        return findings
