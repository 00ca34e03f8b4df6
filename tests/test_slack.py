"""The real slack-sdk against a local server: Block Kit, retries (429, 5xx, no network), file upload."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from slack_sdk import WebClient
from slack_sdk.webhook import WebhookClient

from auditor.alert_lifecycle import NotificationKind
from auditor.config import SlackConfig
from auditor.model import Finding, Severity
from auditor.outbox import DeliveryError, flush_outbox
from auditor.store import OutboxMessage, Store
from reports.slack import (
    SlackConfigError,
    SlackSender,
    channel_for,
    finding_blocks,
    retry_handlers,
    slack_sender,
)
from tests.slack_server import SlackServer, start_slack_server

FINDING = Finding(
    rule="move-to-api",
    subject="rag",
    severity=Severity.WARNING,
    title="rag: 13.0% utilized; private:rag-api is cheaper",
    text="Move rag to private:rag-api: saves $4,333.07/month.",
    usd_per_month=Decimal("4333.07"),
    figures=(("utilization (gpu_util)", "13.0%"), ("window", "7 days")),
    command="auditor report --month 2026-11",
)


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    server = start_slack_server()
    yield server
    server.close()


def client(slack: SlackServer, retries: int = 3) -> WebClient:
    return WebClient(
        token="xoxb-test",  # noqa: S106
        base_url=slack.base_url,
        retry_handlers=retry_handlers(retries, base_s=0.01, cap_s=0.05),
    )


def message(attachment: bytes | None = None, channel: str | None = "#gpu-cost") -> OutboxMessage:
    text, blocks = finding_blocks(FINDING, NotificationKind.FIRING)
    return OutboxMessage(
        key="move-to-api|rag",
        kind="firing",
        severity="warning",
        channel=channel,
        text=text,
        blocks=json.dumps(blocks),
        created_ts=0.0,
        attachment=attachment,
        attachment_name="chart.png" if attachment else None,
    )


def test_blocks_carry_title_figures_recommendation_and_command(slack: SlackServer) -> None:
    ref = SlackSender(client=client(slack)).send(message())
    assert ref == "C0123:1700000000.000001"
    (post,) = slack.posted()
    assert post.headers["Authorization"] == "Bearer xoxb-test"
    body = post.json()
    assert body["channel"] == "#gpu-cost"
    header, lead, figures, context = body["blocks"]
    assert header["type"] == "header" and "rag: 13.0% utilized" in header["text"]["text"]
    assert lead["text"]["text"] == "*Move rag to private:rag-api: saves $4,333.07/month.*"
    assert figures["fields"][0]["text"] == "*utilization (gpu_util)*\n13.0%"
    assert "`auditor report --month 2026-11`" in context["elements"][0]["text"]
    assert "$4,333.07/month at stake" in context["elements"][0]["text"]


def test_429_waits_retry_after_then_delivers(slack: SlackServer) -> None:
    slack.answer("/api/chat.postMessage", 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"})
    started = time.monotonic()
    SlackSender(client=client(slack)).send(message())
    assert time.monotonic() - started >= 1.0
    assert len(slack.posted()) == 2


def test_a_5xx_post_is_kept_for_later_and_looked_for_before_posting_again(
    slack: SlackServer, tmp_path: Path
) -> None:
    # A 5xx answer to a post may hide a delivered message: the SDK does not retry it, the outbox does,
    # after reading the channel back.
    slack.answer("/api/chat.postMessage", 500, b"oops")
    store = Store.open(f"sqlite:///{tmp_path / 'a.db'}")
    store.enqueue(message())
    flush = flush_outbox(store, SlackSender(client=client(slack)), now_ts=1000.0)
    assert (flush.sent, flush.failed, flush.pending) == (0, 1, 1)
    (waiting,) = store.outbox_messages()
    assert waiting.attempts == 1 and waiting.sent_ts is None and waiting.next_attempt_ts > 1000.0
    assert "HTTP 500" in (waiting.last_error or "")
    later = flush_outbox(store, SlackSender(client=client(slack)), now_ts=waiting.next_attempt_ts)
    assert (later.sent, later.pending) == (1, 0)
    assert len(slack.posted()) == 2 and len(slack.history) == 1
    (looked,) = slack.posted("/api/conversations.history")
    assert b"include_all_metadata=1" in looked.body  # asked with the metadata


def test_a_post_answered_after_the_timeout_is_found_and_never_posted_twice(
    slack: SlackServer, tmp_path: Path
) -> None:
    # Slack accepts the post but answers after the client's timeout: the next attempt finds it by its
    # metadata in the channel's history, and does not post it again.
    slack.slow("/api/chat.postMessage", 2.0)
    sender = SlackSender(
        client=WebClient(
            token="xoxb-test",  # noqa: S106
            base_url=slack.base_url,
            timeout=1,
            retry_handlers=retry_handlers(3, base_s=0.01, cap_s=0.05),
        )
    )
    store = Store.open(f"sqlite:///{tmp_path / 'a.db'}")
    message_id = store.enqueue(message())
    first = flush_outbox(store, sender, now_ts=1000.0)
    assert (first.sent, first.failed, first.pending) == (0, 1, 1)
    (waiting,) = store.outbox_messages()
    assert waiting.sent_ts is None and "unreachable" in (waiting.last_error or "")
    time.sleep(1.2)  # the late answer goes out to nobody
    second = flush_outbox(store, sender, now_ts=waiting.next_attempt_ts)
    assert (second.sent, second.pending) == (1, 0)
    assert len(slack.posted()) == 1 and len(slack.history) == 1  # exactly one message in the channel
    (done,) = store.outbox_messages()
    assert done.sent_ref == "C0123:1700000000.000001"
    (metadata,) = [m["metadata"] for m in slack.history]
    assert metadata["event_type"] == "gpu_auditor_outbox"
    assert metadata["event_payload"]["outbox_id"] == message_id
    # The channel was configured by name: its ID was looked up once.
    assert len(slack.posted("/api/conversations.list")) == 1


def test_no_network_is_a_transport_error_and_nothing_is_lost(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = WebClient(
        token="xoxb-test",  # noqa: S106
        base_url=f"http://127.0.0.1:{port}/api/",
        retry_handlers=retry_handlers(2, base_s=0.01, cap_s=0.02),
    )
    with pytest.raises(DeliveryError) as raised:
        SlackSender(client=dead).send(message())
    assert raised.value.transport
    store = Store.open(f"sqlite:///{tmp_path / 'a.db'}")
    store.enqueue(message())
    store.enqueue(message())
    flush = flush_outbox(store, SlackSender(client=dead), now_ts=0.0)
    assert (flush.sent, flush.failed, flush.pending) == (0, 1, 2)  # stopped at the first: Slack is down


def test_channel_not_found_is_not_transport(slack: SlackServer) -> None:
    slack.answer("/api/chat.postMessage", 200, {"ok": False, "error": "channel_not_found"})
    with pytest.raises(DeliveryError, match="invite the bot") as raised:
        SlackSender(client=client(slack)).send(message())
    assert not raised.value.transport


def test_file_upload_goes_in_the_message_thread_and_is_never_posted_twice(slack: SlackServer) -> None:
    slack.answer("/api/files.completeUploadExternal", 500, b"down")
    slack.answer("/api/files.completeUploadExternal", 500, b"down")
    sender = SlackSender(client=client(slack, retries=1))
    with pytest.raises(DeliveryError) as raised:
        sender.send(message(attachment=b"\x89PNG fake chart"))
    assert raised.value.posted_ref == "C0123:1700000000.000001"
    sender.send(replace(message(attachment=b"\x89PNG fake chart"), posted_ref=raised.value.posted_ref))
    assert len(slack.posted()) == 1  # the retry uploaded the file, it did not post the message again
    uploads = [r for r in slack.requests if r.path == "/upload/F1"]
    assert len(uploads) == 2  # the unfinished upload is started again, the message is not
    assert b"\x89PNG fake chart" in uploads[-1].body
    complete = slack.posted("/api/files.completeUploadExternal")[-1]
    assert b"1700000000.000001" in complete.body and b"C0123" in complete.body


def test_webhook_alternative(slack: SlackServer) -> None:
    sender = slack_sender(
        SlackConfig(webhook_url_env="HOOK"), {"HOOK": slack.webhook_url}, backoff_s=0.01, backoff_cap_s=0.02
    )
    assert sender is not None and sender.webhook is not None
    assert sender.send(message(channel=None)) == "webhook"
    (hook,) = slack.posted("/webhook")
    assert hook.json()["blocks"][0]["type"] == "header"
    slack.answer("/webhook", 404, b"no_service")
    with pytest.raises(DeliveryError, match="404"):
        SlackSender(webhook=WebhookClient(slack.webhook_url)).send(message())


def test_token_from_env_or_file_and_channels(tmp_path: Path) -> None:
    assert slack_sender(SlackConfig(), {}) is None
    token_file = tmp_path / "token"
    token_file.write_text("xoxb-from-file\n")
    sender = slack_sender(SlackConfig(token_file=token_file), {})
    assert sender is not None and sender.client is not None and sender.client.token == "xoxb-from-file"  # noqa: S105
    env_sender = slack_sender(SlackConfig(), {"SLACK_BOT_TOKEN": "xoxb-env"})
    assert env_sender is not None and env_sender.client is not None and env_sender.client.token == "xoxb-env"  # noqa: S105
    with pytest.raises(SlackConfigError, match="cannot be read"):
        slack_sender(SlackConfig(token_file=tmp_path / "missing"), {})
    with pytest.raises(SlackConfigError, match="HOOK, which is not set"):
        slack_sender(SlackConfig(webhook_url_env="HOOK"), {})
    channels = SlackConfig(channel_warning="#w")
    assert channel_for(channels, Severity.CRITICAL) == "#w"
    assert channel_for(channels, Severity.INFO) is None


def test_another_auditors_message_with_the_same_outbox_id_is_not_taken_for_ours(
    slack: SlackServer, tmp_path: Path
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'a.db'}")
    message_id = store.enqueue(message())
    store.outbox_mark_failed(message_id, "timed out", next_attempt_ts=0.0, posted_ref=None)
    other = {"outbox_id": message_id, "key": "move-to-api|other", "created_ts": 0.0}
    slack.history.append(
        {"type": "message", "ts": "1699999999.000001", "text": "x", "metadata": {
            "event_type": "gpu_auditor_outbox", "event_payload": other}}
    )  # fmt: skip
    flush = flush_outbox(store, SlackSender(client=client(slack)), now_ts=10.0)
    assert flush.sent == 1 and len(slack.posted()) == 1  # looked, did not match, posted
    (sent,) = store.outbox_messages()
    assert sent.sent_ref == "C0123:1700000000.000001"


def test_messages_about_one_key_arrive_in_the_order_queued(slack: SlackServer, tmp_path: Path) -> None:
    """A 'resolved' held back by an outage must not arrive after the 'firing' queued behind it; other
    keys are not held up."""
    store = Store.open(f"sqlite:///{tmp_path / 'a.db'}")
    slack.down = True
    resolved = store.enqueue(replace(message(), key="runaway-spend/llama", kind="resolved", text="resolved"))
    flush = flush_outbox(store, SlackSender(client=client(slack, retries=0)), now_ts=1000.0)
    assert (flush.sent, flush.failed) == (0, 1)
    slack.down = False
    firing = store.enqueue(replace(message(), key="runaway-spend/llama", kind="firing", text="firing"))
    other = store.enqueue(replace(message(), key="runaway-spend/mistral", kind="firing", text="other"))
    early = flush_outbox(store, SlackSender(client=client(slack)), now_ts=1001.0)
    assert early.sent == 1  # the other key's message; llama's firing waits behind its resolved
    (waiting,) = [m for m in store.outbox_messages() if m.id == resolved]
    later = flush_outbox(store, SlackSender(client=client(slack)), now_ts=waiting.next_attempt_ts)
    assert later.sent == 2
    order = [m["metadata"]["event_payload"]["outbox_id"] for m in slack.history]
    assert order == [other, resolved, firing]
