"""Alerts and the weekly digest, end to end: rules → alert lifecycle → outbox → Slack.

A composition root (like `auditor.cli` and `auditor.daemon`): it joins the rules, the reports and the
core. Plain functions with explicit arguments, so that the daemon's scheduler jobs and the CLI call
the same code:

- `alert_cycle(config, store, now, sender)`: evaluate the rules, advance the alerts, queue and send;
- `digest_cycle(config, store, now, sender, week=None)`: build a week's digest and send it once;
- `digest_due(config, store, now)`: the last complete week's digest has not been queued yet (start-up);
- `digest_cron_kwargs(config)`: the `CronTrigger` arguments of `slack.digest_cron`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import rules
from auditor.alert_lifecycle import AlertPolicy, Notification, advance, firing_keys
from auditor.config import Config
from auditor.cron import cron_kwargs
from auditor.gpu_prices import GpuPrice, load_gpu_prices
from auditor.model import Finding, Severity
from auditor.outbox import Flush, Sender, flush_outbox
from auditor.prices import ApiPriceCatalog
from auditor.store import OutboxMessage, Store
from reports.digest import (
    Digest,
    NoWeekDataError,
    build_digest,
    digest_blocks,
    digest_text,
    heatmap_png,
    last_complete_week,
    week_bounds,
)
from reports.slack import SlackSender, alert_message, channel_for, notify_severities

DIGEST_KIND = "digest"


@dataclass(frozen=True, slots=True)
class AlertCycle:
    findings: list[Finding]
    """Every finding of the rules run, no-verdicts included, ranked."""
    notifications: list[Notification]
    flush: Flush | None
    """None when no sender is configured: alerts are tracked, nothing is queued."""


class DigestOutcome(StrEnum):
    """What a digest cycle did with the week's digest, on this run."""

    SENT = "sent"
    """Built and delivered on this run."""
    SENT_QUEUED = "sent-queued"
    """Queued on an earlier run, never delivered then: delivered on this run."""
    SENT_BEFORE = "sent-before"
    """Delivered on an earlier run: not sent again."""
    WAITING = "waiting"
    """Queued, not delivered yet (Slack refused or was unreachable): the outbox retries it."""
    NO_DATA = "no-data"
    """Nothing was observed or billed in the week: nothing to say, not queued."""
    UNKNOWN_WEEK = "unknown-week"
    """Too little of the week was observed: not queued (the daemon never posts such a week)."""
    NO_SENDER = "no-sender"
    """No Slack configured: built, not queued."""


@dataclass(frozen=True, slots=True)
class DigestCycle:
    week: str
    digest: Digest | None
    """None when the week's digest had been queued before (nothing was built again)."""
    outcome: DigestOutcome
    flush: Flush | None
    sent_ts: float | None = None
    """When the week's digest was delivered (on this run or before), if it was."""

    @property
    def queued(self) -> bool:
        """This run queued the week's digest."""
        return self.digest is not None and self.outcome in (DigestOutcome.SENT, DigestOutcome.WAITING)


def rule_context(
    config: Config,
    store: Store,
    now: datetime,
    api_catalog: ApiPriceCatalog | None = None,
    gpu_catalog: Sequence[GpuPrice] | None = None,
) -> rules.RuleContext:
    """What the rules read, with the alerts firing now (for their hysteresis)."""
    return rules.RuleContext(
        config=config,
        store=store,
        now=now,
        api_catalog=api_catalog if api_catalog is not None else ApiPriceCatalog(config.prices.api, now=now),
        gpu_catalog=gpu_catalog if gpu_catalog is not None else load_gpu_prices(),
        firing=firing_keys(store.alerts()),
    )


def sendable_severities(config: Config, sender: Sender | None) -> frozenset[Severity]:
    """Severities that go out: at least `slack.min_severity`, and (for a bot) with a channel to go to."""
    if sender is None:
        return frozenset()
    webhook = isinstance(sender, SlackSender) and sender.webhook is not None
    return frozenset(
        s for s in notify_severities(config.slack) if webhook or channel_for(config.slack, s) is not None
    )


def alert_cycle(
    config: Config,
    store: Store,
    now: datetime,
    sender: Sender | None,
    *,
    names: Sequence[str] | None = None,
    api_catalog: ApiPriceCatalog | None = None,
    gpu_catalog: Sequence[GpuPrice] | None = None,
) -> AlertCycle:
    """Evaluate the rules (the enabled ones, or `names`), advance the alert lifecycle, queue the
    messages it calls for in the same transaction as the new states, then send what is due."""
    context = rule_context(config, store, now, api_catalog, gpu_catalog)
    evaluation = rules.run(context, names)
    findings = evaluation.findings
    verdicts = [f for f in findings if f.verdict]
    severities = sendable_severities(config, sender)

    def policy(rule_name: str) -> AlertPolicy:
        rule = rules.rule_named(rule_name)
        cooldown_h = float(getattr(config.rules, rule.config_key).cooldown_h)
        return AlertPolicy(
            cooldown_s=cooldown_h * 3600, notify=severities, announce_resolution=rule.announces_resolution
        )

    now_ts = now.timestamp()
    cycle = advance(store.alerts(), verdicts, evaluation.undecided, evaluation.settled_rules, now_ts, policy)
    messages = [alert_message(note, config.slack, now_ts) for note in cycle.notifications]
    store.save_alert_changes(cycle.changed, messages)
    flush = flush_outbox(store, sender, now_ts) if sender is not None else None
    return AlertCycle(findings=findings, notifications=cycle.notifications, flush=flush)


def digest_key(week: str) -> str:
    return f"{DIGEST_KIND}|{week}"


def make_digest(
    config: Config,
    store: Store,
    now: datetime,
    week: str | None = None,
    *,
    api_catalog: ApiPriceCatalog | None = None,
    gpu_catalog: Sequence[GpuPrice] | None = None,
) -> Digest:
    """A week's digest (default: the last complete one), its recommendations as of the week's end."""
    tz = config.tz
    week = week or last_complete_week(now, tz)
    _start, end = week_bounds(week, tz)
    context = rule_context(config, store, min(end, now), api_catalog, gpu_catalog)
    findings = [f for f in rules.evaluate(context) if f.verdict]
    return build_digest(config, store, week, context.api_catalog, context.gpu_catalog, findings)


def digest_message(config: Config, digest: Digest, now_ts: float) -> OutboxMessage:
    slack = config.slack
    return OutboxMessage(
        key=digest_key(digest.week),
        kind=DIGEST_KIND,
        severity=Severity.INFO.value,
        channel=slack.digest_channel or slack.channel_info or slack.channel_warning,
        text=digest_text(digest).split("\n", 1)[0],
        blocks=json.dumps(digest_blocks(digest)),
        created_ts=now_ts,
        next_attempt_ts=now_ts,
        attachment=heatmap_png(digest),
        attachment_name=f"gpu-digest-{digest.week}.png",
    )


def digest_cycle(
    config: Config,
    store: Store,
    now: datetime,
    sender: Sender | None,
    week: str | None = None,
    *,
    send_unknown: bool = False,
    retry_now: bool = False,
    api_catalog: ApiPriceCatalog | None = None,
    gpu_catalog: Sequence[GpuPrice] | None = None,
) -> DigestCycle:
    """Queue a week's digest once (default: the last complete week) and send what is due.

    Idempotent: a week already queued (sent or waiting) is not built or queued again, so the daemon may
    call this at start-up and on its cron without ever sending a week twice. A week observed under the
    rules' `min_coverage` is not queued unless `send_unknown` (a person asked for it: `digest --send`);
    `retry_now` sends a digest queued earlier without waiting for its backoff (the outbox is flushed as
    of its next attempt)."""
    week = week or last_complete_week(now, config.tz)
    key = digest_key(week)
    now_ts = now.timestamp()
    earlier = store.outbox_messages(key)
    if earlier:
        delivered = [m.sent_ts for m in earlier if m.sent_ts is not None]
        due_ts = (
            max([now_ts, *(m.next_attempt_ts for m in earlier if m.sent_ts is None)]) if retry_now else now_ts
        )
        flush = flush_outbox(store, sender, now_ts, due_ts=due_ts) if sender is not None else None
        if delivered:
            return DigestCycle(week, None, DigestOutcome.SENT_BEFORE, flush, sent_ts=min(delivered))
        sent_now = _sent_ts(store, key)
        outcome = DigestOutcome.WAITING if sent_now is None else DigestOutcome.SENT_QUEUED
        return DigestCycle(week, None, outcome, flush, sent_ts=sent_now)
    try:
        digest = make_digest(config, store, now, week, api_catalog=api_catalog, gpu_catalog=gpu_catalog)
    except NoWeekDataError:
        return DigestCycle(week, None, DigestOutcome.NO_DATA, None)
    if sender is None:
        return DigestCycle(week, digest, DigestOutcome.NO_SENDER, None)
    if digest.unknown and not send_unknown:
        return DigestCycle(week, digest, DigestOutcome.UNKNOWN_WEEK, None)
    store.enqueue(digest_message(config, digest, now_ts))
    flush = flush_outbox(store, sender, now_ts)
    sent_now = _sent_ts(store, key)
    outcome = DigestOutcome.WAITING if sent_now is None else DigestOutcome.SENT
    return DigestCycle(week, digest, outcome, flush, sent_ts=sent_now)


def _sent_ts(store: Store, key: str) -> float | None:
    return next((m.sent_ts for m in store.outbox_messages(key) if m.sent_ts is not None), None)


def digest_due(config: Config, store: Store, now: datetime) -> bool:
    """The last complete week's digest was never queued: the daemon missed its cron (run it now)."""
    return not store.outbox_messages(digest_key(last_complete_week(now, config.tz)))


def digest_cron_kwargs(config: Config) -> dict[str, object]:
    """`slack.digest_cron` ("0 9 * * mon", cron syntax) as APScheduler `CronTrigger(**kwargs)` arguments."""
    return cron_kwargs(config.slack.digest_cron, config.timezone)
