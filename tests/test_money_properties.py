"""Properties of the money over random stores (hypothesis): deployments with gaps, DST months in
several zones, static rates with and without a configured active period, billed and unattributed lines.

- no cost appears outside a deployment's active period;
- the lines CSV recomputes the JSON's figures, and the HTML shows the JSON's;
- displayed parts sum to displayed totals.
"""

from __future__ import annotations

import csv
import json
import tempfile
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.gpu_prices import load_gpu_prices
from auditor.model import CostBasis, CostLine
from auditor.output import render_json
from auditor.prices import ApiPriceCatalog
from auditor.store import Store
from auditor.units import cents, format_usd
from reports.csv_export import write_csv
from reports.html import render_html
from reports.json_form import report_object
from reports.monthly import NoDataError, build_month_report
from tests.test_money_truth import _config, _minutes

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe")
DST_MONTHS = (3, 4, 10, 11)

spans = st.lists(
    st.tuples(st.integers(0, 27), st.integers(0, 23), st.integers(1, 10)), min_size=0, max_size=4
)
amounts = st.decimals(min_value=Decimal("0.001"), max_value=Decimal(900), places=3)
bill = st.lists(st.tuples(st.integers(1, 28), amounts, st.booleans()), max_size=5)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tz=st.sampled_from(ZONES),
    month=st.sampled_from(DST_MONTHS),
    observed=spans,
    active=st.one_of(st.none(), st.tuples(st.integers(1, 28), st.integers(1, 20))),
    rate=st.decimals(min_value=Decimal("0.5"), max_value=Decimal(9), places=3),
    overhead=st.integers(0, 5000),
    lines=bill,
)
def test_money_holds_together(
    tz: str,
    month: int,
    observed: list[tuple[int, int, int]],
    active: tuple[int, int] | None,
    rate: Decimal,
    overhead: int,
    lines: list[tuple[int, Decimal, bool]],
) -> None:
    zone = ZoneInfo(tz)
    active_text = ""
    if active is not None:
        first = date(2026, month, active[0])
        until = first + timedelta(days=active[1])
        active_text = f"active_from = {first.isoformat()}\nactive_until = {until.isoformat()}"
    config = _config(tz=tz, active=active_text, rate=rate, overhead=overhead)
    with tempfile.TemporaryDirectory() as scratch:
        store = Store.open(f"sqlite:///{Path(scratch) / 'p.db'}")
        for day, hour, hours in observed:
            start = datetime(2026, month, 1 + day, hour, tzinfo=zone)
            gpus, servers = _minutes(start, start + timedelta(hours=hours), tokens=1200)
            store.replace_minutes(
                int(start.timestamp()), int((start + timedelta(hours=hours)).timestamp()), gpus, servers
            )
        cost_lines = [
            CostLine(
                date(2026, month, d),
                "aws",
                "1",
                f"i-{i}",
                "Box",
                amount,
                "qwen" if ours else None,
                basis=CostBasis.INVOICED,
            )
            for i, (d, amount, ours) in enumerate(lines)
        ]
        store.replace_cost_lines("aws", "1", date(2026, month, 1), date(2026, month, 29), cost_lines)
        try:
            report = build_month_report(
                store=store,
                config=config,
                month=f"2026-{month:02d}",
                now=datetime(2027, 1, 1, tzinfo=UTC),
                api_catalog=ApiPriceCatalog(config.prices.api),
                gpu_catalog=load_gpu_prices(),
                findings=[],
            )
        except NoDataError:
            assert not observed and active is None and not lines
            return
        llama = next(d.cost for d in report.deployments if d.name == "llama")
        # No cost outside the active period: the static rate over exactly its hours.
        expected = rate * 2 * llama.active_hours
        assert abs(llama.cost_usd - expected) < Decimal("1e-18")
        if active is None and not observed:
            assert llama.cost_usd == 0 and llama.overhead_usd == 0
        data = report_object(report)
        # The JSON's exact parts sum to its exact total.
        parts = [d["cost_usd"] for d in data["deployments"] if d["cost_usd"] is not None]
        assert sum(parts, Decimal(0)) + data["unattributed_cost_usd"] == data["total_cost_usd"]
        # The lines CSV recomputes the JSON.
        paths = write_csv(report, Path(scratch), "p")
        with next(p for p in paths if p.name.endswith("-lines.csv")).open() as handle:
            rows = list(csv.DictReader(handle))
        usage = [r for r in rows if r["ChargeCategory"] == "Usage"]
        assert cents(sum((Decimal(r["EffectiveCost"]) for r in usage), Decimal(0))) == cents(
            data["total_cost_usd"]
        )
        for d in data["deployments"]:
            own = [Decimal(r["EffectiveCost"]) for r in usage if r["x_Deployment"] == d["name"]]
            if d["cost_usd"] is not None:
                assert abs(sum(own, Decimal(0)) - d["cost_usd"]) < Decimal("0.01")
            tokens = sum(int(r["x_PromptTokens"] or 0) for r in rows if r["x_Deployment"] == d["name"])
            if d["prompt_tokens"] is not None and tokens:
                assert tokens == d["prompt_tokens"]
        # The HTML shows the JSON's total.
        html = render_html(report)
        assert f'id="total-cost">{format_usd(data["total_cost_usd"])}<' in html
        written = json.loads(render_json(data), parse_float=Decimal)  # and the JSON is JSON, exact
        assert written["total_cost_usd"] == data["total_cost_usd"]
        store.close()
