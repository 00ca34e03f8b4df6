"""The money audit (issue 9): each finding of the audit is a test here, on the one costing path.

Stores are filled with minute roll-ups by hand (the store's own write path), so each figure can be
worked out on paper: a static $2.40/GPU-hour deployment on 2 GPUs, compared with one API priced in
the config.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import rules
from auditor.analysis import cost_window
from auditor.config import Config, parse_config
from auditor.costing import DeploymentCost, monthly_saving
from auditor.exporter import deployment_figures, tokens_per_s
from auditor.gpu_prices import load_gpu_prices
from auditor.model import CostLine, DeploymentMinute, GpuMinute
from auditor.prices import ApiPriceCatalog
from auditor.store import Store
from reports.charts import deployment_charts, heatmaps_png
from reports.csv_export import write_csv
from reports.html import render_html
from reports.json_form import report_object
from reports.labels import report_state, total_line
from reports.monthly import MonthReport, NoDataError, build_month_report
from rules.contract import RuleContext

CONFIG = """
timezone = "{tz}"
[[deployments]]
name = "llama"
model = "llama-3-70b"
gpu_type = "H100"
gpus = [{{ host = "h1", indexes = [0, 1] }}]
compare_to = ["cheap-api"]
capacity_tokens_per_s = 5000
{active}
[deployments.price]
source = "static"
gpu_hourly_usd = {rate}
[deployments.overheads]
engineering_usd_month = {overhead}

[[deployments]]
name = "qwen"
model = "qwen"
gpu_type = "A100-40GB"
gpu_count = 8
prometheus_matchers = {{ app = "qwen" }}
[deployments.price]
source = "aws"
tags = {{ deployment = "qwen" }}

[rules.move_to_api]
window_days = {window_days}

[prices.api.cheap-api]
provider = "cheap"
input_mtok_usd = 0.10
output_mtok_usd = 0.40
"""


def _config(
    tz: str = "UTC", active: str = "", window_days: int = 7, rate: object = "2.40", overhead: object = 744
) -> Config:
    return parse_config(
        CONFIG.format(tz=tz, active=active, window_days=window_days, rate=rate, overhead=overhead)
    )


def _minutes(
    start: datetime, end: datetime, *, tokens: int = 6000
) -> tuple[list[GpuMinute], list[DeploymentMinute]]:
    """Both GPUs observed every minute of [start, end) at 10% activity, a server serving `tokens` a minute."""
    gpus, servers = [], []
    ts, stop = int(start.timestamp()), int(end.timestamp())
    while ts < stop:
        for index in (0, 1):
            gpus.append(
                GpuMinute(
                    minute_ts=ts,
                    host="h1",
                    gpu_uuid=f"GPU-{index}",
                    gpu_index=index,
                    deployment="llama",
                    observed_s=60.0,
                    util_observed_s=60.0,
                    idle_s=0.0,
                    loaded_s=60.0,
                    gpu_util=0.1,
                    gpu_util_max=0.1,
                    sm_active=0.1,
                    energy_j=None,
                    power_mean_w=None,
                    mem_used_max_bytes=None,
                    mem_total_bytes=None,
                )
            )
        servers.append(
            DeploymentMinute(
                minute_ts=ts,
                deployment="llama",
                instances=1,
                server_observed_s=60.0,
                prompt_tokens=tokens * 5 // 6,
                generation_tokens=tokens // 6,
                request_busy_s=6.0,
                requests_running_mean=None,
                requests_waiting_mean=None,
                kv_cache_mean=None,
                kv_cache_max=None,
                gpu_observed_s=120.0,
                gpu_util=0.1,
                sm_active=0.1,
                request_busy=0.1,
                throughput_util=None,
            )
        )
        ts += 60
    return gpus, servers


def _fill(store: Store, start: datetime, end: datetime, **kwargs: int) -> None:
    gpus, servers = _minutes(start, end, **kwargs)
    store.replace_minutes(int(start.timestamp()), int(end.timestamp()), gpus, servers)


def _report(store: Store, config: Config, month: str, now: datetime, **kwargs: object) -> MonthReport:
    return build_month_report(
        store=store,
        config=config,
        month=month,
        now=now,
        api_catalog=ApiPriceCatalog(config.prices.api),
        gpu_catalog=load_gpu_prices(),
        findings=[],
        **kwargs,  # type: ignore[arg-type]
    )


def _llama(report: MonthReport) -> DeploymentCost:
    return next(d.cost for d in report.deployments if d.name == "llama")


# -- real hours ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "month", "hours"),
    [
        ("Europe/Berlin", "2026-10", 745),
        ("Europe/Berlin", "2026-03", 743),
        ("America/New_York", "2026-11", 721),
    ],
)
def test_a_month_has_its_real_hours(store_url: str, tz: str, month: str, hours: int) -> None:
    config = _config(tz, active="active_from = 2020-01-01\nactive_until = 2030-01-01")
    report = _report(Store.open(store_url), config, month, datetime(2027, 1, 1, tzinfo=UTC))
    llama = _llama(report)
    assert llama.window_hours == hours == llama.month_hours == llama.active_hours
    assert llama.cost_usd == Decimal("2.40") * 2 * hours
    assert llama.hours.billed == 2 * hours


def test_breakeven_volume_uses_the_calendar_month_not_730(store_url: str) -> None:
    store = Store.open(store_url)
    october = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
    _fill(store, *october)
    llama = _llama(_report(store, _config(), "2026-10", datetime(2026, 12, 1, tzinfo=UTC)))
    (api,) = llama.apis
    assert api.blended_usd_per_token is not None and api.breakeven_tokens_per_month is not None
    monthly_tco = llama.tco_usd / 744 * 744
    assert api.breakeven_tokens_per_month == monthly_tco / api.blended_usd_per_token


# -- cost only where GPUs were paid for ----------------------------------------------------------


def test_a_month_without_data_is_no_data_not_a_full_bill(store_url: str) -> None:
    store = Store.open(store_url)
    _fill(store, datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 2, tzinfo=UTC))
    with pytest.raises(NoDataError, match="no data for 2019-03"):
        _report(store, _config(), "2019-03", datetime(2026, 12, 1, tzinfo=UTC))
    # Before its first sample, a static rate accrues nothing.
    window = cost_window(
        store,
        _config(),
        datetime(2026, 9, 1, tzinfo=UTC),
        datetime(2026, 10, 1, tzinfo=UTC),
        ApiPriceCatalog(_config().prices.api),
        load_gpu_prices(),
    ).window
    assert all(d.cost_usd == 0 and d.active_start is None for d in window.deployments)


def test_cost_runs_over_the_active_period_only(store_url: str) -> None:
    store = Store.open(store_url)
    _fill(store, datetime(2026, 10, 10, 6, tzinfo=UTC), datetime(2026, 10, 12, 18, tzinfo=UTC))
    llama = _llama(_report(store, _config(), "2026-10", datetime(2026, 12, 1, tzinfo=UTC)))
    assert llama.active_start == datetime(2026, 10, 10, 6, tzinfo=UTC)
    assert llama.active_end == datetime(2026, 10, 12, 18, tzinfo=UTC)
    assert llama.cost_usd == Decimal("2.40") * 2 * 60
    assert llama.overhead_usd == Decimal(744) * 60 / 744
    # Configured, the active period wins over the samples: paid for even where nothing was observed.
    configured = _config(active="active_from = 2026-10-10\nactive_until = 2026-10-20")
    paid = _llama(_report(store, configured, "2026-10", datetime(2026, 12, 1, tzinfo=UTC)))
    assert paid.cost_usd == Decimal("2.40") * 2 * 240


def test_a_bill_priced_deployment_without_lines_has_no_billing_data(store_url: str) -> None:
    store = Store.open(store_url)
    _fill(store, datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 2, tzinfo=UTC))
    report = _report(store, _config(), "2026-10", datetime(2026, 12, 1, tzinfo=UTC))
    qwen = next(d for d in report_object(report)["deployments"] if d["name"] == "qwen")
    assert qwen["cost_usd"] is None and qwen["tco_usd"] is None and not qwen["cost_known"]


# -- coverage ------------------------------------------------------------------------------------


def test_unobserved_days_are_a_gap_not_zero_tokens(store_url: str) -> None:
    store = Store.open(store_url)
    config = _config(active="active_from = 2026-10-01\nactive_until = 2026-11-01")
    _fill(store, datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 29, tzinfo=UTC))  # 3 days missing
    report = _report(store, config, "2026-10", datetime(2026, 12, 1, tzinfo=UTC))
    llama = _llama(report)
    assert not report.complete and "not complete" in report_state(report)
    assert llama.coverage == Decimal(28 * 24) / 744
    assert llama.cost_usd == Decimal("2.40") * 2 * 744  # still paid for
    observed_cost = llama.cost_usd * Decimal(28 * 24) / 744
    assert llama.observed_cost_usd == observed_cost
    assert llama.cost_per_mtok_usd == observed_cost * 1_000_000 / llama.tokens
    (api,) = llama.apis
    saving = monthly_saving(llama, api)
    assert saving.usd == llama.tco_usd * Decimal(28 * 24) / 744 - api.usd
    assert not saving.per_month and saving.basis == "2026-10"
    missing = [day for d in report.deployments if d.name == "llama" for day in d.days if not day.tokens_known]
    assert [day.day for day in missing] == [date(2026, 10, 29), date(2026, 10, 30), date(2026, 10, 31)]
    assert all(day.api_equivalents == () and day.cost_per_mtok_usd is None for day in missing)


def test_a_fully_observed_month_is_complete(store_url: str) -> None:
    store = Store.open(store_url)
    _fill(store, datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
    config = _config(active="active_from = 2026-10-01\nactive_until = 2026-11-01")
    report = _report(store, config, "2026-10", datetime(2026, 12, 1, tzinfo=UTC))
    assert report.complete and report_state(report) == "complete month, UTC"


# -- one savings figure --------------------------------------------------------------------------


def test_the_rules_saving_is_the_reports_for_the_same_window(store_url: str) -> None:
    store = Store.open(store_url)
    october = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
    _fill(store, *october)
    config = _config(window_days=31)  # the rule's window: the 31 days to the end of October
    report = _report(store, config, "2026-10", datetime(2026, 12, 1, tzinfo=UTC))
    llama = _llama(report)
    (api,) = llama.apis
    context = RuleContext(
        config=config,
        store=store,
        now=october[1],
        api_catalog=ApiPriceCatalog(config.prices.api),
        gpu_catalog=load_gpu_prices(),
    )
    [finding] = [f for f in rules.evaluate(context, ["move-to-api"]) if f.subject == "llama"]
    assert finding.usd_per_month == monthly_saving(llama, api).usd
    data = report_object(report)["deployments"][0]["api_equivalents"][0]
    assert data["savings_usd"] == monthly_saving(llama, api).usd  # exact: JSON is a machine format
    # Over the last 7 days instead, the rule projects, and says so.
    week = RuleContext(
        config=_config(),
        store=store,
        now=october[1],
        api_catalog=ApiPriceCatalog(config.prices.api),
        gpu_catalog=load_gpu_prices(),
    )
    [projected] = [f for f in rules.evaluate(week, ["move-to-api"]) if f.subject == "llama"]
    assert projected.basis is not None
    assert "at the last 7 days' rate" in projected.basis and "744-hour month" in projected.basis


def test_a_month_to_date_saving_says_so_far(store_url: str) -> None:
    store = Store.open(store_url)
    _fill(store, datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 10, tzinfo=UTC))
    report = _report(store, _config(), "2026-10", datetime(2026, 10, 10, tzinfo=UTC))
    llama = _llama(report)
    saving = monthly_saving(llama, llama.apis[0])
    assert saving.basis == "2026-10 so far" and not saving.per_month
    assert "so far" in total_line(report)


# -- labels --------------------------------------------------------------------------------------


def test_a_partial_month_ends_in_the_configured_zone(store_url: str) -> None:
    store = Store.open(store_url)
    config = _config("America/Los_Angeles")
    _fill(store, datetime(2026, 10, 2, tzinfo=UTC), datetime(2026, 10, 3, tzinfo=UTC))
    report = _report(store, config, "2026-10", datetime(2026, 10, 14, 16, 30, tzinfo=UTC))
    assert "up to 2026-10-14 09:30 America/Los_Angeles" in report_state(report)


def test_a_filtered_report_says_so_and_claims_no_reconciliation(store_url: str, tmp_path: Path) -> None:
    store = Store.open(store_url)
    _fill(store, datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 2, tzinfo=UTC))
    day = date(2026, 10, 5)
    store.replace_cost_lines(
        "aws", "1", day, day + timedelta(days=1), [CostLine(day, "aws", "1", "i-x", "Box", Decimal(10))]
    )
    report = _report(store, _config(), "2026-10", datetime(2026, 12, 1, tzinfo=UTC), only=["llama"])
    line = total_line(report)
    assert line.startswith("filtered to llama (of $125.20 total)") and "reconciles" not in line
    assert report.stem == "gpu-report-2026-10-llama"
    assert report_object(report)["unattributed_cost_usd"] is None
    written = write_csv(report, tmp_path, report.stem)
    assert all(p.name.startswith("gpu-report-2026-10-llama-") for p in written)


# -- finance CSV ---------------------------------------------------------------------------------


def test_displayed_parts_sum_to_the_displayed_total(store_url: str) -> None:
    store = Store.open(store_url)
    _fill(store, datetime(2026, 10, 1, 0, 0, 7, tzinfo=UTC), datetime(2026, 10, 1, 1, 0, 7, tzinfo=UTC))
    days = [date(2026, 10, d) for d in (3, 4, 5)]
    lines = [CostLine(d, "aws", "1", "i-x", "Box", Decimal("24.144")) for d in days]
    store.replace_cost_lines("aws", "1", days[0], days[-1] + timedelta(days=1), lines)
    data = report_object(_report(store, _config(), "2026-10", datetime(2026, 12, 1, tzinfo=UTC)))
    parts = [d["cost_usd"] for d in data["deployments"] if d["cost_usd"] is not None]
    assert sum(parts, Decimal(0)) + data["unattributed_cost_usd"] == data["total_cost_usd"]


# -- live figures --------------------------------------------------------------------------------


def test_live_cost_per_mtok_one_minute_after_start(store_url: str) -> None:
    store = Store.open(store_url)
    start = datetime(2026, 10, 10, 12, tzinfo=UTC)
    _fill(store, start, start + timedelta(minutes=2), tokens=600_000)
    config = _config()
    [llama, _] = deployment_figures(
        store, config, start + timedelta(minutes=3), ApiPriceCatalog(config.prices.api), load_gpu_prices()
    )
    # Two minutes of two GPUs at $2.40/h for 1.2M tokens: $0.16 → $0.1333/Mtok, not the whole hour's cost.
    expected = Decimal("2.40") * 2 * 2 / 60 * 1_000_000 / 1_200_000
    got = llama.cost_per_mtok_usd["1h"]
    assert got is not None and abs(got - expected) < Decimal("1e-20")
    assert llama.cost_rate_usd_per_h is not None and abs(
        llama.cost_rate_usd_per_h - Decimal("4.80")
    ) < Decimal("1e-20")


def test_tokens_per_s_divides_by_observed_seconds_without_the_minute_in_progress(store_url: str) -> None:
    store = Store.open(store_url)
    start = datetime(2026, 10, 10, 12, tzinfo=UTC)
    gpus, servers = _minutes(start, start + timedelta(minutes=6), tokens=57_600)
    # Each minute observed for 48 s (a scrape lost), serving 1,200 tokens/s while observed.
    servers = [
        DeploymentMinute(**{**{f: getattr(m, f) for f in m.__dataclass_fields__}, "server_observed_s": 48.0})
        for m in servers
    ]
    store.replace_minutes(int(start.timestamp()), int(start.timestamp()) + 360, gpus, servers)
    now = start + timedelta(minutes=5, seconds=20)  # the sixth minute is still being rolled up
    assert tokens_per_s(store, "llama", now.timestamp()) == pytest.approx(1200.0)


def test_status_on_an_empty_store_shows_no_idle_cost(store_url: str) -> None:
    config = _config()
    [llama, _] = deployment_figures(
        Store.open(store_url),
        config,
        datetime(2026, 10, 10, tzinfo=UTC),
        ApiPriceCatalog(config.prices.api),
        load_gpu_prices(),
    )
    assert llama.idle_cost_month_usd is None and llama.cost_rate_usd_per_h is None
    assert llama.cost_per_mtok_usd == {"1h": None, "1d": None}


def test_a_zone_with_daylight_saving_splits_days_exactly(store_url: str) -> None:
    tz = ZoneInfo("Europe/Berlin")
    config = _config("Europe/Berlin", active="active_from = 2026-10-01\nactive_until = 2026-11-01")
    report = _report(Store.open(store_url), config, "2026-10", datetime(2026, 12, 1, tzinfo=UTC))
    [d] = [d for d in report.deployments if d.name == "llama"]
    by_day = {day.day: day.billed_gpu_hours for day in d.days}
    assert by_day[date(2026, 10, 25)] == 2 * 25 and sum(by_day.values()) == 2 * 745
    assert d.cost.start == datetime(2026, 10, 1, tzinfo=tz)


# -- charts --------------------------------------------------------------------------------------


def test_charts_say_their_basis_and_are_readable(store_url: str) -> None:
    store = Store.open(store_url)
    _fill(store, datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 4, tzinfo=UTC))
    report = _report(store, _config(), "2026-10", datetime(2026, 12, 1, tzinfo=UTC))
    html = render_html(report)
    assert len(html.encode()) < 1_000_000
    [llama] = [d for d in report.deployments if d.name == "llama"]
    daily, heat, mtok, idle = deployment_charts(llama)
    assert "basis: TCO" in daily and "basis: TCO" in mtok  # the savings' basis
    assert "basis: raw compute" in idle and "measure: sm_active" in heat
    for svg in (daily, heat, mtok, idle):
        sizes = [float(size) for size in re.findall(r"font-size: ([\d.]+)px", svg)]
        assert sizes and min(sizes) >= 11
        assert "http://" not in svg.replace("http://www.w3.org", "")
    assert heatmaps_png([("llama", llama.heatmap)], "week").startswith(b"\x89PNG")


def test_the_active_period_outlives_the_minutes_retention(store_url: str) -> None:
    store = Store.open(store_url)
    start, end = datetime(2026, 10, 10, 6, 7, tzinfo=UTC), datetime(2026, 10, 12, 18, 3, tzinfo=UTC)
    _fill(store, start, end)
    assert store.activity_bounds(["llama"]) == {"llama": (int(start.timestamp()), int(end.timestamp()))}
    before = _llama(_report(store, _config(), "2026-10", datetime(2026, 12, 1, tzinfo=UTC)))
    # The minutes go after their retention; the quarter-hour tier keeps the period, to its quarter-hour.
    store.prune(datetime(2026, 12, 1, tzinfo=UTC).timestamp(), 3600, 400 * 86400, 86400)
    assert store.deployment_minutes(start.timestamp(), end.timestamp()) == []
    first, last = store.activity_bounds(["llama"])["llama"]
    assert first == int(datetime(2026, 10, 10, 6, tzinfo=UTC).timestamp())
    assert last == int(datetime(2026, 10, 12, 18, 15, tzinfo=UTC).timestamp())
    after = _llama(_report(store, _config(), "2026-10", datetime(2026, 12, 1, tzinfo=UTC)))
    assert after.tokens == before.tokens and after.cost_usd > 0
