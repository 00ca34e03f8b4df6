"""Properties of FOCUS imports (hypothesis): a re-import changes nothing; a revision of the last days
corrects them and never doubles them; deployments + unattributed = the bill's GPU lines, to the cent
(exactly, in fact), however an instance is shared."""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.attribution import Attributor
from auditor.config import Config, parse_config
from auditor.gpu_prices import load_gpu_prices
from auditor.model import CostLine, CostMetric
from auditor.store import Store
from collectors.focus_sources import import_files

CATALOG = load_gpu_prices()
MONTH = datetime(2026, 10, 1, tzinfo=UTC)
NEXT = datetime(2026, 11, 1, tzinfo=UTC)
COLUMNS = (
    "BilledCost", "EffectiveCost", "ListCost", "BillingCurrency", "BillingAccountId", "BillingPeriodStart",
    "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd", "ChargeCategory", "ChargeDescription",
    "ConsumedQuantity", "ConsumedUnit", "ResourceId", "SkuId", "Tags",
)  # fmt: skip
CONFIG = """
[store]
url = "sqlite:///{db}"
[billing.attribution]
hosts = {{ "i-shared" = "node-1" }}
[[deployments]]
name = "llama"
model = "m"
gpu_type = "A10G"
gpus = [{{ host = "node-1", indexes = [0, 1, 2] }}]
price = {{ source = "focus" }}
[[deployments]]
name = "qwen"
model = "m"
gpu_type = "A10G"
gpus = [{{ host = "node-1", indexes = [3, 4] }}]
price = {{ source = "focus" }}
[[deployments]]
name = "tagged"
model = "m"
gpu_type = "A10G"
gpu_count = 1
prometheus_matchers = {{ app = "tagged" }}
price = {{ source = "focus" }}
"""

money = st.decimals(min_value=Decimal("-50"), max_value=Decimal("500"), places=10, allow_nan=False)
# (hour of the month, resource, tag, effective, billed)
rows_strategy = st.lists(
    st.tuples(
        st.integers(0, 30 * 24 - 1),
        st.sampled_from(["i-shared", "i-tagged", "i-other"]),
        st.sampled_from(['{"deployment": "tagged"}', '{"team": "nobody"}', "NULL"]),
        money,
        money,
    ),
    min_size=1,
    max_size=30,
)


def _config(db: Path) -> Config:
    return parse_config(CONFIG.format(db=db))


def _write(path: Path, rows: Sequence[tuple[int, str, str, Decimal, Decimal]]) -> Path:
    fmt = "%Y-%m-%d %H:%M:%S"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for hour, resource, tags, effective, billed in rows:
            start = MONTH + timedelta(hours=hour)
            writer.writerow(
                [billed, effective, "1.006", "USD", "1", MONTH.strftime(fmt), NEXT.strftime(fmt),
                 start.strftime(fmt), (start + timedelta(hours=1)).strftime(fmt), "Usage",
                 "$5.672 per On Demand Linux g5.12xlarge Instance Hour", "1", "Hours", resource, "SKU", tags]
            )  # fmt: skip
    return path


def _total(lines: Sequence[CostLine]) -> Decimal:
    return sum((x.amount_usd for x in lines), Decimal(0))


def _all(store: Store) -> list[CostLine]:
    return store.cost_lines(date(2026, 9, 1), date(2026, 12, 1))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy)
def test_a_reimport_changes_nothing_and_the_parts_add_up_to_the_bill(
    rows: list[tuple[int, str, str, Decimal, Decimal]],
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        where = Path(scratch)
        config = _config(where / "a.db")
        store = Store.open(config.store.url)
        try:
            bill = _write(where / "bill.csv", rows)
            first = import_files(store, config, [bill], CATALOG, source="bills")
            stored = _all(store)
            again = import_files(store, config, [bill], CATALOG, source="bills")
            assert not again.change.changed_anything and _all(store) == stored
            # Deployments + unattributed = every GPU row of the file, exactly (effective and billed).
            assert first.gpu_lines_usd == sum((r[3] for r in rows), Decimal(0))
            assert sum(first.usd_by_deployment.values(), Decimal(0)) == first.gpu_lines_usd
            assert _total(stored) == first.gpu_lines_usd
            billed = sum((x.costed(CostMetric.BILLED).amount_usd for x in stored), Decimal(0))
            assert billed == sum((r[4] for r in rows), Decimal(0))
            # A resource no deployment claims stays unattributed; the tagged one is its deployment's.
            assert {x.deployment for x in stored if x.resource == "i-other"} <= {None, "tagged"}
            assert {x.deployment for x in stored if x.resource == "i-shared"} <= {"llama", "qwen"}
        finally:
            store.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy, revised=st.lists(money, min_size=1, max_size=30), days=st.integers(1, 10))
def test_a_revision_of_the_last_days_corrects_them_and_never_doubles(
    rows: list[tuple[int, str, str, Decimal, Decimal]], revised: list[Decimal], days: int
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        where = Path(scratch)
        config = _config(where / "a.db")
        store = Store.open(config.store.url)
        try:
            import_files(store, config, [_write(where / "v1.csv", rows)], CATALOG, source="bills")
            cutoff = 30 * 24 - days * 24
            # The provider restates the last days: new amounts there, the earlier hours as they were.
            restated = [
                (h, r, t, revised[i % len(revised)] if h >= cutoff else e, b)
                for i, (h, r, t, e, b) in enumerate(rows)
            ]
            import_files(store, config, [_write(where / "v2.csv", restated)], CATALOG, source="bills")
            assert _total(_all(store)) == sum((r[3] for r in restated), Decimal(0))
        finally:
            store.close()


@settings(max_examples=60, deadline=None)
@given(
    amounts=st.lists(money, min_size=1, max_size=20),
    instance_gpus=st.sampled_from([None, 4, 5, 8, 16]),
)
def test_a_split_adds_up_to_the_line_exactly(amounts: list[Decimal], instance_gpus: int | None) -> None:
    config = _config(Path("/nonexistent/a.db"))
    gpus = {"g5.12xlarge": instance_gpus}
    attributor = Attributor(config, lambda t: gpus.get(t))
    lines = [
        CostLine(
            day=date(2026, 10, 1),
            source="bills",
            account="1",
            resource="arn:aws:ec2:us-east-1:1:instance/i-shared",
            usage_type="g5.12xlarge",
            amount_usd=a,
            effective_cost=a,
            billed_cost=a * 3,
            charge_period_start_ts=1_790_812_800 + 3600 * i,
            charge_period_end_ts=1_790_812_800 + 3600 * (i + 1),
        )
        for i, a in enumerate(amounts)
    ]
    parts = attributor.attribute(lines).lines
    assert _total(parts) == _total(lines)
    assert sum((p.billed_cost or Decimal(0) for p in parts), Decimal(0)) == 3 * _total(lines)
    owners = {p.deployment for p in parts}
    assert {"llama", "qwen"} <= owners
    assert (None in owners) == (instance_gpus is not None and instance_gpus > 5)
    assert len({p.line_key for p in parts}) == len(parts)  # each part keeps a key of its own
