"""`auditor rules check` and `auditor digest`, run as a user runs them against a real store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from auditor.model import MINUTE_S
from auditor.store import Store
from tests.scenarios import Fleet, constant, weekday_weekend
from tests.slack_server import SlackServer, start_slack_server
from tests.test_cli import run
from tests.test_rules import RAG


def _config(tmp_path: Path, extra: str = "") -> Path:
    db = tmp_path / "auditor.db"
    path = tmp_path / "auditor.toml"
    text = RAG.replace("[slack]", "[slack]" + extra)
    path.write_text(text.replace('timezone = "UTC"', f'timezone = "UTC"\n[store]\nurl = "sqlite:///{db}"', 1))
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = _config(tmp_path, '\nwebhook_url_env = "AUDITOR_TEST_HOOK"')
    store = Store.open(f"sqlite:///{tmp_path / 'auditor.db'}")
    # The last two weeks up to now, at 18% on weekdays.
    end = int(datetime.now(tz=UTC).timestamp()) // MINUTE_S * MINUTE_S
    Fleet().add(
        "rag",
        end - 14 * 86400,
        end,
        gpus=["GPU-a", "GPU-b"],
        util=weekday_weekend(0.18, 0.005),
        tokens_per_min=lambda _m: (100, 100),
        busy=constant(0.2),
    ).write(store)
    store.close()
    return path


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    server = start_slack_server()
    yield server
    server.close()


def test_rules_check_prints_findings_and_exits_1_on_a_warning(config: Path) -> None:
    result = run("rules", "check", "--config", str(config), "--json")
    assert result.returncode == 1, result.stderr
    findings = json.loads(result.stdout)["findings"]
    move = next(f for f in findings if f["rule"] == "move-to-api")
    assert move["verdict"] and move["severity"] == "warning" and move["usd_per_month"] > 4000
    table = run("rules", "check", "--config", str(config))
    assert "Move rag to private:rag-api: saves $" in table.stdout
    assert "no verdict: off-hours-idle rag: only 2 of the last 3 weeks" in table.stdout


def test_rules_check_bad_input(config: Path, tmp_path: Path) -> None:
    result = run("rules", "check", "--config", str(config), "--rule", "move-to-mars")
    assert result.returncode == 2 and "unknown rule(s) move-to-mars" in result.stderr
    assert result.stderr.count("\n") == 1
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    fresh = run("rules", "check", "--config", str(_config(quiet)))  # an empty store: no verdicts only
    assert fresh.returncode == 0, fresh.stderr
    assert "no verdict: move-to-api rag" in fresh.stdout
    # Which store was read, and why nothing was decided.
    assert f"No findings in sqlite:///{quiet}" in fresh.stdout
    assert "it holds no roll-ups yet (is the daemon running there? see `auditor doctor`)" in fresh.stdout


def test_digest_prints_and_sends_once(config: Path, slack: SlackServer) -> None:
    week = (datetime.now(tz=UTC).date() - timedelta(days=7)).isocalendar()
    name = f"{week[0]}-W{week[1]:02d}"
    printed = run("digest", "--config", str(config), "--week", name)
    assert printed.returncode == 0, printed.stderr
    assert f"GPU cost digest {name}" in printed.stdout and "API equivalent" in printed.stdout
    env = {"AUDITOR_TEST_HOOK": slack.webhook_url}
    sent = run("digest", "--config", str(config), "--send", env=env)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith(f"digest {name} sent (an incoming webhook cannot be asked")
    assert "delivery is at-least-once" in sent.stdout
    assert len(slack.posted("/webhook")) == 1
    again = run("digest", "--config", str(config), "--send", env=env)
    assert f"digest {name} was sent on " in again.stdout and "not sent again" in again.stdout
    assert len(slack.posted("/webhook")) == 1
    bad = run("digest", "--config", str(config), "--week", "W47")
    assert bad.returncode == 2 and "--week: 'W47' is not an ISO week" in bad.stderr
    unset = run("digest", "--config", str(config), "--send")
    assert unset.returncode == 2 and "AUDITOR_TEST_HOOK, which is not set" in unset.stderr


def test_digest_send_with_a_bot_token_says_what_this_run_did(tmp_path: Path, slack: SlackServer) -> None:
    # The bot's Web API at slack.api_base_url (GovSlack, a proxy): here the local fake Slack.
    path = _config(tmp_path, f'\napi_base_url = "{slack.base_url}"')
    store = Store.open(f"sqlite:///{tmp_path / 'auditor.db'}")
    end = int(datetime.now(tz=UTC).timestamp()) // MINUTE_S * MINUTE_S
    Fleet().add("rag", end - 14 * 86400, end, gpus=["GPU-a", "GPU-b"], util=constant(0.3)).write(store)
    store.close()
    env = {"SLACK_BOT_TOKEN": "xoxb-test"}
    slack.answer("/api/chat.postMessage", 200, {"ok": False, "error": "not_in_channel"})
    refused = run("digest", "--config", str(path), "--send", env=env)
    assert refused.returncode == 1
    week = refused.stdout.split()[1]
    assert f"digest {week} queued, not delivered (Slack refused the message" in refused.stdout
    assert "invite the bot" in refused.stdout
    retried = run("digest", "--config", str(path), "--send", env=env)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == (
        f"digest {week} sent: it was queued by an earlier run and had not gone out until now"
    )
    again = run("digest", "--config", str(path), "--send", env=env)
    assert again.stdout.startswith(f"digest {week} was sent on ") and "not sent again" in again.stdout
    assert len(slack.history) == 1  # one digest in the channel
    assert slack.posted()[0].headers["Authorization"] == "Bearer xoxb-test"


def test_digest_of_a_week_without_data_says_so_and_sends_nothing(config: Path, slack: SlackServer) -> None:
    """A week years before the first sample: no invented figures, one line, exit 1, nothing posted."""
    printed = run("digest", "--config", str(config), "--week", "2019-W10")
    assert printed.returncode == 1 and printed.stdout == ""
    [line] = printed.stderr.strip().splitlines()
    assert "no data for 2019-W10" in line and "Traceback" not in printed.stderr
    env = {"AUDITOR_TEST_HOOK": slack.webhook_url}
    sent = run("digest", "--config", str(config), "--week", "2019-W10", "--send", env=env)
    assert sent.returncode == 1, sent.stderr
    assert sent.stdout.strip() == (
        "digest 2019-W10 not sent: no data for 2019-W10 (nothing was observed or billed in it)"
    )
    assert slack.posted("/webhook") == []
