"""The rules where the minute rows are kept only ~2 days (a 1,024-GPU fleet's default window): idle-loaded
reads the week before from the GPU-hour tier, and a rule window's edge older than the minutes starts
on a quarter-hour, so the findings are those of a store that kept every minute."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rules
from auditor.analysis import cost_window
from auditor.config import Config, parse_config
from auditor.costing import monthly_saving
from auditor.gpu_prices import load_gpu_prices
from auditor.model import DeploymentMinute, Finding, GpuMinute
from auditor.prices import ApiPriceCatalog
from auditor.store import (
    TIER_IDLE_LOADED_BELOW,
    TIER_IDLE_LOADED_MIN_MEM_BYTES,
    IdleHours,
    Store,
    gpu_hours,
    gpu_minutes,
)
from rules.common import aggregated
from tests.scenarios import ts, weekend_idle_rag
from tests.test_tiers import HOT_HOURS, SPAN_END, SPAN_START, deployment_minute_lists, gpu_minute_lists

HOUR_S = 3600
DAY_S = 86_400
TWO_DAYS_S = 2 * DAY_S
"""The shortest minute window the store keeps (`MIN_MINUTE_RETENTION_DAYS`): 1,024 GPUs get 2.4 days."""

CONFIG = """
timezone = "UTC"
{rule}
[[deployments]]
name = "rag"
model = "llama-3-8b"
gpu_type = "A100-80GB"
gpus = [{{ host = "h1", indexes = [0, 1] }}]
compare_to = ["together:meta-llama/Llama-3-70b-chat-hf"]
[deployments.price]
source = "static"
gpu_hourly_usd = 3.00
"""
START = ts(2026, 11, 2)  # a Monday
END = START + 14 * DAY_S


def _config(rule: str = "") -> Config:
    return parse_config(CONFIG.format(rule=rule))


def _two_weeks(url: str) -> Store:
    """Two weeks of an A100 pair busy on weekdays and idle, model loaded, every weekend."""
    store = Store.open(url)
    weekend_idle_rag(START, END).write(store)
    return store


def _context(config: Config, store: Store, now: datetime) -> rules.RuleContext:
    return rules.RuleContext(config, store, now, ApiPriceCatalog(config.prices.api), load_gpu_prices())


def _idle_loaded(config: Config, store: Store, now: datetime) -> list[Finding]:
    return [f for f in rules.evaluate(_context(config, store, now), ["idle-loaded"]) if f.verdict]


def _keep_two_days(store: Store, now: datetime) -> None:
    """What the daemon's retention job does at `now` for a fleet past its row budget."""
    store.prune(now.timestamp(), 48 * HOUR_S, 397 * DAY_S, minute_retention_s=TWO_DAYS_S)


def test_a_weekend_idle_every_week_is_a_pattern_with_two_days_of_minutes(
    store_url: str, tmp_path: Path
) -> None:
    config = _config()
    every, short = _two_weeks(f"sqlite:///{tmp_path / 'every.db'}"), _two_weeks(store_url)
    saturdays = [datetime(2026, 11, 7, 12, tzinfo=UTC), datetime(2026, 11, 14, 12, tzinfo=UTC)]
    seen = []
    for now in [*saturdays, datetime(2026, 11, 15, 6, 30, tzinfo=UTC)]:
        _keep_two_days(short, now)
        assert short.oldest_minute_ts() == (now.timestamp() - TWO_DAYS_S) // HOUR_S * HOUR_S
        found = _idle_loaded(config, short, now)
        assert found == _idle_loaded(config, every, now)  # the same findings, to the cent and the word
        seen.append(found)
    first, second, sunday = seen
    # The first weekend is news (nothing a week before); the next ones repeat it: a pattern, not a page.
    assert len(first) == 1 and second == [] and sunday == []
    figures = dict(first[0].figures)
    # The rate's days reach back past the 2 days of minutes, to the first sample (Monday 00:00).
    assert figures["idle-loaded in the last 7 days"] == "12.00 h of 132.00 h observed"

    # Configured otherwise than the tier's sums (the rule's defaults), only the minutes kept answer:
    # the week before is unknown there, so the second weekend is news again.
    assert (TIER_IDLE_LOADED_BELOW, TIER_IDLE_LOADED_MIN_MEM_BYTES) == (0.05, 1 << 30)
    other = _config("[rules.idle_loaded]\nbelow = 0.04")
    assert len(_idle_loaded(other, short, saturdays[1])) == 1
    assert _idle_loaded(other, every, saturdays[1]) == []
    every.close()
    short.close()


def test_a_rule_window_older_than_the_minutes_starts_on_its_quarter_hour(
    store_url: str, tmp_path: Path
) -> None:
    config = _config()
    every, short = _two_weeks(f"sqlite:///{tmp_path / 'every.db'}"), _two_weeks(store_url)
    now = datetime(2026, 11, 15, 12, 7, tzinfo=UTC)
    _keep_two_days(short, now)
    # Minutes kept: exactly 7 days back, to the minute.
    kept = aggregated(_context(config, every, now), 7).window.deployments[0]
    assert kept.start == now - timedelta(days=7)
    # Minutes gone at that edge: from the start of its quarter-hour, the tier's whole, nothing lost.
    tier = aggregated(_context(config, short, now), 7).window.deployments[0]
    aligned = datetime(2026, 11, 8, 12, tzinfo=UTC)
    assert tier.start == aligned
    same = cost_window(every, config, aligned, now, ApiPriceCatalog(), load_gpu_prices()).window.deployments[
        0
    ]
    assert tier.hours == same.hours and tier.tokens == same.tokens and tier.cost_usd == same.cost_usd
    assert tier.utilization == same.utilization
    # Its savings label says the days it spans, readably (7 days and 7 minutes).
    assert "at the last 7 days' rate" in monthly_saving(tier, tier.apis[0]).basis
    for span, label in (
        (timedelta(days=7, minutes=15), "7.01 days'"),
        (timedelta(days=1), "1 day's"),
        (timedelta(hours=5, minutes=46), "5.77 hours'"),
        (timedelta(minutes=1), "1 minute's"),
    ):
        shorter = replace(tier, start=tier.end - span)
        assert f"at the last {label} rate" in monthly_saving(shorter, shorter.apis[0]).basis
    every.close()
    short.close()


# -- the tier's arithmetic --------------------------------------------------------------------------


def _reference(
    gpu_rows: Sequence[GpuMinute], deployment_rows: Sequence[DeploymentMinute], kept: Callable[[int], bool]
) -> dict[str, IdleHours]:
    """idle-loaded's definition applied to records, in Python: per GPU, over the minutes `kept` keeps."""
    busy: dict[tuple[str | None, int], float | None] = {
        (m.deployment, m.minute_ts): m.request_busy for m in deployment_rows
    }
    found: dict[str, IdleHours] = {}
    for m in gpu_rows:
        if not kept(m.minute_ts):
            continue
        activity = m.sm_active if m.sm_active is not None else m.gpu_util
        share = busy.get((m.deployment, m.minute_ts))
        known = activity is not None
        idle = (
            activity is not None
            and activity < TIER_IDLE_LOADED_BELOW
            and not (share is not None and share > 0)
            and (
                m.loaded_s > 0
                or (
                    m.mem_used_max_bytes is not None
                    and m.mem_used_max_bytes >= TIER_IDLE_LOADED_MIN_MEM_BYTES
                )
            )
        )
        span = IdleHours(
            m.observed_s if known else 0.0, m.observed_s if idle else 0.0, int(known and not idle)
        )
        found[m.gpu_uuid] = found[m.gpu_uuid] + span if m.gpu_uuid in found else span
    return found


def _close(got: IdleHours | None, want: IdleHours | None) -> bool:
    zero = IdleHours(0.0, 0.0, 0)
    a, b = got or zero, want or zero
    return (
        math.isclose(a.known_s, b.known_s, abs_tol=1e-6)
        and math.isclose(a.idle_s, b.idle_s, abs_tol=1e-6)
        and a.working_minutes == b.working_minutes
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gpu_rows=gpu_minute_lists, deployment_rows=deployment_minute_lists, data=st.data())
def test_idle_loaded_history_from_the_hour_tier_equals_its_minutes(
    gpu_rows: list[GpuMinute], deployment_rows: list[DeploymentMinute], data: st.DataObject
) -> None:
    store = Store.open("sqlite:///:memory:")
    store.replace_minutes(SPAN_START, SPAN_END, gpu_rows, deployment_rows)
    uuids = [f"GPU-{i}" for i in range(4)]

    def span() -> tuple[float, float]:
        start = (
            SPAN_START + HOUR_S * data.draw(st.sampled_from(HOT_HOURS)) + data.draw(st.integers(-7200, 3600))
        )
        return start, start + data.draw(st.integers(1, 3 * DAY_S))

    spans = data.draw(st.lists(st.builds(span), min_size=1, max_size=4))
    below, mem = TIER_IDLE_LOADED_BELOW, TIER_IDLE_LOADED_MIN_MEM_BYTES

    def check(kept_from: float | None) -> None:
        history = store.idle_loaded_history(spans, below, mem, uuids)
        for i, (a, b) in enumerate(spans):
            # Minutes from the oldest one kept; before it, the whole hours of the span.
            def kept(minute_ts: int, a: float = a, b: float = b) -> bool:
                if not a <= minute_ts < b:
                    return False
                if kept_from is None or minute_ts >= kept_from:
                    return True
                hour = minute_ts // HOUR_S * HOUR_S
                return hour >= a and hour + HOUR_S <= min(b, kept_from)

            want = _reference(gpu_rows, deployment_rows, kept)
            for uuid in uuids:
                got = history[uuid][i] if uuid in history else None
                assert _close(got, want.get(uuid)), (i, uuid, got, want.get(uuid))

    # Every minute kept: the minutes answer, as `idle_loaded_spans` does.
    check(None)
    window = store.idle_loaded_spans(spans, below, mem, uuids)
    history = store.idle_loaded_history(spans, below, mem, uuids)
    assert history.keys() == window.keys()
    for uuid, spans_of in window.items():
        for got, w in zip(history[uuid], spans_of, strict=True):
            assert _close(got, IdleHours(w.known_s, w.idle_s, w.working_minutes))
    # The minutes before an hour pruned: the hour tier answers their whole hours.
    cut = SPAN_START + HOUR_S * data.draw(st.integers(0, (SPAN_END - SPAN_START) // HOUR_S))
    store.prune(cut, 48 * HOUR_S, 397 * DAY_S, minute_retention_s=0.0)
    check(store.oldest_minute_ts() or math.inf)
    store.close()


def test_the_migration_fills_the_hour_tier_from_the_minutes_kept(store_url: str) -> None:
    """A store from before schema 7: its GPU-hours get idle-loaded sums where the minutes are kept,
    NULL (unknown) where they are gone."""
    store = _two_weeks(store_url)
    store.prune(END, 48 * HOUR_S, 397 * DAY_S, minute_retention_s=3 * DAY_S)
    with store.engine.begin() as conn:
        expected = conn.execute(gpu_hours.select().order_by(gpu_hours.c.hour_ts, gpu_hours.c.gpu_uuid)).all()
        conn.exec_driver_sql(
            "UPDATE gpu_hours SET activity_known_s = NULL, idle_loaded_s = NULL, working_minutes = NULL"
        )
        conn.exec_driver_sql("DELETE FROM schema_version WHERE version >= 7")  # 7 and every later one
    store.close()
    store = Store.open(store_url)
    with store.engine.connect() as conn:
        after = conn.execute(gpu_hours.select().order_by(gpu_hours.c.hour_ts, gpu_hours.c.gpu_uuid)).all()
        first_minute = conn.execute(gpu_minutes.select().order_by(gpu_minutes.c.minute_ts).limit(1)).one()
    assert len(after) == len(expected) == 2 * 14 * 24
    for old, new in zip(expected, after, strict=True):
        if new.hour_ts >= first_minute.minute_ts:
            assert (new.activity_known_s, new.idle_loaded_s, new.working_minutes) == (
                old.activity_known_s,
                old.idle_loaded_s,
                old.working_minutes,
            )
        else:
            assert new.activity_known_s is None and new.working_minutes is None
    weekend_hour = [r for r in after if r.hour_ts == ts(2026, 11, 14, 3)]
    assert [(r.activity_known_s, r.idle_loaded_s, r.working_minutes) for r in weekend_hour] == [
        (3600.0, 3600.0, 0)
    ] * 2
    store.close()
