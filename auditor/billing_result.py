"""`auditor billing sync`'s result: what each source read, changed and cost (one typed result, rendered
by the one output layer: `--json` writes these fields as they are, money exact; the terminal rounds
once, in `reports.billing_text`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class LinesChanged:
    total: int
    added: int
    removed: int
    changed: int
    unchanged: int


@dataclass(frozen=True, slots=True)
class SyncedSource:
    """One source in `billing sync`'s result (its JSON keys are the field names)."""

    source: str
    kind: str
    origin: str
    first_day: date | None
    """The first day read (None for a FOCUS export, read by billing period)."""
    last_day: date | None
    days_read: int | None
    billing_periods: tuple[date, ...]
    rows_read: int
    lines: LinesChanged
    estimated_days: int | None
    requests: int
    """Paid requests made (Cost Explorer: each page)."""
    requests_usd: Decimal
    by_deployment: dict[str, Decimal]
    """The configured cost metric, USD, per deployment; exact."""
    unattributed_usd: Decimal
    estimate: bool
    """List prices, not a bill (`gcp_catalog`)."""
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SyncFailure:
    source: str
    error: str
    fix: str | None
    permission: str | None


@dataclass(frozen=True, slots=True)
class BillingSyncResult:
    cost_metric: str
    sources: tuple[SyncedSource, ...]
    failures: tuple[SyncFailure, ...]
