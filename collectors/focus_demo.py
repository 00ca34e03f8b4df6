"""The demo's cloud bill: a FOCUS 1.0 export of one month, as AWS Data Exports writes it.

`auditor demo` writes it and imports it like any bill (`auditor billing import`): its cloud-billed
deployment's cost then comes from the bill's GPU lines, not from a rate. The month holds:
- qwen-32b's g5.12xlarge, every hour, tagged `deployment=qwen-32b`, covered by a Savings Plan: its
  BilledCost is 0 (the plan's fee is billed instead), its EffectiveCost the plan's rate, its ListCost
  the on-demand price; so the amortized cost, the default `billing.cost_metric`, is what it cost;
- the plan's hourly recurring fee (a Purchase line, not GPU compute: left out);
- a forgotten dev box, a g5.xlarge with no tags, three days on demand: unattributed, never dropped;
- storage and data-transfer lines (not GPU compute: left out).
"""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

DEMO_BILL_COLUMNS = (
    "BilledCost",
    "BillingAccountId",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeDescription",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountId",
    "ConsumedQuantity",
    "ConsumedUnit",
    "EffectiveCost",
    "ListCost",
    "PricingCategory",
    "ProviderName",
    "RegionId",
    "ResourceId",
    "ServiceName",
    "SkuId",
    "SubAccountId",
    "Tags",
)
ACCOUNT = "123456789012"
SAVINGS_PLAN = "arn:aws:savingsplans::123456789012:savingsplan/0d3m0-qwen"
QWEN_EFFECTIVE = Decimal("3.6301")
"""The Savings Plan's rate for a g5.12xlarge (USD per hour), against $5.672 on demand."""
QWEN_LIST = Decimal("5.672")
DEV_BOX = Decimal("1.006")
FOCUS_TIME = "%Y-%m-%d %H:%M:%S"


def _hours(start: datetime, end: datetime) -> list[datetime]:
    hours = []
    at = start
    while at < end:
        hours.append(at)
        at += timedelta(hours=1)
    return hours


def demo_bill_rows(start: datetime, end: datetime) -> list[dict[str, str]]:
    """The FOCUS rows of the billing period [start, end) (UTC month bounds)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    period = {"BillingPeriodStart": start.strftime(FOCUS_TIME), "BillingPeriodEnd": end.strftime(FOCUS_TIME)}
    common = {
        "BillingAccountId": ACCOUNT,
        "BillingCurrency": "USD",
        "ProviderName": "AWS",
        "RegionId": "us-east-1",
        "SubAccountId": "210987654321",
        **period,
    }
    rows: list[dict[str, str]] = []

    def row(at: datetime, **values: str) -> None:
        rows.append(
            {
                **common,
                "ChargePeriodStart": at.strftime(FOCUS_TIME),
                "ChargePeriodEnd": (at + timedelta(hours=1)).strftime(FOCUS_TIME),
                "ChargeCategory": "Usage",
                "ConsumedUnit": "Hours",
                "ConsumedQuantity": "1",
                **values,
            }
        )

    dev_days = {start.date() + timedelta(days=i) for i in range(3, 6)}
    for at in _hours(start, end):
        row(
            at,
            ChargeDescription=f"${QWEN_LIST} per On Demand Linux g5.12xlarge Instance Hour",
            BilledCost="0",
            EffectiveCost=str(QWEN_EFFECTIVE),
            ListCost=str(QWEN_LIST),
            PricingCategory="Committed",
            CommitmentDiscountId=SAVINGS_PLAN,
            ResourceId="i-0demo0qwen32b0001",
            ServiceName="Amazon Elastic Compute Cloud",
            SkuId="DEMOG512XLARGE",
            Tags='{"deployment": "qwen-32b", "team": "search"}',
        )
        row(
            at,
            ChargeCategory="Purchase",
            ChargeDescription="Savings Plan recurring fee",
            BilledCost=str(QWEN_EFFECTIVE),
            EffectiveCost="0",
            ListCost="0",
            PricingCategory="Committed",
            CommitmentDiscountId=SAVINGS_PLAN,
            ServiceName="Savings Plans for AWS Compute usage",
            SkuId="DEMOSPFEE",
            ConsumedQuantity="",
            ConsumedUnit="",
        )
        if at.date() in dev_days:
            row(
                at,
                ChargeDescription=f"${DEV_BOX} per On Demand Linux g5.xlarge Instance Hour",
                BilledCost=str(DEV_BOX),
                EffectiveCost=str(DEV_BOX),
                ListCost=str(DEV_BOX),
                PricingCategory="Standard",
                ResourceId="i-0demo0untagged0001",
                ServiceName="Amazon Elastic Compute Cloud",
                SkuId="DEMOG5XLARGE",
                Tags="NULL",
            )
        if at.hour == 0:
            row(
                at,
                ChargeDescription="$0.023 per GB-Month of storage used in Standard storage",
                BilledCost="0.7360",
                EffectiveCost="0.7360",
                ListCost="0.7360",
                PricingCategory="Standard",
                ResourceId="demo-model-weights",
                ServiceName="Amazon Simple Storage Service",
                SkuId="DEMOS3STANDARD",
                ConsumedUnit="GB-Mo",
                ConsumedQuantity="32",
                Tags='{"deployment": "qwen-32b"}',
            )
    return rows


def write_demo_bill(path: Path, start: datetime, end: datetime) -> Path:
    """Write the demo's FOCUS CSV for the billing period [start, end), atomically; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, DEMO_BILL_COLUMNS, restval="NULL", lineterminator="\n")
        writer.writeheader()
        writer.writerows(demo_bill_rows(start, end))
    os.replace(partial, path)
    return path
