"""self-host-pays: sustained high utilization: keep self-hosting, with the margin against the cheapest API.

Config (defaults shown)::

    [rules.self_host_pays]
    above = 0.65         # fires strictly above this (anywhere in the 60–70% band where self-hosting pays)
    leave_below = 0.60   # once firing, it clears only strictly under this
    window_days = 7
    cooldown_h = 24

Says: "Keep self-hosting llama: $X/month cheaper than openai:gpt-4o." Informational: the margin is a
figure, not money at stake, so it is never added to a total. When even the
cheapest API costs less than the deployment's TCO at this utilization, it says nothing (the other
rules speak); with no API to compare, it says so and gives no dollar figure.
"""

from __future__ import annotations

from typing import ClassVar

from auditor.costing import monthly_saving
from auditor.model import Action, Finding, Severity
from auditor.units import format_saving, format_share, format_usd
from rules.common import (
    costed,
    deployment_window,
    fires_above,
    judgement_problem,
    no_verdict,
    observed_per_month,
    per_month,
    report_command,
    window_figures,
)
from rules.contract import RuleContext


class SelfHostPays:
    name: ClassVar[str] = "self-host-pays"
    config_key: ClassVar[str] = "self_host_pays"
    action: ClassVar[Action] = Action.KEEP_SELF_HOSTING
    announces_resolution: ClassVar[bool] = False

    def evaluate(self, context: RuleContext) -> list[Finding]:
        params = context.config.rules.self_host_pays
        findings: list[Finding] = []
        month_h = context.month_hours()
        for dc in costed(context, params.window_days):
            problem = judgement_problem(dc, context.config.rules.min_coverage, needs_tokens=bool(dc.apis))
            if problem is not None:
                findings.append(no_verdict(self.name, dc.deployment, problem, window=deployment_window(dc)))
                continue
            assert dc.utilization is not None  # noqa: S101  (judgement_problem checked it)
            firing = context.is_firing(self.name, dc.deployment)
            if not fires_above(dc.utilization, params.above, params.leave_below, firing=firing):
                continue
            threshold = params.leave_below if firing else params.above
            cheapest = dc.cheapest_api
            figures = (
                *window_figures(dc, month_h),
                ("threshold", f"{'at least' if firing else 'over'} {format_share(threshold)}"),
            )
            window = deployment_window(dc)
            monthly_cost = per_month(dc.tco_usd, dc, month_h)
            if cheapest is None:
                findings.append(
                    Finding(
                        rule=self.name,
                        subject=dc.deployment,
                        severity=Severity.INFO,
                        title=f"{dc.deployment}: {format_share(dc.utilization)} utilized",
                        text=f"Keep self-hosting {dc.deployment}; add compare_to in its config to see the "
                        "margin against an API.",
                        usd_per_month=None,
                        figures=figures,
                        command=report_command(context),
                        deployment=dc.deployment,
                        window=window,
                        monthly_cost_usd=monthly_cost,
                    )
                )
                continue
            saving = monthly_saving(dc, cheapest)
            margin = -saving.usd
            if margin <= 0:
                continue
            findings.append(
                Finding(
                    rule=self.name,
                    subject=dc.deployment,
                    severity=Severity.INFO,
                    title=f"{dc.deployment}: {format_share(dc.utilization)} utilized; self-hosting pays",
                    text=f"Keep self-hosting {dc.deployment}: {format_saving(saving)} cheaper than "
                    f"{cheapest.price.ref}.",
                    usd_per_month=None,
                    figures=(
                        *figures,
                        ("margin a month", format_usd(margin)),
                        (
                            f"{cheapest.price.ref} a month",
                            format_usd(observed_per_month(cheapest.usd, dc, month_h)),
                        ),
                    ),
                    command=report_command(context),
                    basis=f"{cheapest.price.ref}'s price of the observed tokens − their hours' TCO, "
                    f"{saving.basis}",
                    deployment=dc.deployment,
                    window=window,
                    monthly_cost_usd=monthly_cost,
                )
            )
        return findings
