"""saturation: requests waiting while the KV cache is nearly full, sustained: under-provisioned.

A minute is saturated when its server was observed, requests were waiting (mean > 0) and the KV cache
was above `kv_cache_above`. Fires when at least 90% of the known minutes of the last `minutes` were
saturated, and clears when fewer than `leave_below_share` of them are. Latency, not money: no dollars.

Config (defaults shown)::

    [rules.saturation]
    kv_cache_above = 0.90
    minutes = 15
    leave_below_share = 0.5
    cooldown_h = 24

Says: "Add capacity to llama: requests queue with the KV cache 97% full; latency is at risk."
"""

from __future__ import annotations

from collections import defaultdict
from typing import ClassVar

from auditor.model import Action, DeploymentMinute, Finding, Severity, Window
from auditor.units import format_share
from rules.common import no_verdict
from rules.contract import RuleContext

ENTER_SHARE = 0.9


class Saturation:
    name: ClassVar[str] = "saturation"
    config_key: ClassVar[str] = "saturation"
    action: ClassVar[Action] = Action.ADD_CAPACITY
    announces_resolution: ClassVar[bool] = True

    def evaluate(self, context: RuleContext) -> list[Finding]:
        params = context.config.rules.saturation
        end_ts = context.now.timestamp()
        by_deployment: dict[str, list[DeploymentMinute]] = defaultdict(list)
        for m in context.store.deployment_minutes(end_ts - params.minutes * 60, end_ts):
            if m.server_observed_s > 0 and m.kv_cache_mean is not None:
                by_deployment[m.deployment].append(m)
        findings: list[Finding] = []
        for deployment in context.config.deployments:
            minutes = by_deployment.get(deployment.name, [])
            if not minutes:
                continue  # no server metrics at all: nothing to judge, and nothing to say every minute
            if len(minutes) < context.config.rules.min_coverage * params.minutes:
                findings.append(
                    no_verdict(
                        self.name,
                        deployment.name,
                        f"only {len(minutes)} of the last {params.minutes} minutes have server metrics",
                        deployment=deployment.name,
                    )
                )
                continue
            saturated = [
                m
                for m in minutes
                if (m.requests_waiting_mean or 0) > 0 and (m.kv_cache_mean or 0) > params.kv_cache_above
            ]
            share = len(saturated) / len(minutes)
            firing = context.is_firing(self.name, deployment.name)
            if share < (params.leave_below_share if firing else ENTER_SHARE):
                continue
            kv = max((m.kv_cache_max or m.kv_cache_mean or 0.0) for m in minutes)
            waiting = sum(m.requests_waiting_mean or 0.0 for m in minutes) / len(minutes)
            findings.append(
                Finding(
                    rule=self.name,
                    subject=deployment.name,
                    severity=Severity.WARNING,
                    title=f"{deployment.name}: saturated {len(saturated)} of {len(minutes)} minutes",
                    text=f"Add capacity to {deployment.name}: requests queue with the KV cache "
                    f"{format_share(kv)} full; latency is at risk.",
                    usd_per_month=None,
                    figures=(
                        ("saturated minutes", f"{len(saturated)} of {len(minutes)} observed"),
                        ("requests waiting (mean)", f"{waiting:.1f}"),
                        ("KV cache (max)", format_share(kv)),
                        ("threshold", f"KV cache over {format_share(params.kv_cache_above)}"),
                    ),
                    command="auditor status",
                    deployment=deployment.name,
                    window=Window(
                        start_ts=end_ts - params.minutes * 60,
                        end_ts=end_ts,
                        observed_h=len(minutes) / 60,
                        expected_h=params.minutes / 60,
                        unit="h",
                    ),
                )
            )
        return findings
