"""The alert lifecycle: findings in, state transitions and the notifications they call for out.

An alert is keyed by (rule, subject) and is *firing* or *resolved*; its state lives in the store's
`alerts` table, so a restart neither re-sends nor forgets one. Each cycle:

- a finding for a key opens (or keeps) a firing alert; it is *notified* once, unless the rule's cooldown
  since the key's last message has not passed (then it is notified when it has, if still firing);
- a finding more severe than the one notified is an *escalation*: notified again at once;
- a rule that was evaluated and no longer finds its key *resolves* the alert, with a message if the
  firing was notified;
- a key the rule could not judge (too little data) keeps its state: unknown is neither firing nor fine.

Hysteresis is the rules' part: they are told which keys fire (`RuleContext.firing`) and hold those to
their leave thresholds. The messages a cycle calls for go to the outbox (`auditor.outbox`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from auditor.finding_json import finding_from_json, finding_to_json
from auditor.model import Alert, AlertState, Finding, Severity

SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


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
    announce_resolution: bool = True
    """Whether the end of a notified alert is sent too (runaway spend: yes; a recommendation or an idle
    GPU put back to work: no, the digest tracks those)."""


@dataclass(frozen=True, slots=True)
class Cycle:
    changed: list[Alert]
    notifications: list[Notification]


def key_of(rule: str, subject: str) -> str:
    return f"{rule}|{subject}"


# -- payload: the finding and the notification state, as JSON in the alert row ----------------------


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
    """(rule, subject) of what fires now, for the rules' hysteresis: each alert's own key, and those of
    the rules that agreed in it and the subjects merged into it (the GPUs of one deployment)."""
    keys: set[tuple[str, str]] = set()
    for alert in alerts:
        if alert.state is not AlertState.FIRING:
            continue
        keys.add((alert.rule, alert.subject))
        finding = _payload(alert).finding
        for rule in finding.rules or (alert.rule,):
            for subject in (alert.subject, *finding.merged_subjects):
                keys.add((rule, subject))
    return frozenset(keys)


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
            resolved, note = _on_resolved(alert, now_ts, policy(rule))
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


def _on_resolved(alert: Alert, now_ts: float, policy: AlertPolicy) -> tuple[Alert, Notification | None]:
    payload = _payload(alert)
    announce = payload.notified and policy.announce_resolution
    new = replace(
        alert,
        state=AlertState.RESOLVED,
        last_sent_ts=now_ts if announce else alert.last_sent_ts,
        payload=replace(payload, notified=False, notified_severity=None, resolved_ts=now_ts).dumps(),
    )
    note = Notification(NotificationKind.RESOLVED, new, payload.finding) if announce else None
    return new, note
