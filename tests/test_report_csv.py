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


def _files(report: MonthReport, tmp_path: Path, stem: str = "r") -> dict[str, list[dict[str, str]]]:
    paths = write_csv(report, tmp_path, stem)
    return {p.name.removeprefix(f"{stem}-").removesuffix(".csv"): _read(p) for p in paths}


def test_daily_rows_recompute(report: MonthReport, tmp_path: Path) -> None:
    files = _files(report, tmp_path)
    rows = files["daily"]
    assert len(rows) == 9  # 1–9 October, the 9th up to now
    assert rows[-1]["day"] == "2026-10-09"
    for row in rows:
        cost = _d(row["cost_usd"])
        if row["tokens_known"] == "false":
            assert row["tokens"] == row["cost_per_mtok_usd"] == ""  # unknown, not 0
            continue
        tokens = int(row["prompt_tokens"]) + int(row["generation_tokens"])
        assert int(row["tokens"]) == tokens
        observed = cost * min(_d(row["observed_gpu_hours"]) / _d(row["billed_gpu_hours"]), Decimal(1))
        assert _d(row["observed_cost_usd"]) == observed
        if tokens:
            assert _d(row["cost_per_mtok_usd"]) == observed * 1_000_000 / tokens
        else:
            assert row["cost_per_mtok_usd"] == ""  # no tokens: undefined, not zero
        assert _d(row["idle_cost_usd"]) == cost * _d(row["idle_gpu_hours"]) / _d(row["billed_gpu_hours"])
        if row["api_equivalent_usd"]:
            api = (
                int(row["prompt_tokens"]) * _d(row["api_input_mtok_usd"])
                + int(row["generation_tokens"]) * _d(row["api_output_mtok_usd"])
            ) / 1_000_000
            assert _d(row["api_equivalent_usd"]) == api
    llama = files["summary"][0]
    assert [r["deployment"] for r in files["summary"]] == ["llama"]  # deployments only
    assert sum(_d(r["cost_usd"]) for r in rows) == _d(llama["cost_usd"])
    totals = {r["scope"]: r for r in files["totals"]}
    assert _d(totals["total"]["cost_usd"]) == _d(llama["cost_usd"]) + _d(totals["unattributed"]["cost_usd"])
    assert rows[0]["utilization_metric"] == "sm_active"
    assert float(rows[0]["gpu_util"]) == 1.0  # busy-polling NVML reads 100%


def test_summary_and_breakeven_recompute(report: MonthReport, tmp_path: Path) -> None:
    files = _files(report, tmp_path)
    llama = files["summary"][0]
    cost, overhead, tco = _d(llama["cost_usd"]), _d(llama["overhead_usd"]), _d(llama["tco_usd"])
    assert tco == cost + overhead
    tokens = int(llama["prompt_tokens"]) + int(llama["generation_tokens"])
    billed, idle = _d(llama["billed_gpu_hours"]), _d(llama["idle_gpu_hours"])
    coverage = min(_d(llama["observed_gpu_hours"]) / billed, Decimal(1))
    assert _d(llama["coverage"]) == coverage
    assert _d(llama["cost_per_mtok_usd"]) == cost * coverage * 1_000_000 / tokens
    assert _d(llama["tco_per_mtok_usd"]) == tco * coverage * 1_000_000 / tokens
    assert _d(llama["idle_cost_usd"]) == cost * idle / billed
    assert _d(llama["unknown_gpu_hours"]) == max(billed - _d(llama["observed_gpu_hours"]), Decimal(0))
    apis = files["api"]
    assert [a["api_model"] for a in apis] == ["gpt-4o", "meta-llama/Llama-3-70b-chat-hf"]
    for a in apis:
        prompt, generation = int(a["prompt_tokens"]), int(a["generation_tokens"])
        api_usd = (prompt * _d(a["input_mtok_usd"]) + generation * _d(a["output_mtok_usd"])) / 1_000_000
        assert _d(a["api_usd"]) == api_usd
        assert _d(a["observed_tco_usd"]) == _d(a["tco_usd"]) * _d(a["coverage"])
        # A month so far: the saving is that of the month so far, not projected.
        assert a["saving_per_month"] == "false" and a["saving_basis"] == "2026-10 so far"
        assert _d(a["saving_usd"]) == _d(a["observed_tco_usd"]) - api_usd
        hourly = _d(a["tco_usd"]) / _d(a["active_hours"])
        assert _d(a["hourly_tco_usd"]) == hourly
        blended = api_usd / (prompt + generation)
        assert _d(a["blended_usd_per_token"]) == blended
        capacity = _d(a["capacity_tokens_per_s"])
        assert _d(a["breakeven_utilization"]) == hourly / (capacity * 3600 * blended)
        # October's real hours in New York (DST ends in November): 744, not 730.
        assert _d(a["month_hours"]) == 744
        assert _d(a["breakeven_tokens_per_month"]) == hourly * 744 / blended
    # The JSON carries the same figures as the CSV, exactly.
    data = report_object(report)["deployments"][0]
    assert data["cost_usd"] == cost
    assert data["api_equivalents"][1]["usd"] == _d(apis[1]["api_usd"])


def test_lines_recompute_the_summary(report: MonthReport, tmp_path: Path) -> None:
    files = _files(report, tmp_path)
    lines, llama = files["lines"], files["summary"][0]
    own = [r for r in lines if r["x_Deployment"] == "llama"]
    usage = [r for r in own if r["ChargeCategory"] == "Usage"]
    assert sum(_d(r["EffectiveCost"]) for r in usage) == _d(llama["cost_usd"])
    assert sum(_d(r["EffectiveCost"]) for r in own) == _d(llama["tco_usd"])
    assert sum(int(r["x_PromptTokens"] or 0) for r in own) == int(llama["prompt_tokens"])
    assert sum(int(r["x_GenerationTokens"] or 0) for r in own) == int(llama["generation_tokens"])
    # Idle cost per line is the day's idle share; the month's is the month's: equal up to the
    # microhour quantization of the hours.
    idle = sum(_d(r["x_IdleCostUsd"] or "0") for r in own)
    assert abs(idle - _d(llama["idle_cost_usd"])) < Decimal("0.0001")
    # A static rate is a list price: no invoice is invented for it.
    assert all(r["BilledCost"] == "" and r["ListCost"] == r["EffectiveCost"] for r in usage)
    assert {r["BillingCurrency"] for r in lines} == {"USD"}


def test_unattributed_lines_are_in_the_totals_and_the_days(tmp_path: Path) -> None:
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
    files = _files(report, tmp_path, "u")
    totals = {r["scope"]: r for r in files["totals"]}
    assert _d(totals["unattributed"]["cost_usd"]) == Decimal("10.005")
    # No samples and no active_from: the static rate accrued nothing (no invented cost).
    assert [r["deployment"] for r in files["summary"]] == ["llama"]
    assert _d(files["summary"][0]["cost_usd"]) == 0
    assert _d(totals["total"]["cost_usd"]) == Decimal("10.005")
    unattributed = [r for r in files["daily"] if r["deployment"] == "(unattributed)"]
    assert [(r["day"], r["cost_usd"]) for r in unattributed] == [("2026-10-05", "10.005")]
