"""below-breakeven: utilization under the deployment's own break-even, whatever the fixed thresholds say.

Break-even utilization = hourly cost / (capacity tokens/s × 3600 × the API's blended price per token),
from measured (or configured) capacity and the cheapest comparable API at the deployment's own
prompt/generation mix. Judged on `throughput_util` (tokens/s served ÷ capacity), the measure break-even
is defined on.

Config (defaults shown)::

    [rules.below_breakeven]
    window_days = 7
    margin = 0.05      # fires strictly under break-even; once firing, clears strictly above it + 5 pts
    cooldown_h = 24

A measured capacity (the sustained peak, a lower bound) is used only when the mean load is under half
of it; otherwise there is no verdict until `capacity_tokens_per_s` is configured.

Says: "llama serves 12% of its capacity, under its 31% break-even against X: it loses $Y/month." Its
action is move-to-api's (move to the API): where both fire they are one finding citing both rules, one
saving (the same figure: `rules.common.api_saving_per_month`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from auditor.model import Action, Finding, Severity
from auditor.units import format_share, format_usd
from rules.common import (
    api_saving_per_month,
    costed,
    deployment_window,
    fires_below,
    judgement_problem,
    no_verdict,
    per_month,
    report_command,
    savings_basis,
    window_figures,
)
from rules.contract import RuleContext

MEASURED_TRUSTED_BELOW = 0.5
"""A measured capacity is trusted only when the mean load is under this share of it."""


class BelowBreakeven:
    name: ClassVar[str] = "below-breakeven"
    config_key: ClassVar[str] = "below_breakeven"
    action: ClassVar[Action] = Action.MOVE_TO_API
    announces_resolution: ClassVar[bool] = False

    def evaluate(self, context: RuleContext) -> list[Finding]:
        params = context.config.rules.below_breakeven
        findings: list[Finding] = []
        month_h = context.month_hours()
        for dc in costed(context, params.window_days):
            if not dc.apis:
                continue
            problem = judgement_problem(dc, context.config.rules.min_coverage, needs_tokens=True)
            cheapest = dc.cheapest_api
            if problem is None and (cheapest is None or cheapest.breakeven_utilization is None):
                problem = "break-even is unknown: no capacity (configure capacity_tokens_per_s) or no tokens"
            used = dc.measures.throughput_util
            if problem is None and used is None:
                problem = "throughput utilization is unknown (no capacity or no server metrics)"
            if problem is None and dc.capacity_source == "measured" and (used or 0) >= MEASURED_TRUSTED_BELOW:
                # The measured capacity is the sustained peak: a lower bound that says nothing when the
                # load never rose much above its mean.
                problem = (
                    "capacity unknown: the measured peak is close to the mean load; configure "
                    "capacity_tokens_per_s"
                )
            if problem is not None:
                findings.append(no_verdict(self.name, dc.deployment, problem, window=deployment_window(dc)))
                continue
            assert cheapest is not None and cheapest.breakeven_utilization is not None  # noqa: S101
            assert used is not None  # noqa: S101
            breakeven = float(cheapest.breakeven_utilization)
            firing = context.is_firing(self.name, dc.deployment)
            if not fires_below(used, breakeven, breakeven + params.margin, firing=firing):
                continue
            loss = api_saving_per_month(dc, month_h) or Decimal(0)
            never = breakeven > 1
            verdict = (
                "it cannot break even at any load"
                if never
                else f"under its {format_share(breakeven)} break-even"
            )
            findings.append(
                Finding(
                    rule=self.name,
                    subject=dc.deployment,
                    severity=Severity.WARNING,
                    title=f"{dc.deployment}: below break-even against {cheapest.price.ref}",
                    text=f"{dc.deployment} serves {format_share(used)} of its capacity, {verdict} against "
                    f"{cheapest.price.ref}: it costs {format_usd(loss)}/month more than the API would.",
                    usd_per_month=loss if loss > 0 else None,
                    figures=(
                        *window_figures(dc, month_h),
                        ("throughput utilization", format_share(used)),
                        ("break-even utilization", format_share(breakeven)),
                        ("capacity", f"{dc.capacity_tokens_per_s:,.0f} tokens/s ({dc.capacity_source})"),
                    ),
                    command=report_command(context),
                    deployment=dc.deployment,
                    window=deployment_window(dc),
                    basis=savings_basis(dc, cheapest.price.ref, month_h),
                    monthly_cost_usd=per_month(dc.tco_usd, dc, month_h),
                )
            )
        return findings
