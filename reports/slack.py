"""Slack delivery: Block Kit messages for alerts, sent through slack-sdk, and the outbox's `Sender`.

A bot token (`chat_postMessage`, a channel per severity, `files_upload_v2` for the digest's chart) or an
incoming webhook (one channel, no files). The token is read from the environment variable named by
`slack.token_env` or from `slack.token_file`, and never logged; `slack.api_base_url` points the bot's
client elsewhere (GovSlack, a proxy). Retries: the SDK's rate-limit handler (waits Retry-After), plus
connection errors and 5xx answers with capped, jittered exponential backoff. What still fails becomes a
`DeliveryError`; the message waits in the outbox for the next flush.

Exactly once, with a bot token: every post carries Slack message `metadata` naming its outbox message.
A post whose answer never came (a timeout, a 5xx, a dropped connection) may have arrived all the same,
so the SDK does not retry it; before the outbox's next attempt, the sender reads the channel's history
(`conversations.history`, `channels:history` scope) for a message with that metadata, and takes it for
delivered if it is there. An incoming webhook cannot be asked: webhook delivery is *at-least-once* (a
timed-out post that did arrive is posted again).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry import (
    ConnectionErrorRetryHandler,
    HttpRequest,
    HttpResponse,
    RateLimitErrorRetryHandler,
    RetryHandler,
    RetryIntervalCalculator,
    RetryState,
)
from slack_sdk.webhook import WebhookClient

from auditor.alert_lifecycle import Notification, NotificationKind, key_of
from auditor.config import SlackConfig
from auditor.model import Finding, Severity
from auditor.outbox import DeliveryError
from auditor.store import OutboxMessage
from auditor.units import format_usd
from reports.findings import alternative_lines, window_text

log = logging.getLogger(__name__)

METADATA_EVENT = "gpu_auditor_outbox"
"""The `event_type` of the metadata every bot post carries: how a post is found again."""
HISTORY_PAGES = 10
"""Pages of 200 messages read back at most when looking for an earlier attempt."""
HISTORY_SLACK_S = 300.0
"""Looked for from this long before the message was queued (clocks differ)."""
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")
_POST_METHOD = "chat.postMessage"
WEBHOOK_AT_LEAST_ONCE = (
    "an incoming webhook cannot be asked whether a post that timed out arrived: delivery is "
    "at-least-once (a bot token, slack.token_env, delivers exactly once)"
)
MAX_FIELDS = 10
"""Block Kit allows ten fields in a section."""
MAX_HEADER = 150
# Errors that no retry of another message would fix either: stop the flush.
_ACCOUNT_ERRORS = frozenset(
    {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"}
)
_EMOJI = {
    Severity.INFO: ":information_source:",
    Severity.WARNING: ":warning:",
    Severity.CRITICAL: ":rotating_light:",
}


class SlackConfigError(ValueError):
    """Slack is configured in a way that cannot work; the message says what to fix."""


# -- Block Kit -------------------------------------------------------------------------------------


def _plain(text: str, limit: int = MAX_HEADER) -> dict[str, Any]:
    return {
        "type": "plain_text",
        "text": text if len(text) <= limit else text[: limit - 1] + "…",
        "emoji": True,
    }


def escape_mrkdwn(text: str) -> str:
    """Slack's control characters escaped: a deployment or model name cannot make a link, a mention
    (`<!channel>`) or a quote."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": escape_mrkdwn(text)[:3000]}


def figure_sections(figures: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """The figures as label/value fields, ten to a section."""
    fields = [_mrkdwn(f"*{label}*\n{value}") for label, value in figures]
    return [
        {"type": "section", "fields": fields[i : i + MAX_FIELDS]} for i in range(0, len(fields), MAX_FIELDS)
    ]


def finding_blocks(finding: Finding, kind: NotificationKind) -> tuple[str, list[dict[str, Any]]]:
    """(fallback text, blocks): title, recommendation, figures, and the command that shows more."""
    if kind is NotificationKind.RESOLVED:
        title = f":white_check_mark: Resolved: {finding.title}"
        lead = f"*{finding.rule}* no longer fires for *{finding.subject}*. It said: {finding.text}"
    else:
        prefix = "Escalated: " if kind is NotificationKind.ESCALATED else ""
        title = f"{_EMOJI[finding.severity]} {prefix}{finding.title}"
        lead = f"*{finding.text}*"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(title)},
        {"type": "section", "text": _mrkdwn(lead)},
    ]
    if kind is not NotificationKind.RESOLVED:
        blocks.extend(figure_sections(finding.figures))
        about = []
        if finding.window is not None:
            about.append(f"*window* {window_text(finding.window)}")
        if finding.basis:
            about.append(f"*basis* {finding.basis}")
        about += [f"_{line}_" for line in alternative_lines(finding)]
        if about:
            blocks.append({"type": "section", "text": _mrkdwn("\n".join(about))})
    rules = ", ".join(finding.rules) or finding.rule
    context = [f"rule `{rules}`", f"subject `{finding.subject}`", f"severity {finding.severity.value}"]
    if finding.usd_per_month is not None:
        context.append(f"{format_usd(finding.usd_per_month)}/month at stake")
    if finding.command:
        context.append(f"more: `{finding.command}`")
    blocks.append({"type": "context", "elements": [_mrkdwn(" · ".join(context))]})
    text = f"{title}: {finding.text}" if kind is not NotificationKind.RESOLVED else title
    return escape_mrkdwn(text), blocks


def channel_for(slack: SlackConfig, severity: Severity) -> str | None:
    """A severity's channel, else the next less severe one's: critical → warning → info."""
    order = {
        Severity.CRITICAL: (slack.channel_critical, slack.channel_warning, slack.channel_info),
        Severity.WARNING: (slack.channel_warning, slack.channel_info),
        Severity.INFO: (slack.channel_info,),
    }[severity]
    return next((c for c in order if c), None)


def notify_severities(slack: SlackConfig) -> frozenset[Severity]:
    """The severities that are sent: at least `slack.min_severity`."""
    ranks = {"info": 0, "warning": 1, "critical": 2}
    low = ranks[slack.min_severity]
    return frozenset(s for s in Severity if ranks[s.value] >= low)


def alert_message(note: Notification, slack: SlackConfig, now_ts: float) -> OutboxMessage:
    text, blocks = finding_blocks(note.finding, note.kind)
    return OutboxMessage(
        key=key_of(note.alert.rule, note.alert.subject),
        kind=note.kind.value,
        severity=note.finding.severity.value,
        channel=channel_for(slack, note.finding.severity),
        text=text,
        blocks=json.dumps(blocks),
        created_ts=now_ts,
        next_attempt_ts=now_ts,
    )


# -- retries ---------------------------------------------------------------------------------------


class CappedBackoff(RetryIntervalCalculator):
    """Exponential backoff from `base_s`, capped at `cap_s`, with full jitter in its upper half."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.rng = rng or random.Random()  # noqa: S311  (jitter, not secrets)

    def calculate_sleep_duration(self, current_attempt: int) -> float:
        interval = min(self.cap_s, self.base_s * 2.0**current_attempt)
        return interval / 2 + self.rng.random() * interval / 2


def _is_post(request: HttpRequest) -> bool:
    return request.url.rstrip("/").endswith(_POST_METHOD)


def _refused(error: Exception | None) -> bool:
    """The connection was never made: nothing can have been delivered."""
    reason = getattr(error, "reason", error)
    return isinstance(reason, ConnectionRefusedError)


class ServerErrorRetryHandler(RetryHandler):
    """Retries a 5xx answer (Slack having a bad minute) — except a post's: that one may have arrived, and
    is left to the outbox, which looks for it before posting again."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and 500 <= response.status_code < 600 and not _is_post(request)


class SafeConnectionErrorRetryHandler(ConnectionErrorRetryHandler):
    """Retries connection errors, a post's only when the connection was refused (never delivered)."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if _is_post(request) and not _refused(error):
            return False
        return super()._can_retry(state=state, request=request, response=response, error=error)


def retry_handlers(max_retries: int, base_s: float, cap_s: float) -> list[RetryHandler]:
    backoff = CappedBackoff(base_s, cap_s)
    return [
        RateLimitErrorRetryHandler(max_retry_count=max_retries),
        SafeConnectionErrorRetryHandler(max_retry_count=max_retries, interval_calculator=backoff),
        ServerErrorRetryHandler(max_retry_count=max_retries, interval_calculator=backoff),
    ]


# -- sending ---------------------------------------------------------------------------------------


def _api_error(exc: SlackApiError, posted_ref: str | None = None) -> DeliveryError:
    status = getattr(exc.response, "status_code", 0) or 0
    error = ""
    data = getattr(exc.response, "data", None)
    if isinstance(data, dict):
        error = str(data.get("error", ""))
    transport = status == 429 or status >= 500 or error in _ACCOUNT_ERRORS
    detail = f"HTTP {status}: {error}" if error else f"HTTP {status}"
    hint = "; check the bot token and its scopes" if error in _ACCOUNT_ERRORS else ""
    if error == "channel_not_found" or error == "not_in_channel":
        hint = "; check slack.channel_* and invite the bot to the channel"
    return DeliveryError(
        f"Slack refused the message: {detail}{hint}", transport=transport, posted_ref=posted_ref
    )


class SlackSender:
    """Delivers outbox messages through a bot token's WebClient, or an incoming webhook."""

    def __init__(self, client: WebClient | None = None, webhook: WebhookClient | None = None) -> None:
        if (client is None) == (webhook is None):
            raise ValueError("give a WebClient or a WebhookClient")
        self.client = client
        self.webhook = webhook
        self._channel_ids: dict[str, str] = {}

    def send(self, message: OutboxMessage) -> str | None:
        blocks = json.loads(message.blocks)
        if self.webhook is not None:
            return self._send_webhook(message, blocks)
        assert self.client is not None  # noqa: S101  (one of the two is set)
        if message.channel is None:
            raise DeliveryError(
                f"no Slack channel for {message.severity} messages: set slack.channel_{message.severity}",
                transport=False,
            )
        posted = message.posted_ref
        try:
            if posted is None and message.attempts > 0:
                posted = self._find_earlier_post(message)  # an attempt whose answer never came may be there
            if posted is None:
                response = self.client.chat_postMessage(
                    channel=message.channel, text=message.text, blocks=blocks, metadata=_metadata(message)
                )
                posted = f"{response['channel']}:{response['ts']}"
            if message.attachment is not None:
                channel_id, _, ts = posted.partition(":")
                self.client.files_upload_v2(
                    channel=channel_id,
                    thread_ts=ts,
                    content=message.attachment,
                    filename=message.attachment_name or "chart.png",
                    title=message.attachment_name or "chart",
                )
        except SlackApiError as exc:
            raise _api_error(exc, posted) from None
        except (URLError, OSError, SlackClientError) as exc:
            raise DeliveryError(f"Slack is unreachable: {exc}", transport=True, posted_ref=posted) from None
        return posted

    def _find_earlier_post(self, message: OutboxMessage) -> str | None:
        """`channel:ts` of a post of this outbox message that arrived although its answer never came,
        found by its metadata in the channel's history; None when it is not there (post it now).

        A history that cannot be read (a missing `channels:history` scope) is logged and taken as
        "not there": a possible duplicate is better than a lost alert."""
        assert self.client is not None and message.channel is not None  # noqa: S101
        try:
            channel = self._channel_id(message.channel)
            if channel is None:
                log.warning("slack: channel %s not found; cannot check for an earlier post", message.channel)
                return None
            cursor: str | None = None
            for _ in range(HISTORY_PAGES):
                page = self.client.conversations_history(
                    channel=channel,
                    oldest=f"{message.created_ts - HISTORY_SLACK_S:.6f}",
                    include_all_metadata=True,
                    limit=200,
                    cursor=cursor,
                )
                for item in page.get("messages") or []:
                    if _is_ours(item, message):
                        return f"{channel}:{item['ts']}"
                cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
                if not page.get("has_more") or cursor is None:
                    break
        except SlackApiError as exc:
            log.warning(
                "slack: cannot read back %s to check for an earlier post (%s); posting again: add the "
                "channels:history scope for exactly-once delivery",
                message.channel,
                _api_error(exc),
            )
        return None

    def _channel_id(self, channel: str) -> str | None:
        """A channel's ID: as configured, or looked up by name (`#gpu-cost`) once."""
        if _CHANNEL_ID.match(channel):
            return channel
        name = channel.lstrip("#")
        if name in self._channel_ids:
            return self._channel_ids[name]
        assert self.client is not None  # noqa: S101
        cursor: str | None = None
        for _ in range(HISTORY_PAGES):
            page = self.client.conversations_list(
                types="public_channel,private_channel", exclude_archived=True, limit=1000, cursor=cursor
            )
            for item in page.get("channels") or []:
                self._channel_ids[str(item.get("name"))] = str(item.get("id"))
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
            if name in self._channel_ids or cursor is None:
                break
        return self._channel_ids.get(name)

    def _send_webhook(self, message: OutboxMessage, blocks: list[dict[str, Any]]) -> str | None:
        assert self.webhook is not None  # noqa: S101
        try:
            response = self.webhook.send(text=message.text, blocks=blocks)
        except (URLError, OSError, SlackClientError) as exc:
            raise DeliveryError(
                f"the Slack webhook is unreachable: {exc} ({WEBHOOK_AT_LEAST_ONCE})", transport=True
            ) from None
        if response.status_code != 200:
            transport = response.status_code == 429 or response.status_code >= 500
            raise DeliveryError(
                f"the Slack webhook refused the message: HTTP {response.status_code} {response.body}",
                transport=transport,
            )
        return "webhook"  # a webhook cannot upload files: the digest's chart stays in `auditor digest`


def _metadata(message: OutboxMessage) -> dict[str, Any]:
    return {
        "event_type": METADATA_EVENT,
        "event_payload": {"outbox_id": message.id, "key": message.key, "created_ts": message.created_ts},
    }


def _is_ours(item: Mapping[str, Any], message: OutboxMessage) -> bool:
    metadata = item.get("metadata") or {}
    payload = metadata.get("event_payload") or {}
    return (
        metadata.get("event_type") == METADATA_EVENT
        and payload.get("outbox_id") == message.id
        and payload.get("key") == message.key
        and _same_time(payload.get("created_ts"), message.created_ts)
    )


def _same_time(value: Any, created_ts: float) -> bool:
    """The payload's time is the message's (to a millisecond: Slack may hand numbers back reformatted)."""
    try:
        return abs(float(value) - created_ts) < 1e-3
    except (TypeError, ValueError):
        return False


def read_token(slack: SlackConfig, env: Mapping[str, str]) -> str | None:
    """The bot token from `slack.token_file`, else the variable `slack.token_env`; None if neither."""
    if slack.token_file is not None:
        try:
            token = slack.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SlackConfigError(
                f"slack.token_file {slack.token_file} cannot be read ({exc.strerror}); "
                "fix its path or permissions"
            ) from None
        if not token:
            raise SlackConfigError(f"slack.token_file {slack.token_file} is empty; put the bot token in it")
        return token
    return env.get(slack.token_env) or None


def slack_sender(
    slack: SlackConfig,
    env: Mapping[str, str] | None = None,
    *,
    base_url: str | None = None,
    max_retries: int = 3,
    backoff_s: float = 1.0,
    backoff_cap_s: float = 30.0,
    timeout_s: int = 30,
) -> SlackSender | None:
    """The sender the config asks for, or None when no token and no webhook URL is configured.
    `base_url` overrides `slack.api_base_url` (the Web API's address, for GovSlack or a proxy)."""
    env = os.environ if env is None else env
    handlers = retry_handlers(max_retries, backoff_s, backoff_cap_s)
    if slack.webhook_url_env is not None:
        url = env.get(slack.webhook_url_env)
        if not url:
            raise SlackConfigError(
                f"slack.webhook_url_env names {slack.webhook_url_env}, which is not set; "
                "export the webhook URL"
            )
        log.info("slack: incoming webhook: %s", WEBHOOK_AT_LEAST_ONCE)
        return SlackSender(webhook=WebhookClient(url, timeout=timeout_s, retry_handlers=handlers))
    token = read_token(slack, env)
    if token is None:
        return None
    kwargs: dict[str, Any] = {"token": token, "timeout": timeout_s, "retry_handlers": handlers}
    base_url = base_url or slack.api_base_url
    if base_url is not None:
        kwargs["base_url"] = base_url
    return SlackSender(client=WebClient(**kwargs))
