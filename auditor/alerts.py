"""The alert lifecycle and the outbox: findings in, state transitions and messages out.

An alert is keyed by (rule, subject) and is *firing* or *resolved*; its state lives in the store's
`alerts` table, so a restart neither re-sends nor forgets one. Each cycle:

- a finding for a key opens (or keeps) a firing alert; it is *notified* once, unless the rule's cooldown
  since the key's last message has not passed (then it is notified when it has, if still firing);
- a finding more severe than the one notified is an *escalation*: notified again at once;
- a rule that was evaluated and no longer finds its key *resolves* the alert, with a message if the
  firing was notified;
- a key the rule could not judge (too little data) keeps its state: unknown is neither firing nor fine.

Hysteresis is the rules' part: they are told which keys fire (`RuleContext.firing`) and hold those to
their leave thresholds. Messages wait in the `outbox` table and are marked sent only after the sender
(Slack) accepted them; a message partly delivered (posted, its file not yet uploaded) records how far it
got, so a retry does not post it twice.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

from auditor.model import Alert, AlertState, Finding, Severity
from auditor.store import OutboxMessage, Store

log = logging.getLogger(__name__)

SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
RETRY_BASE_S = 60.0
RETRY_CAP_S = 3600.0


class NotificationKind(StrEnum):
    FIRING = "firing"
    ESCALATED = "escalated"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Notification:
    """A message an alert's transition calls for; `finding` is the latest one (for resolved: the last)."""

    kind: NotificationKind
    alert: Alert
    finding: Finding


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """How one rule's alerts are notified."""

    cooldown_s: float
    notify: frozenset[Severity]
    """Severities that are sent; empty when nothing can be sent (no Slack configured)."""


@dataclass(frozen=True, slots=True)
class Cycle:
    changed: list[Alert]
    notifications: list[Notification]


def key_of(rule: str, subject: str) -> str:
    return f"{rule}|{subject}"


# -- payload: the finding and the notification state, as JSON in the alert row ----------------------


def finding_to_json(finding: Finding) -> dict[str, Any]:
    return {
        "rule": finding.rule,
        "subject": finding.subject,
        "severity": finding.severity.value,
        "title": finding.title,
        "text": finding.text,
        "usd_per_month": None if finding.usd_per_month is None else str(finding.usd_per_month),
        "figures": [list(pair) for pair in finding.figures],
        "command": finding.command,
    }


def finding_from_json(data: dict[str, Any]) -> Finding:
    usd = data.get("usd_per_month")
    return Finding(
        rule=data["rule"],
        subject=data["subject"],
        severity=Severity(data["severity"]),
        title=data["title"],
        text=data["text"],
        usd_per_month=None if usd is None else Decimal(usd),
        figures=tuple((str(a), str(b)) for a, b in data.get("figures", [])),
        command=data.get("command"),
    )


@dataclass(frozen=True, slots=True)
class _Payload:
    finding: Finding
    notified: bool
    """The current firing episode has been announced (so its resolution will be too)."""
    notified_severity: Severity | None
    resolved_ts: float | None = None

    def dumps(self) -> str:
        return json.dumps(
            {
                "finding": finding_to_json(self.finding),
                "notified": self.notified,
                "notified_severity": None if self.notified_severity is None else self.notified_severity.value,
                "resolved_ts": self.resolved_ts,
            },
            sort_keys=True,
        )


def _payload(alert: Alert) -> _Payload:
    data = json.loads(alert.payload)
    severity = data.get("notified_severity")
    return _Payload(
        finding=finding_from_json(data["finding"]),
        notified=bool(data.get("notified")),
        notified_severity=None if severity is None else Severity(severity),
        resolved_ts=data.get("resolved_ts"),
    )


def last_finding(alert: Alert) -> Finding:
    """The finding an alert last carried (what a resolved message, or a status page, shows)."""
    return _payload(alert).finding


def firing_keys(alerts: Sequence[Alert]) -> frozenset[tuple[str, str]]:
    return frozenset((a.rule, a.subject) for a in alerts if a.state is AlertState.FIRING)


# -- the lifecycle --------------------------------------------------------------------------------


def advance(
    current: Sequence[Alert],
    findings: Sequence[Finding],
    undecided: Collection[tuple[str, str]],
    evaluated: Collection[str],
    now_ts: float,
    policy: Callable[[str], AlertPolicy],
) -> Cycle:
    """One cycle: the alerts' new states and the messages due, from the findings of the rules in
    `evaluated`. `undecided` are (rule, subject) keys those rules could not judge: left as they are."""
    existing = {(a.rule, a.subject): a for a in current}
    found: dict[tuple[str, str], Finding] = {}
    for finding in findings:
        key = (finding.rule, finding.subject)
        if key not in found or SEVERITY_RANK[finding.severity] > SEVERITY_RANK[found[key].severity]:
            found[key] = finding
    changed: list[Alert] = []
    notifications: list[Notification] = []
    for key, finding in sorted(found.items()):
        alert, note = _on_finding(existing.get(key), finding, now_ts, policy(finding.rule))
        changed.append(alert)
        if note is not None:
            notifications.append(note)
    for key, alert in sorted(existing.items()):
        rule, _subject = key
        if (
            alert.state is AlertState.FIRING
            and rule in evaluated
            and key not in found
            and key not in undecided
        ):
            resolved, note = _on_resolved(alert, now_ts)
            changed.append(resolved)
            if note is not None:
                notifications.append(note)
    return Cycle(changed=changed, notifications=notifications)


def _on_finding(
    alert: Alert | None, finding: Finding, now_ts: float, policy: AlertPolicy
) -> tuple[Alert, Notification | None]:
    if alert is None or alert.state is AlertState.RESOLVED:
        payload = _Payload(finding=finding, notified=False, notified_severity=None)
        first_seen = now_ts
        last_sent = None if alert is None else alert.last_sent_ts
    else:
        payload = replace(_payload(alert), finding=finding)
        first_seen = alert.first_seen_ts
        last_sent = alert.last_sent_ts
    kind: NotificationKind | None = None
    sendable = finding.severity in policy.notify
    if sendable and not payload.notified:
        if last_sent is None or now_ts - last_sent >= policy.cooldown_s:
            kind = NotificationKind.FIRING
    elif (
        sendable
        and payload.notified_severity is not None
        and SEVERITY_RANK[finding.severity] > SEVERITY_RANK[payload.notified_severity]
    ):
        kind = NotificationKind.ESCALATED  # an escalation skips the cooldown
    if kind is not None:
        payload = replace(payload, notified=True, notified_severity=finding.severity)
        last_sent = now_ts
    new = Alert(
        rule=finding.rule,
        subject=finding.subject,
        state=AlertState.FIRING,
        severity=finding.severity.value,
        first_seen_ts=first_seen,
        last_seen_ts=now_ts,
        last_sent_ts=last_sent,
        payload=payload.dumps(),
    )
    return new, None if kind is None else Notification(kind, new, finding)


def _on_resolved(alert: Alert, now_ts: float) -> tuple[Alert, Notification | None]:
    payload = _payload(alert)
    announce = payload.notified
    new = replace(
        alert,
        state=AlertState.RESOLVED,
        last_sent_ts=now_ts if announce else alert.last_sent_ts,
        payload=replace(payload, notified=False, notified_severity=None, resolved_ts=now_ts).dumps(),
    )
    note = Notification(NotificationKind.RESOLVED, new, payload.finding) if announce else None
    return new, note


# -- the outbox ------------------------------------------------------------------------------------


class DeliveryError(Exception):
    """The sender could not deliver a message. `transport`: the service is unreachable or failing
    (stop for now, everything else would fail too); `posted_ref`: a part already delivered."""

    def __init__(self, message: str, *, transport: bool, posted_ref: str | None = None) -> None:
        super().__init__(message)
        self.transport = transport
        self.posted_ref = posted_ref


class Sender(Protocol):
    def send(self, message: OutboxMessage) -> str | None:
        """Deliver the message; return the service's reference for it (Slack's `ts`), or raise
        DeliveryError. A message with `posted_ref` was posted already: only its attachment remains."""
        ...


@dataclass(frozen=True, slots=True)
class Flush:
    sent: int
    failed: int
    pending: int
    """Messages still waiting after this flush."""


def retry_delay_s(attempts: int, rng: random.Random | None = None) -> float:
    """Backoff before the next attempt: doubling from a minute, capped at an hour, with ±20% jitter."""
    base: float = min(RETRY_CAP_S, RETRY_BASE_S * 2.0 ** max(attempts - 1, 0))
    jitter: float = (rng or random.Random()).random()  # noqa: S311  (jitter, not secrets)
    return base * (0.8 + 0.4 * jitter)


def flush_outbox(store: Store, sender: Sender, now_ts: float, *, limit: int = 100) -> Flush:
    """Send what is due, oldest first; a message is marked sent only once the sender accepted it.

    A transport failure stops the flush (the rest waits for the next one); any other failure holds
    that message back with a backoff, and the later messages about the same key wait behind it."""
    sent = failed = 0
    blocked: set[str] = set()
    for message in store.outbox_pending(now_ts, limit):
        assert message.id is not None  # noqa: S101  (read from the store)
        if message.key in blocked:
            continue
        try:
            ref = sender.send(message)
        except DeliveryError as exc:
            failed += 1
            blocked.add(message.key)
            delay = retry_delay_s(message.attempts + 1)
            store.outbox_mark_failed(
                message.id, str(exc), now_ts + delay, exc.posted_ref or message.posted_ref
            )
            log.warning(
                "slack: message %s (%s %s) not delivered, retry in %.0f s: %s",
                message.id,
                message.kind,
                message.key,
                delay,
                exc,
            )
            if exc.transport:
                break
            continue
        store.outbox_mark_sent(message.id, now_ts, ref)
        sent += 1
    pending = len(store.outbox_pending(float("inf"), limit=10_000))
    return Flush(sent=sent, failed=failed, pending=pending)
