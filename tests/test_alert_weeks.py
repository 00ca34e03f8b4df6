"""Three weeks of weekday/weekend traffic through the daemon's alerting cycles, against a local Slack:
each condition is posted once (issue 12: 59 posts in three weeks, 56 of them idle GPUs, before)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from slack_sdk import WebClient

from auditor.alert_jobs import DigestOutcome, alert_cycle, digest_cycle
from auditor.config import parse_config
from auditor.gpu_prices import load_gpu_prices
from auditor.prices import ApiPriceCatalog
from auditor.store import Store
from reports.slack import SlackSender
from tests.scenarios import ts, weekend_idle_rag
from tests.slack_server import SlackServer, start_slack_server

CONFIG = """
timezone = "UTC"
[slack]
channel_warning = "C0WARNING"
channel_info = "C0INFO"
min_severity = "warning"

[[deployments]]
name = "rag"
model = "llama-3-8b"
gpu_type = "A100-80GB"
gpus = [{ host = "h1", indexes = [0, 1] }]
[deployments.price]
source = "static"
gpu_hourly_usd = 3.00
"""
START = ts(2026, 11, 2)  # a Monday
HOUR_S = 3600
STEP_S = 6 * HOUR_S
"""The rules' job runs every 15 minutes; every 6 hours is enough to see each condition come and go."""


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    server = start_slack_server()
    yield server
    server.close()


@pytest.mark.slow
def test_three_weeks_of_cycles_post_each_condition_once(tmp_path: Path, slack: SlackServer) -> None:
    config = parse_config(CONFIG)
    store = Store.open(f"sqlite:///{tmp_path / 'auditor.db'}")  # the PostgreSQL store runs the rest
    end = START + 21 * 86400
    weekend_idle_rag(START, end).write(store)
    sender = SlackSender(client=WebClient(token="xoxb-test", base_url=slack.base_url))  # noqa: S106
    apis = ApiPriceCatalog(config.prices.api)
    gpus = load_gpu_prices()
    digests = {}
    for now_ts in range(START + STEP_S, end + 13 * HOUR_S, STEP_S):
        now = datetime.fromtimestamp(now_ts, UTC)
        alert_cycle(config, store, now, sender, api_catalog=apis, gpu_catalog=gpus)
        if now.weekday() == 0 and now.hour == 12:  # the digest's cron, Monday
            cycle = digest_cycle(config, store, now, sender, api_catalog=apis, gpu_catalog=gpus)
            digests[cycle.week] = cycle.outcome
    store_messages = store.outbox_messages()
    store.close()

    posts = Counter(m.key for m in store_messages if m.sent_ts is not None)
    assert all(m.sent_ts is not None for m in store_messages)
    assert len(slack.posted()) == sum(posts.values())
    # The first weekend's idle GPUs are news, once, as one finding for the deployment; the weekends after
    # repeat it (a pattern: not paged again); after three weeks the pattern is one off-hours finding with a
    # schedule. Each weekly digest once; the week before any data has no data and is never posted.
    assert posts == {
        "idle-loaded|rag": 1,
        "off-hours-idle|rag": 1,
        "digest|2026-W45": 1,
        "digest|2026-W46": 1,
        "digest|2026-W47": 1,
    }
    assert digests["2026-W44"] is DigestOutcome.NO_DATA  # before the first sample: nothing to say
    off_hours = next(m for m in store_messages if m.key == "off-hours-idle|rag")
    assert "Scale rag to zero Sat 00:00–" in off_hours.text
    # Every alert says what it judged (window and coverage) and how its dollars were reached.
    assert "*window* " in off_hours.blocks and "observed " in off_hours.blocks
    assert "*basis* " in off_hours.blocks and "idle hours a week" in off_hours.blocks
