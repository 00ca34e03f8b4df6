"""The report as JSON for scripts; `auditor replay --json` prints the same deployment object.

Money is rounded to the cent once (banker's rounding; the report's parts by largest remainder, so
they sum to the total shown), hours to the microhour, shares to 1e-6; token counts are exact; the
exact figures are in the CSV.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from auditor.costing import DeploymentCost, monthly_saving, token_splits
from auditor.model import Finding
from auditor.units import cents
from reports.labels import shown_costs
from reports.monthly import MonthReport

SHARE = Decimal("0.000001")


def usd(value: Decimal | None) -> float | None:
    return None if value is None else float(cents(value))


def share(value: Decimal | float | None) -> float | None:
    if value is None:
        return None
    return float(Decimal(repr(value) if isinstance(value, float) else value).quantize(SHARE))


def recommendation(finding: Finding) -> dict[str, Any]:
    return {
        "rule": finding.rule,
        "severity": finding.severity.value,
        "text": finding.text,
        "usd_per_month": usd(finding.usd_per_month),
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
        "cost_usd": usd(cost.cost_usd) if cost.cost_known else None,
        "cost_known": cost.cost_known,
        "overhead_usd": usd(cost.overhead_usd),
        "tco_usd": usd(cost.tco_usd) if cost.cost_known else None,
        "active_start": cost.active_start.isoformat() if cost.active_start else None,
        "active_end": cost.active_end.isoformat() if cost.active_end else None,
        "window_hours": float(cost.window_hours),
        "active_hours": float(cost.active_hours),
        "month_hours": float(cost.month_hours),
        "coverage": share(cost.coverage),
        "observed_hours": share(cost.observed_hours),
        "observed_cost_usd": usd(cost.observed_cost_usd),
        "unobserved_cost_usd": usd(cost.unobserved_cost_usd),
        "estimated": cost.estimated,
        "billed_gpu_hours": float(cost.hours.billed),
        "observed_gpu_hours": float(cost.hours.observed),
        "idle_gpu_hours": float(cost.hours.idle),
        "unknown_gpu_hours": float(cost.hours.unknown),
        "utilization": share(cost.utilization),
        "utilization_metric": cost.utilization_metric.value,
        "utilization_measures": {
            "gpu_util": share(measures.gpu_util),
            "sm_active": share(measures.sm_active),
            "request_busy": share(measures.request_busy),
            "throughput_util": share(measures.throughput_util),
        },
        "capacity_tokens_per_s": cost.capacity_tokens_per_s,
        "capacity_source": cost.capacity_source,
        # No inference-server metrics: the counts are unknown (null), not zero.
        "prompt_tokens": cost.prompt_tokens if cost.tokens_known else None,
        "generation_tokens": cost.generation_tokens if cost.tokens_known else None,
        "cost_per_mtok_usd": usd(cost.cost_per_mtok_usd),
        "tco_per_mtok_usd": usd(cost.tco_per_mtok_usd),
        "idle_cost_usd": usd(cost.idle_cost_usd),
        # Two cost bases (API comparisons and savings use allocation), each split by direction.
        "cost_bases": {
            split.basis: {
                "cost_usd": usd(
                    cost.observed_cost_usd if split.basis == "allocation" else cost.usage_cost_usd
                ),
                "cost_per_mtok_usd": usd(
                    cost.cost_per_mtok_usd if split.basis == "allocation" else cost.usage_cost_per_mtok_usd
                ),
                "input_mtok_usd": usd(split.input_mtok_usd),
                "output_mtok_usd": usd(split.output_mtok_usd),
                "split_method": split.method,
            }
            for split in token_splits(cost)
        },
        "api_equivalents": [
            {
                "provider": c.price.provider,
                "model": c.price.model,
                "usd": usd(c.usd),
                # The one savings figure (`monthly_saving`): what it is over is in `saving_basis`.
                "savings_usd": usd(monthly_saving(cost, c).usd),
                "saving_basis": monthly_saving(cost, c).basis,
                "saving_per_month": monthly_saving(cost, c).per_month,
                "breakeven_utilization": share(c.breakeven_utilization),
                "breakeven_tokens_per_month": (
                    None if c.breakeven_tokens_per_month is None else round(c.breakeven_tokens_per_month)
                ),
            }
            for c in cost.apis
        ],
        # Against the cheapest API compared: the figures a decision turns on.
        "breakeven_utilization": share(cheapest.breakeven_utilization) if cheapest else None,
        "breakeven_tokens_per_month": (
            round(cheapest.breakeven_tokens_per_month)
            if cheapest and cheapest.breakeven_tokens_per_month is not None
            else None
        ),
        "recommendations": [recommendation(f) for f in findings],
    }


def report_object(report: MonthReport) -> dict[str, Any]:
    shown = shown_costs(report)
    deployments = []
    for d in report.deployments:
        data = deployment_object(d.cost, d.findings)
        cost, tco = shown.deployments[d.name], shown.tco(d.name)
        if cost is not None and tco is not None:
            # Rounded once, so that the deployments and the unattributed sum to the total shown.
            data["cost_usd"] = float(cost)
            data["overhead_usd"] = float(shown.overheads[d.name])
            data["tco_usd"] = float(tco)
        deployments.append(data)
    return {
        "month": report.month,
        "partial": report.partial,
        "complete": report.complete,
        "filtered_to": list(report.filtered_to),
        "unfiltered_total_usd": usd(report.unfiltered_total_usd),
        "timezone": report.timezone,
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        "total_cost_usd": float(shown.total),
        # A filtered report leaves the unattributed lines to the whole report: null, not $0.
        "unattributed_cost_usd": None if report.filtered_to else float(shown.unattributed),
        "estimated": report.estimated,
        "cost_metric": report.cost_metric.value,
        "no_billing_data": report.no_billing_data,
        "billing_fix": report.billing_fix if report.no_billing_data else None,
        "deployments": deployments,
        "other_recommendations": [{**recommendation(f), "subject": f.subject} for f in report.other_findings],
        "total_at_stake": {
            "usd_per_month": usd(report.at_stake.usd_per_month),
            "cost_usd_per_month": usd(report.at_stake.cost_usd_per_month),
            "overspend_usd_per_month": usd(report.at_stake.overspend_usd_per_month),
            "text": report.at_stake_text,
        },
    }
