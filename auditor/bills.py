"""Words every output uses about bills: which cost it counts, and what to do when a bill is missing.

A deployment priced by its cloud bill (`price.source` aws, gcp or focus) with no lines for a window has
*no billing data*: its cost is unknown, never $0, it gets no verdict, and every output names it with
the command that brings its bill in.
"""

from __future__ import annotations

from auditor.config import BILLED_PRICE_SOURCES, Config, DeploymentConfig
from auditor.model import COST_METRIC_COLUMNS, CostMetric

_METRIC_MEANING = {
    CostMetric.EFFECTIVE: "amortized: commitments and upfront fees spread",
    CostMetric.BILLED: "as invoiced",
    CostMetric.LIST: "list prices, before discounts",
}


def cost_metric_words(metric: CostMetric) -> str:
    """`EffectiveCost (amortized: …; billing.cost_metric = effective)`."""
    return f"{COST_METRIC_COLUMNS[metric]} ({_METRIC_MEANING[metric]}; billing.cost_metric = {metric.value})"


def is_bill_priced(deployment: DeploymentConfig) -> bool:
    return deployment.price.source in BILLED_PRICE_SOURCES


def billing_fix_command(config: Config, program: str = "auditor") -> str:
    """The command that brings a missing bill in: a sync where an API source or export is configured,
    else an import of the FOCUS files."""
    if any(s.kind != "focus_files" for s in config.billing.sources):
        return f"{program} billing sync"
    return f"{program} billing import FILE…"


def no_billing_data_line(names: list[str], period: str, fix: str) -> str:
    """The header line of an output where bill-priced deployments have no lines for the period."""
    which = ", ".join(names)
    verb = "has" if len(names) == 1 else "have"
    return (
        f"no billing data: {which} {verb} no bill lines for {period} (cost unknown, not $0; no verdict); "
        f"run `{fix}`"
    )
