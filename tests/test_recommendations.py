"""One action per deployment, dollars that mean what they say, thresholds at their boundaries: the real
rules on scenario histories in a real store."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

import rules
from auditor.config import Config, parse_config
from auditor.gpu_prices import load_gpu_prices
from auditor.model import Action, Finding
from auditor.prices import ApiPriceCatalog
from auditor.store import Store
from reports.json_form import report_object
from reports.markdown import render_markdown
from reports.monthly import build_month_report
from rules.common import costed, fires_above, fires_below
from tests.scenarios import Fleet, constant, ts, weekday_weekend
from tests.test_rules import RAG

WEEK_S = 7 * 86400
H100_FLEET = """
timezone = "UTC"
[prices.api."private:llama-api"]
input_mtok_usd = 0.60
output_mtok_usd = 0.60

[[deployments]]
name = "llama"
model = "llama-3-70b"
gpu_type = "H100"
gpus = [{ host = "h1", indexes = [0, 1, 2, 3, 4, 5, 6, 7] }]
compare_to = ["private:llama-api"]
[deployments.price]
source = "static"
gpu_hourly_usd = 6.90
"""


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    yield opened
    opened.close()


def context(
    config: Config, store: Store, now: datetime, firing: frozenset[tuple[str, str]] = frozenset()
) -> rules.RuleContext:
    return rules.RuleContext(
        config, store, now, ApiPriceCatalog(config.prices.api), load_gpu_prices(), firing=firing
    )


def h100_weekdays(store: Store) -> datetime:
    """Three weeks of 8 H100s at 18% on weekdays, idle at weekends, to a Saturday 06:00 (returned)."""
    now = datetime(2026, 11, 28, 6, tzinfo=UTC)  # every GPU idle for the last 6 h
    busy = weekday_weekend(1, 0)
    Fleet().add(
        "llama",
        int(now.timestamp()) - 3 * WEEK_S,
        int(now.timestamp()),
        gpus=[f"GPU-{i}" for i in range(8)],
        util=weekday_weekend(0.18, 0.005),
        tokens_per_min=lambda m: (40_000, 10_000) if busy(m) else (0, 0),
        busy=weekday_weekend(0.30, 0.0),
    ).write(store)
    return now


def test_the_18_percent_weekday_h100_case_claims_each_dollar_once(store: Store) -> None:
    # Issue 12: an 8×H100 deployment (~$40k/month) at 18% on weekdays, idle at weekends. Before, the list
    # claimed ~$124k "at stake": below-breakeven and move-to-api each, every idle GPU its whole month.
    config = parse_config(H100_FLEET)
    now = h100_weekdays(store)
    findings = rules.evaluate(context(config, store, now))
    verdicts = [f for f in findings if f.verdict]
    (move,) = verdicts  # one action for the one deployment
    assert move.action is Action.MOVE_TO_API and move.subject == "llama"
    assert {a.rule for a in move.alternatives} == {"off-hours-idle"}  # the weekend is a known pattern
    cost = Decimal("6.90") * 8 * 720
    assert move.monthly_cost_usd == cost
    stake = rules.at_stake(findings)
    assert stake.usd_per_month == move.usd_per_month
    assert stake.usd_per_month <= stake.cost_usd_per_month == cost
    line = rules.at_stake_line(stake)
    assert line.startswith(f"Total at stake: ${move.usd_per_month:,.2f}/month across 1 deployment of the $")
    assert "alternatives not added" in line


def test_idle_gpus_are_priced_on_the_idle_hours_seen(store: Store) -> None:
    config = parse_config(RAG)
    now_ts = int(datetime(2026, 11, 25, 12, tzinfo=UTC).timestamp())  # a Wednesday
    # A week of work, then the GPU idle with its model loaded for the last 6 hours: not a pattern.
    idle_from = now_ts - 6 * 3600
    Fleet().add(
        "rag", now_ts - WEEK_S, now_ts, gpus=["GPU-a"], util=lambda m: 0.01 if m >= idle_from else 0.5
    ).write(store)
    now = datetime.fromtimestamp(now_ts, UTC)
    (idle,) = [f for f in rules.evaluate(context(config, store, now), ["idle-loaded"]) if f.verdict]
    assert idle.subject == "rag" and idle.merged_subjects == ("GPU-a",)
    # 6 idle hours of 168 observed, at $3 a GPU-hour, over November's 720 hours: not the GPU's $2,160.
    assert idle.usd_per_month == Decimal("6.00") / Decimal("168.00") * 720 * 3
    assert idle.text.startswith("Unload the model from h1 GPU 0 or give it work: $77.14/month")
    assert (
        idle.basis is not None and "6.00 h idle-loaded of 168.00 h observed in the last 7 days" in idle.basis
    )
    assert idle.window is not None and idle.window.coverage == 1.0


def test_idleness_that_repeats_is_a_pattern_not_a_page(store: Store) -> None:
    config = parse_config(RAG)
    saturday = ts(2026, 11, 28, 6)
    Fleet().add(
        "rag",
        saturday - 2 * WEEK_S,
        saturday,
        gpus=["GPU-a", "GPU-b"],
        util=weekday_weekend(0.4, 0.01),
    ).write(store)
    now = datetime.fromtimestamp(saturday, UTC)
    # Idle last Saturday at the same hours, with a week of work since: the weekend pattern, no alert.
    assert not [f for f in rules.evaluate(context(config, store, now), ["idle-loaded"]) if f.verdict]
    # A week earlier, the first weekend seen was news.
    first = datetime.fromtimestamp(saturday - WEEK_S, UTC)
    assert [f for f in rules.evaluate(context(config, store, first), ["idle-loaded"]) if f.verdict]
    # A GPU idle without a break since then is no pattern: still reported.
    Fleet().add("rag", saturday - 8 * 86400, saturday, gpus=["GPU-a"], util=constant(0.01)).write(store)
    (idle,) = [f for f in rules.evaluate(context(config, store, now), ["idle-loaded"]) if f.verdict]
    assert idle.merged_subjects == ("GPU-a",)


def test_threshold_helpers_are_strict_and_hold_at_the_leave_value() -> None:
    assert not fires_below(0.40, 0.40, 0.45, firing=False)
    assert fires_below(math.nextafter(0.40, 0), 0.40, 0.45, firing=False)
    assert fires_below(0.45, 0.40, 0.45, firing=True)  # clears only strictly above 45%
    assert not fires_below(math.nextafter(0.45, 1), 0.40, 0.45, firing=True)
    assert not fires_above(0.65, 0.65, 0.60, firing=False)
    assert fires_above(0.60, 0.65, 0.60, firing=True)  # clears only strictly under 60%
    assert not fires_above(math.nextafter(0.60, 0), 0.65, 0.60, firing=True)


def _utilization(config: Config, store: Store, now: datetime) -> float:
    (dc,) = costed(context(config, store, now), 7)
    assert dc.utilization is not None
    return dc.utilization


def _fires(config: Config, store: Store, now: datetime, rule: str, firing: bool) -> bool:
    keys = frozenset({(rule, "rag")}) if firing else frozenset()
    found: list[Finding] = rules.evaluate(context(config, store, now, keys), [rule])
    return any(f.verdict for f in found)


def test_move_to_api_and_self_host_pays_at_their_exact_thresholds(store: Store) -> None:
    now = datetime(2026, 11, 23, tzinfo=UTC)
    end = int(now.timestamp())
    Fleet().add(
        "rag",
        end - WEEK_S,
        end,
        gpus=["GPU-a", "GPU-b"],
        util=constant(0.40),
        tokens_per_min=lambda _m: (80_000, 20_000),  # cheaper on rag-api, dearer on premium
        busy=constant(0.5),
    ).write(store)
    u = _utilization(parse_config(RAG), store, now)

    def move(below: float, leave: float) -> Config:
        return parse_config(RAG + f"\n[rules.move_to_api]\nbelow = {below!r}\nleave_above = {leave!r}\n")

    assert not _fires(move(u, 0.9), store, now, "move-to-api", firing=False)  # strictly under
    assert _fires(move(math.nextafter(u, 1), 0.9), store, now, "move-to-api", firing=False)
    assert _fires(move(0.1, u), store, now, "move-to-api", firing=True)  # holds at the leave value
    assert not _fires(move(0.1, math.nextafter(u, 0)), store, now, "move-to-api", firing=True)

    premium = RAG.replace('compare_to = ["private:rag-api"]', 'compare_to = ["private:premium"]')

    def keep(above: float, leave: float) -> Config:
        return parse_config(
            premium + f"\n[rules.self_host_pays]\nabove = {above!r}\nleave_below = {leave!r}\n"
        )

    assert not _fires(keep(u, 0.1), store, now, "self-host-pays", firing=False)  # strictly above
    assert _fires(keep(math.nextafter(u, 0), 0.1), store, now, "self-host-pays", firing=False)
    assert _fires(keep(0.9, u), store, now, "self-host-pays", firing=True)  # holds at the leave value
    assert not _fires(keep(0.9, math.nextafter(u, 1)), store, now, "self-host-pays", firing=True)


def test_runaway_spend_fires_strictly_above_its_factor(store: Store) -> None:
    config = parse_config(
        RAG.replace("min_baseline_h = 24", "min_baseline_h = 24\nfactor = 2.0\nleave_factor = 1.8")
    )
    now = datetime(2026, 11, 23, tzinfo=UTC)
    end = int(now.timestamp())
    eight = [f"GPU-{i}" for i in range(8)]
    Fleet().add("rag", end - WEEK_S, end - 600, gpus=eight, util=constant(0.5)).write(store)
    Fleet().add("rag", end - 600, end, gpus=[f"GPU-{i}" for i in range(16)], util=constant(0.5)).write(store)
    assert not _fires(config, store, now, "runaway-spend", firing=False)  # exactly 2× is not above 2×
    Fleet().add("rag", end - 600, end, gpus=[f"GPU-{i}" for i in range(17)], util=constant(0.5)).write(store)
    assert _fires(config, store, now, "runaway-spend", firing=False)


def test_the_monthly_report_ends_with_the_same_total(store: Store) -> None:
    config = parse_config(H100_FLEET)
    now = h100_weekdays(store)
    ctx = context(config, store, now)
    findings = rules.evaluate(ctx)
    report = build_month_report(
        store=store,
        config=config,
        month="2026-11",
        now=now,
        api_catalog=ctx.api_catalog,
        gpu_catalog=ctx.gpu_catalog,
        findings=findings,
    )
    line = rules.at_stake_line(rules.at_stake(findings))
    markdown = render_markdown(report)
    assert markdown.rstrip().endswith(f"**{line}**")
    assert "  - instead: Scale llama to zero" in markdown
    total = report_object(report)["total_at_stake"]
    assert total["text"] == line
