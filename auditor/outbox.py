"""The outbox: messages wait in the store's `outbox` table and are marked sent only once the sender
(Slack) accepted them; a message partly delivered (posted, its file not yet uploaded) records how far it
got, so a retry does not post it twice.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Protocol

from auditor.store import OutboxMessage, Store

log = logging.getLogger(__name__)

RETRY_BASE_S = 60.0
RETRY_CAP_S = 3600.0


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


def flush_outbox(
    store: Store, sender: Sender, now_ts: float, *, limit: int = 100, due_ts: float | None = None
) -> Flush:
    """Send what is due, oldest first; a message is marked sent only once the sender accepted it.

    A transport failure stops the flush (the rest waits for the next one); any other failure holds
    that message back with a backoff. Messages about one key arrive in the order they were queued:
    the later ones wait behind one that failed or is waiting for its retry (else a "resolved" held
    back by an outage would arrive after the "firing" that followed it).
    `due_ts` (default now) sends what is due by then: a person asking to send now skips the backoff."""
    sent = failed = 0
    blocked: set[str] = set()
    due = now_ts if due_ts is None else due_ts
    for message in store.outbox_pending(float("inf"), 10 * limit):
        assert message.id is not None  # noqa: S101  (read from the store)
        if message.key in blocked or sent + failed >= limit:
            continue
        if message.next_attempt_ts > due:
            blocked.add(message.key)  # waiting for its retry: the key's later messages wait too
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
