"""The month: figures from a real SQLite store, reconciled to the cent with its cost lines."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from auditor.config import Config, parse_config
from auditor.gpu_prices import load_gpu_prices
from auditor.model import CostBasis, CostLine, DeploymentMinute, Finding, GpuMinute, Severity
from auditor.prices import ApiPriceCatalog
from auditor.store import Store
from reports.json_form import report_object
from reports.markdown import render_markdown
from reports.monthly import MonthError, build_month_report, month_window

CONFIG = """
timezone = "{tz}"
[[deployments]]
name = "llama"
model = "llama-3-70b"
gpu_type = "H100"
gpus = [{{ host = "h1", indexes = [0, 1] }}]
compare_to = ["openai:gpt-4o", "together:meta-llama/Llama-3-70b-chat-hf"]
capacity_tokens_per_s = 5000
active_from = 2026-10-01
active_until = 2026-11-01
[deployments.price]
source = "static"
gpu_hourly_usd = 2.40
[deployments.overheads]
engineering_usd_month = 3100

[[deployments]]
name = "qwen"
model = "qwen"
gpu_type = "A100-40GB"
gpu_count = 8
prometheus_matchers = {{ app = "qwen" }}
compare_to = ["openai:gpt-4o-mini"]
[deployments.price]
source = "aws"
tags = {{ deployment = "qwen" }}
"""


def _config(tz: str = "UTC") -> Config:
    return parse_config(CONFIG.format(tz=tz))


def _gpu(minute_ts: int, index: int, deployment: str, util: float | None, sm: float | None) -> GpuMinute:
    return GpuMinute(
        minute_ts=minute_ts,
        host="h1",
        gpu_uuid=f"GPU-{deployment}-{index}",
        gpu_index=index,
        deployment=deployment,
        observed_s=60.0 if index else 45.0,
        util_observed_s=60.0 if util is not None else 0.0,
        idle_s=0.0 if (sm if sm is not None else util or 0) >= 0.05 else 60.0,
        loaded_s=60.0,
        gpu_util=util,
        gpu_util_max=util,
        sm_active=sm,
        energy_j=18_000.0,
        power_mean_w=300.0,
        mem_used_max_bytes=None,
        mem_total_bytes=None,
    )


def _server(minute_ts: int, deployment: str, busy: float | None, tokens: int) -> DeploymentMinute:
    return DeploymentMinute(
        minute_ts=minute_ts,
        deployment=deployment,
        instances=2 if minute_ts % 120 else 1,
        server_observed_s=60.0 if busy is not None else 0.0,
        prompt_tokens=tokens,
        generation_tokens=tokens // 4,
        request_busy_s=60.0 * (busy or 0.0),
        requests_running_mean=None,
        requests_waiting_mean=None,
        kv_cache_mean=None,
        kv_cache_max=None,
        gpu_observed_s=120.0,
        gpu_util=None,
        sm_active=None,
        request_busy=busy,
        throughput_util=None,
    )


def _fill(store: Store, start: datetime, hours: int) -> None:
    """Minutes of both deployments: some with server metrics, some without, some utilization unknown."""
    t0 = int(start.timestamp())
    gpus: list[GpuMinute] = []
    servers: list[DeploymentMinute] = []
    for i in range(hours * 60):
        ts = t0 + 60 * i
        phase = i % 7
        util = None if phase == 3 else (0.02 if phase == 5 else 0.9)
        sm = None if phase in (2, 3) else (0.01 if phase == 5 else 0.4)
        for index in (0, 1):
            gpus.append(_gpu(ts, index, "llama", util, sm))
        gpus.append(_gpu(ts, 0, "qwen", 0.3, None))
        if phase != 4:
            servers.append(
                _server(ts, "llama", None if phase == 6 else (0.0 if phase == 5 else 0.75), 1000 + i)
            )
        if phase in (0, 1):
            servers.append(_server(ts, "qwen", 0.5, 500))
    store.replace_minutes(t0, t0 + hours * 3600, gpus, servers)


def _bill(store: Store, month: tuple[date, date]) -> Decimal:
    lines = [
        CostLine(
            day=date(2026, 10, d),
            source="aws",
            account="123456789012",
            resource="i-1",
            usage_type="BoxUsage:p4d.24xlarge",
            amount_usd=Decimal("527.0000001"),
            deployment="qwen",
            gpu_hours=Decimal(192),
            basis=CostBasis.INVOICED,
        )
        for d in range(1, 32)
    ]
    lines.append(
        CostLine(
            day=date(2026, 10, 9),
            source="aws",
            account="123456789012",
            resource="i-untagged",
            usage_type="BoxUsage:g5.xlarge",
            amount_usd=Decimal("24.135"),
        )
    )
    store.replace_cost_lines("aws", "123456789012", *month, lines)
    return sum((line.amount_usd for line in lines), Decimal(0))


FINDINGS = [
    Finding(
        rule="move-to-api",
        subject="llama",
        severity=Severity.WARNING,
        title="llama: move it",
        text="Move llama to together: saves $3,000.00/month.",
        usd_per_month=Decimal("3000"),
    ),
    Finding(
        rule="runaway-spend",
        subject="fleet",
        severity=Severity.CRITICAL,
        title="fleet burn",
        text="The fleet burns twice its baseline.",
        usd_per_month=None,
    ),
]


@pytest.fixture
def october(store_url: str) -> tuple[Store, Decimal]:
    store = Store.open(store_url)
    _fill(store, datetime(2026, 10, 10, 22, tzinfo=UTC), 6)
    billed = _bill(store, (date(2026, 10, 1), date(2026, 11, 1)))
    return store, billed


def test_the_month_reconciles_to_the_cent(october: tuple[Store, Decimal]) -> None:
    store, billed = october
    config = _config()
    now = datetime(2026, 11, 20, tzinfo=UTC)
    report = build_month_report(
        store=store,
        config=config,
        month="2026-10",
        now=now,
        api_catalog=ApiPriceCatalog(),
        gpu_catalog=load_gpu_prices(),
        findings=FINDINGS,
    )
    assert not report.partial
    llama, qwen = report.deployments
    rated = Decimal("2.40") * 2 * 24 * 31
    assert llama.cost.cost_usd == rated
    assert qwen.cost.cost_usd == Decimal("527.0000001") * 31
    assert report.unattributed_cost_usd == Decimal("24.135")
    assert report.total_cost_usd == billed + rated
    assert llama.cost.cost_usd + qwen.cost.cost_usd + report.unattributed_cost_usd == report.total_cost_usd
    # Days add up to the month, exactly.
    for d in report.deployments:
        assert len(d.days) == 31
        assert sum((day.cost_usd for day in d.days), Decimal(0)) == d.cost.cost_usd
        assert sum(day.prompt_tokens for day in d.days) == d.cost.prompt_tokens
        assert sum((day.billed_gpu_hours for day in d.days), Decimal(0)) == d.cost.hours.billed
    # The JSON is exact (a machine format): 24.135 stays 24.135; the total is the exact sum.
    data = report_object(report)
    assert data["unattributed_cost_usd"] == Decimal("24.135")
    assert data["total_cost_usd"] == billed + rated
    assert data["deployments"][0]["recommendations"] == [
        {
            "rule": "move-to-api",
            "severity": "warning",
            "text": "Move llama to together: saves $3,000.00/month.",
            "usd_per_month": 3000.0,
        }
    ]
    assert data["deployments"][1]["recommendations"] == []
    assert [f.rule for f in report.other_findings] == ["runaway-spend"]
    assert set(data["deployments"][0]["utilization_measures"]) == {
        "gpu_util",
        "sm_active",
        "request_busy",
        "throughput_util",
    }
    assert data["deployments"][1]["utilization_measures"]["sm_active"] is None  # never measured: null
    # Heat map: the 22:00–04:00 UTC hours of Saturday 10 and Sunday 11 October were observed, no other.
    known = {(w, h) for w, row in enumerate(llama.heatmap) for h, v in enumerate(row) if v is not None}
    assert known == {(5, 22), (5, 23), (6, 0), (6, 1), (6, 2), (6, 3)}
    markdown = render_markdown(report)
    assert "| (unattributed) | $24.14 |" in markdown
    assert "Move llama to together" in markdown


def test_a_month_in_progress_ends_now_and_says_so(october: tuple[Store, Decimal]) -> None:
    store, _ = october
    now = datetime(2026, 10, 3, 6, tzinfo=UTC)
    report = build_month_report(
        store=store,
        config=_config(),
        month="2026-10",
        now=now,
        api_catalog=ApiPriceCatalog(),
        gpu_catalog=load_gpu_prices(),
        findings=[],
        only=["llama"],
    )
    assert report.partial and report.end == now
    (llama,) = report.deployments
    assert llama.cost.cost_usd == Decimal("2.40") * 2 * 54
    assert [d.day for d in llama.days] == [date(2026, 10, 1), date(2026, 10, 2), date(2026, 10, 3)]
    assert llama.days[-1].billed_gpu_hours == 12
    assert report_object(report)["partial"] is True
    assert report.unattributed_cost_usd == 0  # with --deployment, the rest of the bill is not this report's


def test_months_follow_the_configured_time_zone(tmp_path: Path) -> None:
    tz = ZoneInfo("Europe/Berlin")
    store = Store.open(f"sqlite:///{tmp_path / 'b.db'}")
    # 30 Sep 22:00 UTC is midnight on 1 October in Berlin; the minute before is September's.
    boundary = datetime(2026, 10, 1, tzinfo=tz)
    before, first = int(boundary.timestamp()) - 60, int(boundary.timestamp())
    store.replace_minutes(
        before,
        first + 60,
        [_gpu(before, 1, "llama", 0.5, None), _gpu(first, 1, "llama", 0.5, None)],
        [_server(before, "llama", 0.5, 7), _server(first, "llama", 0.5, 11)],
    )
    report = build_month_report(
        store=store,
        config=_config("Europe/Berlin"),
        month="2026-10",
        now=datetime(2026, 12, 1, tzinfo=UTC),
        api_catalog=ApiPriceCatalog(),
        gpu_catalog=load_gpu_prices(),
        findings=[],
        only=["llama"],
    )
    assert report.start == boundary
    (llama,) = report.deployments
    assert llama.cost.prompt_tokens == 11  # the September minute is not October's
    assert llama.days[0].day == date(2026, 10, 1) and llama.days[0].prompt_tokens == 11
    # 25 October 2026 has 25 hours in Berlin (summer time ends): billed and charged as such.
    dst = next(d for d in llama.days if d.day == date(2026, 10, 25))
    assert dst.billed_gpu_hours == 50
    assert dst.cost_usd == Decimal("2.40") * 50
    assert llama.cost.hours.billed == 2 * (31 * 24 + 1)
    assert llama.heatmap[3][0] is not None  # Thursday 1 October, 00:00 local


def test_month_window_rejects_what_it_cannot_report() -> None:
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    with pytest.raises(MonthError, match="YYYY-MM"):
        month_window("2026-13", UTC_ZONE, now)
    with pytest.raises(MonthError, match="not begun"):
        month_window("2026-12", UTC_ZONE, now)
    window = month_window("2026-11", UTC_ZONE, now)
    assert window.partial and window.end == now
    assert month_window("2026-10", UTC_ZONE, now).end == window.start


UTC_ZONE = ZoneInfo("UTC")
