"""The report as JSON for scripts; `auditor replay --json` prints the same deployment object.

A machine format, so by the convention of `auditor.output` nothing is rounded: money is the exact
`Decimal` (written by `auditor.output.render_json` as a number with all its digits), hours and shares
as computed, token counts whole. The report's parts sum exactly to its total; the human formats round
once, to the cent, and their parts sum to the total they show (`reports.labels.shown_costs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from auditor.costing import DeploymentCost, monthly_saving, token_splits
from auditor.model import Finding
from auditor.results import finding_data, total_at_stake
from reports.digest import DeploymentWeek, Digest
from reports.monthly import MonthReport


def tokens(count: Decimal | None) -> int | None:
    """A derived token count (a break-even volume) in whole tokens, as every count is written."""
    return None if count is None else round(count)


def recommendation(finding: Finding) -> dict[str, Any]:
    return {
        "rule": finding.rule,
        "severity": finding.severity.value,
        "text": finding.text,
        "usd_per_month": finding.usd_per_month,
    }


def deployment_object(cost: DeploymentCost, findings: Sequence[Finding]) -> dict[str, Any]:
    """One deployment's figures, as the issue's JSON lists them (plus a few that explain them)."""
    cheapest = cost.cheapest_api
    measures = cost.measures
    return {
        "name": cost.deployment,
        "start": cost.start.isoformat(),
        "end": cost.end.isoformat(),
        # A bill-priced deployment without lines has no billing data: null, not $0.
        "cost_usd": cost.cost_usd if cost.cost_known else None,
        "cost_known": cost.cost_known,
        "overhead_usd": cost.overhead_usd,
        "tco_usd": cost.tco_usd if cost.cost_known else None,
        "active_start": cost.active_start.isoformat() if cost.active_start else None,
        "active_end": cost.active_end.isoformat() if cost.active_end else None,
        "window_hours": cost.window_hours,
        "active_hours": cost.active_hours,
        "month_hours": cost.month_hours,
        "coverage": cost.coverage,
        "observed_hours": cost.observed_hours,
        "observed_cost_usd": cost.observed_cost_usd,
        "unobserved_cost_usd": cost.unobserved_cost_usd,
        "estimated": cost.estimated,
        "billed_gpu_hours": cost.hours.billed,
        "observed_gpu_hours": cost.hours.observed,
        "idle_gpu_hours": cost.hours.idle,
        "unknown_gpu_hours": cost.hours.unknown,
        "utilization": cost.utilization,
        "utilization_metric": cost.utilization_metric.value,
        "utilization_measures": {
            "gpu_util": measures.gpu_util,
            "sm_active": measures.sm_active,
            "request_busy": measures.request_busy,
            "throughput_util": measures.throughput_util,
        },
        "capacity_tokens_per_s": cost.capacity_tokens_per_s,
        "capacity_source": cost.capacity_source,
        # No inference-server metrics: the counts are unknown (null), not zero.
        "prompt_tokens": cost.prompt_tokens if cost.tokens_known else None,
        "generation_tokens": cost.generation_tokens if cost.tokens_known else None,
        "cost_per_mtok_usd": cost.cost_per_mtok_usd,
        "tco_per_mtok_usd": cost.tco_per_mtok_usd,
        "idle_cost_usd": cost.idle_cost_usd,
        # Two cost bases (API comparisons and savings use allocation), each split by direction.
        "cost_bases": {
            split.basis: {
                "cost_usd": cost.observed_cost_usd if split.basis == "allocation" else cost.usage_cost_usd,
                "cost_per_mtok_usd": cost.cost_per_mtok_usd
                if split.basis == "allocation"
                else cost.usage_cost_per_mtok_usd,
                "input_mtok_usd": split.input_mtok_usd,
                "output_mtok_usd": split.output_mtok_usd,
                "split_method": split.method,
            }
            for split in token_splits(cost)
        },
        "api_equivalents": [
            {
                "provider": c.price.provider,
                "model": c.price.model,
                "usd": c.usd,
                # The one savings figure (`monthly_saving`): what it is over is in `saving_basis`.
                "savings_usd": monthly_saving(cost, c).usd,
                "saving_basis": monthly_saving(cost, c).basis,
                "saving_per_month": monthly_saving(cost, c).per_month,
                "breakeven_utilization": c.breakeven_utilization,
                "breakeven_tokens_per_month": tokens(c.breakeven_tokens_per_month),
            }
            for c in cost.apis
        ],
        # Against the cheapest API compared: the figures a decision turns on.
        "breakeven_utilization": cheapest.breakeven_utilization if cheapest else None,
        "breakeven_tokens_per_month": tokens(cheapest.breakeven_tokens_per_month) if cheapest else None,
        "recommendations": [recommendation(f) for f in findings],
    }


def report_object(report: MonthReport) -> dict[str, Any]:
    deployments = [deployment_object(d.cost, d.findings) for d in report.deployments]
    return {
        "month": report.month,
        "partial": report.partial,
        "complete": report.complete,
        "filtered_to": list(report.filtered_to),
        "unfiltered_total_usd": report.unfiltered_total_usd,
        "timezone": report.timezone,
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        # Exact: the deployments' costs and the unattributed sum to it.
        "total_cost_usd": report.total_cost_usd,
        # A filtered report leaves the unattributed lines to the whole report: null, not $0.
        "unattributed_cost_usd": None if report.filtered_to else report.unattributed_cost_usd,
        "estimated": report.estimated,
        "cost_metric": report.cost_metric.value,
        "no_billing_data": report.no_billing_data,
        "billing_fix": report.billing_fix if report.no_billing_data else None,
        "deployments": deployments,
        "other_recommendations": [{**recommendation(f), "subject": f.subject} for f in report.other_findings],
        "total_at_stake": {
            "usd_per_month": report.at_stake.usd_per_month,
            "cost_usd_per_month": report.at_stake.cost_usd_per_month,
            "overspend_usd_per_month": report.at_stake.overspend_usd_per_month,
            "text": report.at_stake_text,
        },
    }


def digest_object(digest: Digest) -> dict[str, Any]:
    """`auditor digest --json`: the week's figures as the text and Slack show them, exact."""
    return {
        "week": digest.week,
        "start": digest.start.isoformat(),
        "end": digest.end.isoformat(),
        "timezone": digest.timezone,
        "coverage": digest.coverage,
        # Under the config's coverage the week is unknown: its figures describe too little of it.
        "unknown": digest.unknown,
        "total_usd": digest.total_usd,
        "unattributed_usd": digest.unattributed_usd,
        "deployments": [_week_object(row) for row in digest.deployments],
        "recommendations": [finding_data(f) for f in digest.recommendations],
        "total_at_stake": total_at_stake(digest.at_stake),
    }


# What a deployment's week says beyond its coverage and cost: unknown (null) when too little of the
# week was observed, as the text and Slack leave them out (docs/rules.md, "Unknown weeks").
WEEK_FIGURES = (
    "utilization",
    "utilization_measures",
    "prompt_tokens",
    "generation_tokens",
    "cost_per_mtok_usd",
    "tco_per_mtok_usd",
    "idle_cost_usd",
    "idle_gpu_hours",
    "cost_bases",
    "api_equivalents",
    "breakeven_utilization",
    "breakeven_tokens_per_month",
)


def _week_object(row: DeploymentWeek) -> dict[str, Any]:
    data = deployment_object(row.cost, [])
    if not row.known:
        data.update(dict.fromkeys(WEEK_FIGURES))
    return {**data, "week_coverage": row.coverage, "known": row.known}
