"""The weekly digest from a real store: figures, week-over-week change, Block Kit, chart, sent once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from slack_sdk import WebClient

from auditor.alert_jobs import DigestOutcome, digest_cron_kwargs, digest_cycle, digest_due, make_digest
from auditor.config import parse_config
from auditor.store import Store
from reports.digest import digest_text, heatmap_png, last_complete_week, parse_week, week_bounds
from reports.slack import SlackSender
from tests.scenarios import Fleet, constant, ts, weekday_weekend
from tests.slack_server import SlackServer, start_slack_server
from tests.test_rules import RAG

NOW = datetime(2026, 11, 23, 9, tzinfo=UTC)  # Monday 09:00: the digest's cron


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    # Week 46 at 10% busy, week 47 at 18% on weekdays and idle at weekends; tokens doubled.
    Fleet().add(
        "rag",
        ts(2026, 11, 9),
        ts(2026, 11, 16),
        gpus=["GPU-a", "GPU-b"],
        util=constant(0.10),
        tokens_per_min=lambda _m: (500, 500),
        busy=constant(0.2),
    ).add(
        "rag",
        ts(2026, 11, 16),
        ts(2026, 11, 23),
        gpus=["GPU-a", "GPU-b"],
        util=weekday_weekend(0.18, 0.0),
        tokens_per_min=lambda _m: (1000, 1000),
        busy=weekday_weekend(0.3, 0.0),
    ).write(opened)
    yield opened
    opened.close()


def test_weeks() -> None:
    tz = parse_config(RAG).tz
    assert last_complete_week(NOW, tz) == "2026-W47"
    start, end = week_bounds("2026-W47", tz)
    assert (start.isoformat(), end.isoformat()) == ("2026-11-16T00:00:00+00:00", "2026-11-23T00:00:00+00:00")
    with pytest.raises(ValueError, match="write it as 2026-W47"):
        parse_week("2026-47")
    with pytest.raises(ValueError, match="2026 has no week 54"):
        parse_week("2026-W54")


def test_digest_figures_and_change_against_the_week_before(store: Store) -> None:
    config = parse_config(RAG)
    digest = make_digest(config, store, NOW)
    assert digest.week == "2026-W47"
    (row,) = digest.deployments
    assert row.cost.cost_usd == 2 * 3 * 168
    assert row.tokens_change == pytest.approx(1.0)
    assert row.utilization_change == pytest.approx((0.18 * 5 / 7) - 0.10)
    assert row.heat[0][0] == pytest.approx(0.18) and row.heat[6][23] == pytest.approx(0.0)
    text = digest_text(digest)
    assert "GPU cost digest 2026-W47 (2026-11-16 – 2026-11-22, UTC)" in text
    assert "cost                         $1,008.00 (+0.0%)" in text
    assert "tokens                       20.16M (+100.0%)" in text
    assert "Move rag to private:rag-api" in text  # an open recommendation, with its dollars
    png = heatmap_png(digest)
    assert png is not None and png.startswith(b"\x89PNG")


def test_digest_goes_to_slack_once_with_its_chart(store: Store) -> None:
    config = parse_config(
        RAG.replace(
            'channel_warning = "#gpu-cost"', 'channel_warning = "#gpu-cost"\ndigest_channel = "#digest"'
        )
    )
    slack: SlackServer = start_slack_server()
    try:
        sender = SlackSender(client=WebClient(token="xoxb-test", base_url=slack.base_url))  # noqa: S106
        assert digest_due(config, store, NOW)
        first = digest_cycle(config, store, NOW, sender)
        assert first.queued and first.flush is not None and first.flush.sent == 1
        (post,) = slack.posted()
        body = post.json()
        assert body["channel"] == "#digest"
        assert body["blocks"][0]["text"]["text"].startswith("GPU cost digest 2026-W47")
        assert any("Open recommendations" in json.dumps(b) for b in body["blocks"])
        upload = [r for r in slack.requests if r.path == "/upload/F1"]
        assert upload and b"PNG" in upload[0].body
        complete = slack.posted("/api/files.completeUploadExternal")[0]
        assert b"1700000000.000001" in complete.body  # in the digest's thread
        assert not digest_due(config, store, NOW)
        again = digest_cycle(config, store, NOW, sender)  # a restart, or the cron and start-up both
        assert not again.queued and len(slack.posted()) == 1
    finally:
        slack.close()
    assert digest_cron_kwargs(config) == {
        "minute": "0",
        "hour": "9",
        "day": "*",
        "month": "*",
        "day_of_week": "mon",
        "timezone": "UTC",
    }


def test_a_mostly_unobserved_week_says_so_and_is_never_auto_posted(store_url: str) -> None:
    # Issue 12: a week with 0.3% of its time observed was posted at start-up as "utilization 60.0%".
    config = parse_config(RAG)
    store = Store.open(store_url)
    try:
        monday = ts(2026, 11, 16)
        Fleet().add(
            "rag",
            monday,
            monday + 30 * 60,  # half an hour of a week
            gpus=["GPU-a", "GPU-b"],
            util=constant(0.60),
            tokens_per_min=lambda _m: (1000, 1000),
            busy=constant(0.9),
        ).write(store)
        Fleet().add(
            "rag", monday + 7 * 86400 - 1800, monday + 7 * 86400, gpus=["GPU-a", "GPU-b"], util=constant(0.6)
        ).write(store)  # active to the week's end: the rest of the week was paid for and not seen
        digest = make_digest(config, store, NOW)
        assert digest.unknown and digest.coverage is not None and digest.coverage < 0.01
        text = digest_text(digest)
        assert "This week is unknown" in text
        assert "Observed: 2.0 of 336.0 GPU-hours (0.60%)" in text
        assert "  utilization (" not in text and "  cost per Mtok" not in text and "  idle cost" not in text
        slack = start_slack_server()
        try:
            sender = SlackSender(client=WebClient(token="xoxb-test", base_url=slack.base_url))  # noqa: S106
            skipped = digest_cycle(config, store, NOW, sender)  # the daemon: start-up or cron
            assert skipped.outcome is DigestOutcome.UNKNOWN_WEEK and not slack.posted()
            assert not store.outbox_messages()
            asked = digest_cycle(config, store, NOW, sender, send_unknown=True)  # a person: digest --send
            assert asked.outcome is DigestOutcome.SENT and len(slack.posted()) == 1
            assert "This week is unknown" in json.dumps(slack.posted()[0].json())
        finally:
            slack.close()
    finally:
        store.close()
