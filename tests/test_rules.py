"""Rules on scenario histories written as roll-ups into a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from slack_sdk import WebClient

import rules
from auditor.alert_jobs import alert_cycle, rule_context
from auditor.config import Config, parse_config
from auditor.gpu_prices import load_gpu_prices
from auditor.model import AlertState, Finding, Severity
from auditor.prices import ApiPriceCatalog
from auditor.store import Store
from reports.slack import SlackSender
from tests.scenarios import Fleet, constant, ts, weekday_weekend
from tests.slack_server import SlackServer, start_slack_server

NOW = datetime(2026, 11, 23, tzinfo=UTC)  # a Monday, 00:00
MONTH_H = 720
"""November's real hours in UTC: what "a month" is at NOW."""
WEEK_S = 7 * 86400

RAG = """
timezone = "UTC"
[prices.api."private:rag-api"]
input_mtok_usd = 0.60
output_mtok_usd = 0.60
[prices.api."private:premium"]
input_mtok_usd = 2.50
output_mtok_usd = 10
[rules.runaway_spend]
min_baseline_h = 24
[slack]
channel_warning = "#gpu-cost"
channel_critical = "#gpu-alerts"

[[deployments]]
name = "rag"
model = "llama-3-8b"
gpu_type = "A100-80GB"
gpus = [{ host = "h1", indexes = [0, 1] }]
compare_to = ["private:rag-api"]
active_from = 2026-01-01
[deployments.price]
source = "static"
gpu_hourly_usd = 3.00
"""


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    yield opened
    opened.close()


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    server = start_slack_server()
    yield server
    server.close()


def sender_for(slack: SlackServer) -> SlackSender:
    return SlackSender(client=WebClient(token="xoxb-test", base_url=slack.base_url))  # noqa: S106


def check(config: Config, store: Store, now: datetime, names: list[str] | None = None) -> list[Finding]:
    context = rules.RuleContext(config, store, now, ApiPriceCatalog(config.prices.api), load_gpu_prices())
    return rules.evaluate(context, names)


def by_rule(findings: list[Finding], name: str) -> list[Finding]:
    return [f for f in findings if f.rule == name]


def test_two_a100s_at_18_percent_on_weekdays_move_to_api_and_scale_down_weekends(store: Store) -> None:
    config = parse_config(RAG)
    start = int(NOW.timestamp()) - 3 * WEEK_S
    weekday_tokens = weekday_weekend(1, 0)
    Fleet().add(
        "rag",
        start,
        int(NOW.timestamp()),
        gpus=["GPU-a", "GPU-b"],
        util=weekday_weekend(0.18, 0.005),
        tokens_per_min=lambda m: (2000, 500) if weekday_tokens(m) else (0, 0),
        busy=weekday_weekend(0.30, 0.0),
    ).write(store)

    findings = check(config, store, NOW)
    (move,) = by_rule(findings, "move-to-api")
    # 7 days: TCO 2 GPUs × $3 × 168 h = $1,008; the API: 5 weekdays × 1,440 min × 2,500 tokens × $0.60/M.
    api_usd = Decimal(5 * 1440 * 2500) * Decimal("0.60") / 1_000_000
    assert api_usd == Decimal("10.8")
    # Projected over November 2026's 720 real hours, not a fixed 730.
    assert move.usd_per_month == (Decimal(1008) - api_usd) * 720 / 168
    assert move.severity is Severity.WARNING
    assert move.text.startswith("Move rag to private:rag-api: saves $4,273.71/month")
    assert ("utilization (gpu_util)", "13.0%") in move.figures
    assert move.window is not None and move.window.coverage == 1.0
    assert (
        move.basis is not None and "at the last 7 days' rate" in move.basis and "720-hour month" in move.basis
    )
    assert move.monthly_cost_usd == Decimal(2 * 3 * 720)

    # Scaling down on weekends excludes moving to the API: shown as the alternative, not a second saving.
    assert not by_rule(findings, "off-hours-idle")
    (off,) = move.alternatives
    # Saturday and Sunday, 48 h a week idle in each of 3 weeks: 48 h × 2 GPUs × $3 a week, over 720 h.
    assert off.rule == "off-hours-idle" and off.usd_per_month == Decimal(48 * 2 * 3) * 720 / 168
    assert "Sat 00:00–Mon 00:00" in off.text
    assert not by_rule(findings, "self-host-pays")
    assert [f for f in findings if f.verdict] == [move]  # one action for the one deployment
    stake = rules.at_stake(findings)
    assert stake.usd_per_month == move.usd_per_month <= stake.cost_usd_per_month == Decimal(4320)


def test_75_percent_sustained_keeps_self_hosting(store: Store) -> None:
    config = parse_config(RAG.replace('compare_to = ["private:rag-api"]', 'compare_to = ["private:premium"]'))
    Fleet().add(
        "rag",
        int(NOW.timestamp()) - WEEK_S,
        int(NOW.timestamp()),
        gpus=["GPU-a", "GPU-b"],
        util=constant(0.75),
        tokens_per_min=lambda _m: (80_000, 20_000),
        busy=constant(0.9),
    ).write(store)
    findings = check(config, store, NOW)
    (pays,) = by_rule(findings, "self-host-pays")
    minutes = 7 * 1440
    api_usd = (Decimal(minutes * 80_000) * Decimal("2.50") + Decimal(minutes * 20_000) * 10) / 1_000_000
    # The margin is a figure, not money at stake: never in a total.
    assert pays.usd_per_month is None
    margin = (api_usd - Decimal(1008)) * 720 / 168
    assert ("margin a month", f"${margin:,.2f}") in pays.figures
    assert rules.at_stake(findings).usd_per_month == 0
    assert pays.severity is Severity.INFO
    assert pays.text.startswith("Keep self-hosting rag:")
    assert not by_rule(findings, "move-to-api")
    assert not by_rule(findings, "optimize")


def test_too_little_data_gives_no_verdict_and_never_resolves_an_alert(store: Store) -> None:
    config = parse_config(RAG)
    now_ts = int(NOW.timestamp())
    Fleet().add(
        "rag",
        now_ts - 86400,
        now_ts,
        gpus=["GPU-a", "GPU-b"],
        util=constant(0.02),
        tokens_per_min=lambda _m: (10, 10),
        busy=constant(0.0),
    ).write(store)
    findings = check(config, store, NOW, ["move-to-api", "off-hours-idle"])
    assert len(findings) == 2
    assert all(not f.verdict and f.usd_per_month is None for f in findings)
    move = by_rule(findings, "move-to-api")[0]
    assert "only 14.3% of the window's 336.0 billed GPU-hours were observed" in move.text
    assert "unknown, not idle" in move.text
    assert "only 0 of the last 3 weeks" in by_rule(findings, "off-hours-idle")[0].text


def test_runaway_autoscaler_fires_within_15_minutes_and_exactly_once(
    store: Store, slack: SlackServer
) -> None:
    config = parse_config(
        RAG
        + """
[[deployments]]
name = "batch"
model = "llama-3-70b"
gpu_type = "H100"
gpu_count = 8
prometheus_matchers = { app = "batch" }
[deployments.price]
source = "static"
gpu_hourly_usd = 2.00
"""
    )
    onset = ts(2026, 11, 21, 10)  # a Saturday
    eight = [f"GPU-{i}" for i in range(8)]
    sixty_four = [f"GPU-{i}" for i in range(64)]
    Fleet().add("batch", onset - WEEK_S, onset, gpus=eight, util=constant(0.5)).write(store)
    sender = sender_for(slack)
    times = [onset + 300 * i for i in range(1, 25)] + [onset + 7200 + 3600 * i for i in range(1, 40)]
    written = onset
    fired_at = None
    for now_ts in times:
        Fleet().add("batch", written, now_ts, gpus=sixty_four, util=constant(0.5)).write(store)
        written = now_ts
        now = datetime.fromtimestamp(now_ts, UTC)
        cycle = alert_cycle(config, store, now, sender, names=["runaway-spend"])
        if fired_at is None and cycle.notifications:
            fired_at = now_ts
    assert fired_at is not None and fired_at - onset <= 15 * 60
    posts = slack.posted()
    assert len(posts) == 1
    body = posts[0].json()
    assert body["channel"] == "#gpu-alerts"
    assert "64 GPUs burning $128.00/h" in body["text"]
    (alert,) = [a for a in store.alerts() if a.rule == "runaway-spend"]
    assert alert.state is AlertState.FIRING and alert.subject == "batch"


def test_utilization_oscillating_around_40_percent_does_not_flap(store: Store, slack: SlackServer) -> None:
    config = parse_config(RAG)
    sender = sender_for(slack)
    now_ts = int(NOW.timestamp())
    states = []
    for step, util in enumerate([0.38, 0.42, 0.39, 0.44, 0.41, 0.37, 0.43]):
        end = now_ts + step * 3600
        Fleet().add(
            "rag",
            end - WEEK_S,
            end,
            gpus=["GPU-a", "GPU-b"],
            util=constant(util),
            tokens_per_min=lambda _m: (100, 100),
            busy=constant(0.5),
        ).write(store)
        alert_cycle(config, store, datetime.fromtimestamp(end, UTC), sender, names=["move-to-api"])
        states.append(store.alerts()[0].state)
    assert states == [AlertState.FIRING] * 7
    assert len(slack.posted()) == 1  # one firing message, no repeat

    end = now_ts + 10 * 3600
    Fleet().add(
        "rag",
        end - WEEK_S,
        end,
        gpus=["GPU-a", "GPU-b"],
        util=constant(0.50),
        tokens_per_min=lambda _m: (100, 100),
        busy=constant(0.5),
    ).write(store)
    alert_cycle(config, store, datetime.fromtimestamp(end, UTC), sender, names=["move-to-api"])
    assert store.alerts()[0].state is AlertState.RESOLVED
    # A recommendation that no longer holds is tracked in the digest, not paged.
    assert len(slack.posted()) == 1


def test_idle_loaded_gpu_and_saturation(store: Store) -> None:
    config = parse_config(RAG)
    now_ts = int(NOW.timestamp())
    Fleet().add("rag", now_ts - 5 * 3600, now_ts, gpus=["GPU-a"], util=constant(0.01)).write(store)
    (idle,) = [f for f in check(config, store, NOW, ["idle-loaded"]) if f.verdict]
    assert idle.subject == "rag" and idle.merged_subjects == ("GPU-a",)
    # Priced on the idle hours seen: 5 h idle of 5 h observed, at $3 a GPU-hour over 720 h.
    assert idle.usd_per_month == Decimal(3) * 720
    assert idle.text.startswith("Unload the model from h1 GPU 0")

    Fleet().add(
        "rag",
        now_ts - 20 * 60,
        now_ts,
        gpus=["GPU-a", "GPU-b"],
        util=constant(0.95),
        tokens_per_min=lambda _m: (1000, 1000),
        busy=constant(1.0),
        waiting=12.0,
        kv_cache=0.97,
    ).write(store)
    (saturated,) = check(config, store, NOW, ["saturation"])
    assert saturated.severity is Severity.WARNING and saturated.usd_per_month is None
    assert "97.0% full" in saturated.text


def test_optimize_and_below_breakeven(store: Store) -> None:
    config = parse_config(
        RAG.replace(
            'gpus = [{ host = "h1", indexes = [0, 1] }]', 'gpu_count = 8\ngpus = [{ host = "h1" }]'
        ).replace(
            'compare_to = ["private:rag-api"]',
            'compare_to = ["private:rag-api"]\ncapacity_tokens_per_s = 10000',
        )
    )
    Fleet().add(
        "rag",
        int(NOW.timestamp()) - WEEK_S,
        int(NOW.timestamp()),
        gpus=[f"GPU-{i}" for i in range(8)],
        util=constant(0.45),
        tokens_per_min=lambda _m: (30_000, 30_000),
        busy=constant(0.6),
    ).write(store)
    findings = check(config, store, NOW, ["optimize", "below-breakeven"])
    # Below break-even is a move to the API, and excludes consolidating: one recommended, one alternative.
    (below,) = [f for f in findings if f.verdict]
    assert below.rule == "move-to-api" and below.rules == ("below-breakeven",)
    # 1,000 tokens/s of 10,000 = 10%; break-even $24/h ÷ (10,000 × 3,600 × $0.60/M) = 111%: never.
    assert "serves 10.0% of its capacity, it cannot break even at any load" in below.text
    (optimize,) = below.alternatives
    # 8 GPUs at 45% fit on ceil(8 × 0.45 / 0.60) = 6: two GPUs freed at $3/h, over November's 720 h.
    assert optimize.rule == "optimize" and optimize.usd_per_month == 2 * Decimal(3) * 720
    assert "from 8 to 6 GPUs" in optimize.text
    assert below.usd_per_month is not None and below.usd_per_month > optimize.usd_per_month


def test_rule_context_knows_what_fires(store: Store) -> None:
    config = parse_config(RAG)
    assert rule_context(config, store, NOW).firing == frozenset()
    with pytest.raises(ValueError, match="unknown rule"):
        check(config, store, NOW, ["move-to-mars"])
