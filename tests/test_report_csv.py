"""The CSV for finance: every derived figure recomputed from the columns it is derived from, exactly."""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from auditor.config import parse_config
from auditor.gpu_prices import load_gpu_prices
from auditor.model import CostLine
from auditor.prices import ApiPriceCatalog
from auditor.store import Store
from collectors.replay import (
    SimulatedDeployment,
    TrafficShape,
    bundled_trace,
    generate_loads,
    replay_into_store,
)
from reports.csv_export import write_csv
from reports.json_form import report_object
from reports.monthly import MonthReport, build_month_report

CONFIG = """
timezone = "America/New_York"
[[deployments]]
name = "llama"
model = "llama-3-70b"
gpu_type = "H100"
gpu_count = 2
prometheus_matchers = { app = "llama" }
compare_to = ["openai:gpt-4o", "together:meta-llama/Llama-3-70b-chat-hf"]
capacity_tokens_per_s = 6000
[deployments.price]
source = "static"
gpu_hourly_usd = 2.99
[deployments.overheads]
engineering_usd_month = 1234.56
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> MonthReport:
    config = parse_config(CONFIG)
    store = Store.open(f"sqlite:///{tmp_path_factory.mktemp('csv') / 'a.db'}")
    tz = ZoneInfo("America/New_York")
    start, end = datetime(2026, 10, 1, tzinfo=tz), datetime(2026, 10, 8, tzinfo=tz)
    loads = generate_loads(
        int(start.timestamp()),
        int(end.timestamp()),
        tz,
        TrafficShape(mean_requests_per_min=12),
        bundled_trace(),
    )
    replay_into_store(store, [(loads, SimulatedDeployment("llama", "H100", 2, 6000.0, busy_poll_util=1.0))])
    return build_month_report(
        store=store,
        config=config,
        month="2026-10",
        now=datetime(2026, 10, 9, 15, 30, tzinfo=UTC),  # partial: rated lines clipped mid-day
        api_catalog=ApiPriceCatalog(),
        gpu_catalog=load_gpu_prices(),
        findings=[],
    )


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _d(text: str) -> Decimal:
    return Decimal(text)


def test_daily_rows_recompute(report: MonthReport, tmp_path: Path) -> None:
    daily_path, summary_path, _ = write_csv(report, tmp_path, "r")
    rows = _read(daily_path)
    assert len(rows) == 9  # 1–9 October, the 9th up to now
    assert rows[-1]["day"] == "2026-10-09"
    for row in rows:
        cost, tokens = _d(row["cost_usd"]), int(row["prompt_tokens"]) + int(row["generation_tokens"])
        assert int(row["tokens"]) == tokens
        if tokens:
            assert _d(row["cost_per_mtok_usd"]) == cost * 1_000_000 / tokens
        else:
            assert row["cost_per_mtok_usd"] == ""  # no tokens: undefined, not zero
        assert _d(row["idle_cost_usd"]) == cost * _d(row["idle_gpu_hours"]) / _d(row["billed_gpu_hours"])
        if row["api_equivalent_usd"]:
            api = (
                int(row["prompt_tokens"]) * _d(row["api_input_mtok_usd"])
                + int(row["generation_tokens"]) * _d(row["api_output_mtok_usd"])
            ) / 1_000_000
            assert _d(row["api_equivalent_usd"]) == api
    summary = _read(summary_path)
    llama = summary[0]
    assert sum(_d(r["cost_usd"]) for r in rows) == _d(llama["cost_usd"])
    assert summary[-1]["deployment"] == "(total)"
    assert summary[-2]["deployment"] == "(unattributed)"
    assert _d(summary[-1]["cost_usd"]) == _d(llama["cost_usd"]) + _d(summary[-2]["cost_usd"])
    assert rows[0]["utilization_metric"] == "sm_active"
    assert float(rows[0]["gpu_util"]) == 1.0  # busy-polling NVML reads 100%


def test_summary_and_breakeven_recompute(report: MonthReport, tmp_path: Path) -> None:
    _, summary_path, api_path = write_csv(report, tmp_path, "r")
    llama = _read(summary_path)[0]
    cost, overhead, tco = _d(llama["cost_usd"]), _d(llama["overhead_usd"]), _d(llama["tco_usd"])
    assert tco == cost + overhead
    tokens = int(llama["prompt_tokens"]) + int(llama["generation_tokens"])
    assert _d(llama["cost_per_mtok_usd"]) == cost * 1_000_000 / tokens
    assert _d(llama["tco_per_mtok_usd"]) == tco * 1_000_000 / tokens
    billed, idle = _d(llama["billed_gpu_hours"]), _d(llama["idle_gpu_hours"])
    assert _d(llama["idle_cost_usd"]) == cost * idle / billed
    assert _d(llama["unknown_gpu_hours"]) == max(billed - _d(llama["observed_gpu_hours"]), Decimal(0))
    apis = _read(api_path)
    assert [a["api_model"] for a in apis] == ["gpt-4o", "meta-llama/Llama-3-70b-chat-hf"]
    for a in apis:
        prompt, generation = int(a["prompt_tokens"]), int(a["generation_tokens"])
        api_usd = (prompt * _d(a["input_mtok_usd"]) + generation * _d(a["output_mtok_usd"])) / 1_000_000
        assert _d(a["api_usd"]) == api_usd
        assert _d(a["savings_usd"]) == _d(a["tco_usd"]) - api_usd
        hourly = _d(a["tco_usd"]) / _d(a["window_hours"])
        assert _d(a["hourly_tco_usd"]) == hourly
        blended = api_usd / (prompt + generation)
        assert _d(a["blended_usd_per_token"]) == blended
        capacity = _d(a["capacity_tokens_per_s"])
        assert _d(a["breakeven_utilization"]) == hourly / (capacity * 3600 * blended)
        assert _d(a["breakeven_tokens_per_month"]) == hourly * 730 / blended
    # The JSON shows the same figures, rounded to the cent.
    data = report_object(report)["deployments"][0]
    assert data["cost_usd"] == float(cost.quantize(Decimal("0.01")))
    assert data["api_equivalents"][1]["usd"] == float(_d(apis[1]["api_usd"]).quantize(Decimal("0.01")))


def test_unattributed_lines_are_in_the_summary(tmp_path: Path) -> None:
    config = parse_config(CONFIG)
    store = Store.open(f"sqlite:///{tmp_path / 'u.db'}")
    day = date(2026, 10, 5)
    line = CostLine(day, "aws", "1", "i-x", "BoxUsage", Decimal("10.005"))
    store.replace_cost_lines("aws", "1", day, day.replace(day=6), [line])
    report = build_month_report(
        store=store,
        config=config,
        month="2026-10",
        now=datetime(2026, 11, 5, tzinfo=UTC),
        api_catalog=ApiPriceCatalog(),
        gpu_catalog=load_gpu_prices(),
        findings=[],
    )
    _, summary_path, _ = write_csv(report, tmp_path, "u")
    rows = {r["deployment"]: r for r in _read(summary_path)}
    assert _d(rows["(unattributed)"]["cost_usd"]) == Decimal("10.005")
    assert _d(rows["(total)"]["cost_usd"]) == _d(rows["llama"]["cost_usd"]) + Decimal("10.005")
