"""The alert lifecycle and its outbox, persisted in a real SQLite store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal

from auditor.alert_lifecycle import (
    AlertPolicy,
    NotificationKind,
    advance,
    firing_keys,
    last_finding,
)
from auditor.model import AlertState, Finding, Severity
from auditor.store import SCHEMA_VERSION, OutboxMessage, Store

SEND_ALL = AlertPolicy(cooldown_s=3600, notify=frozenset(Severity))


def finding(severity: Severity = Severity.WARNING, usd: str = "100") -> Finding:
    return Finding(
        rule="move-to-api",
        subject="rag",
        severity=severity,
        title="rag is underused",
        text="Move rag to the API.",
        usd_per_month=Decimal(usd),
        figures=(("utilization", "13%"),),
    )


def cycle(
    store: Store, findings: Sequence[Finding], now_ts: float, undecided: Sequence[tuple[str, str]] = ()
) -> list[NotificationKind]:
    """One cycle as `alert_cycle` runs it: advance, then save states and messages together."""
    result = advance(store.alerts(), findings, set(undecided), {"move-to-api"}, now_ts, lambda _r: SEND_ALL)
    messages = [
        OutboxMessage(
            key=f"{n.alert.rule}|{n.alert.subject}",
            kind=n.kind.value,
            severity=n.finding.severity.value,
            channel="#c",
            text=n.finding.title,
            blocks="[]",
            created_ts=now_ts,
        )
        for n in result.notifications
    ]
    store.save_alert_changes(result.changed, messages)
    return [n.kind for n in result.notifications]


def open_store(url: str) -> Store:
    return Store.open(url)


def test_fires_once_resolves_once_and_survives_restarts(store_url: str) -> None:
    store = open_store(store_url)
    assert cycle(store, [finding()], 0) == [NotificationKind.FIRING]
    store.close()
    for minute in range(1, 5):  # a restart between cycles re-sends nothing
        store = open_store(store_url)
        assert cycle(store, [finding(usd=str(100 + minute))], minute * 60) == []
        store.close()
    store = open_store(store_url)
    (alert,) = store.alerts()
    assert alert.state is AlertState.FIRING and alert.first_seen_ts == 0 and alert.last_seen_ts == 240
    assert last_finding(alert).usd_per_month == Decimal(104)
    assert firing_keys(store.alerts()) == {("move-to-api", "rag")}
    assert cycle(store, [], 300) == [NotificationKind.RESOLVED]
    assert cycle(store, [], 360) == []
    assert [m.kind for m in store.outbox_messages()] == ["firing", "resolved"]


def test_no_verdict_keeps_the_state(store_url: str) -> None:
    store = open_store(store_url)
    cycle(store, [finding()], 0)
    assert cycle(store, [], 60, undecided=[("move-to-api", "rag")]) == []
    assert store.alerts()[0].state is AlertState.FIRING


def test_cooldown_holds_a_refire_back_until_it_has_passed(store_url: str) -> None:
    store = open_store(store_url)
    assert cycle(store, [finding()], 0) == [NotificationKind.FIRING]
    assert cycle(store, [], 600) == [NotificationKind.RESOLVED]
    assert cycle(store, [finding()], 1200) == []  # within the hour after the resolved message
    assert cycle(store, [], 1800) == []  # never announced: its resolution is not announced either
    assert cycle(store, [finding()], 2400) == []
    assert cycle(store, [finding()], 600 + 3600) == [NotificationKind.FIRING]  # cooldown over, still firing


def test_escalation_notifies_at_once_and_only_upwards(store_url: str) -> None:
    store = open_store(store_url)
    assert cycle(store, [finding(Severity.WARNING)], 0) == [NotificationKind.FIRING]
    assert cycle(store, [finding(Severity.CRITICAL)], 60) == [NotificationKind.ESCALATED]
    assert cycle(store, [finding(Severity.WARNING)], 120) == []
    assert cycle(store, [finding(Severity.CRITICAL)], 180) == []
    assert store.alerts()[0].severity == "critical"


def test_severities_not_sent_are_tracked_and_announced_when_they_rise(store_url: str) -> None:
    store = open_store(store_url)
    quiet = AlertPolicy(cooldown_s=0, notify=frozenset({Severity.WARNING, Severity.CRITICAL}))
    result = advance([], [finding(Severity.INFO)], set(), {"move-to-api"}, 0, lambda _r: quiet)
    assert result.notifications == []
    store.save_alert_changes(result.changed, [])
    result = advance(
        store.alerts(), [finding(Severity.WARNING)], set(), {"move-to-api"}, 60, lambda _r: quiet
    )
    assert [n.kind for n in result.notifications] == [NotificationKind.FIRING]


def test_rules_not_evaluated_leave_their_alerts_alone(store_url: str) -> None:
    store = open_store(store_url)
    cycle(store, [finding()], 0)
    result = advance(store.alerts(), [], set(), {"runaway-spend"}, 60, lambda _r: SEND_ALL)
    assert result.changed == [] and result.notifications == []


def test_outbox_marks_sent_only_what_was_accepted(store_url: str) -> None:
    store = open_store(store_url)
    first = store.enqueue(OutboxMessage("k", "firing", "warning", "#c", "t", "[]", created_ts=0))
    store.enqueue(OutboxMessage("k2", "firing", "warning", "#c", "t", "[]", created_ts=0))
    store.outbox_mark_failed(first, "HTTP 500", next_attempt_ts=100, posted_ref=None)
    assert [m.key for m in store.outbox_pending(50)] == ["k2"]
    assert [m.key for m in store.outbox_pending(100)] == ["k", "k2"]
    store.outbox_mark_sent(first, 100, "C1:1.0")
    assert [m.key for m in store.outbox_pending(100)] == ["k2"]
    assert store.prune_outbox(before_ts=200) == 1
    assert [replace(m, id=None).key for m in store.outbox_messages()] == ["k2"]


def test_a_version_1_store_migrates_to_the_outbox(store_url: str) -> None:
    from sqlalchemy import inspect

    from auditor.store import MIGRATIONS, schema_version

    store = Store(Store.open(store_url, migrate=False).engine)
    with store.engine.begin() as conn:
        MIGRATIONS[0](conn)
        conn.execute(schema_version.insert().values(version=1, applied_ts=0.0))
    assert "outbox" not in inspect(store.engine).get_table_names()
    assert store.migrate() == SCHEMA_VERSION >= 2
    assert "outbox" in inspect(store.engine).get_table_names()
