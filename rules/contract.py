"""The rule engine's contract: what a rule is given, what it returns, and how all of them are run.

A rule is a small class with a `name`, its parameters taken from the config, and `evaluate`,
which reads a window of the store and returns findings. `rules.registry` holds the one explicit list
of rules; nothing registers itself at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Protocol

from auditor.config import Config
from auditor.costing import hours_from_seconds
from auditor.gpu_prices import GpuPrice
from auditor.model import Action, Finding
from auditor.prices import ApiPriceCatalog
from auditor.store import Store


@dataclass(frozen=True)
class RuleContext:
    """Everything a rule may read. `now` is an aware datetime: rules never read the clock themselves."""

    config: Config
    store: Store
    now: datetime
    api_catalog: ApiPriceCatalog
    gpu_catalog: Sequence[GpuPrice]
    firing: frozenset[tuple[str, str]] = frozenset()
    """(rule, subject) of the alerts firing now: a rule holds these to its *leave* threshold
    (hysteresis), the others to its *enter* threshold."""
    cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    """Windows already costed in this evaluation, shared by the rules that judge the same window."""

    def is_firing(self, rule: str, subject: str) -> bool:
        return (rule, subject) in self.firing

    def month_hours(self) -> Decimal:
        """The real hours of the calendar month `now` falls in (config zone): what projections use."""
        local = self.now.astimezone(self.config.tz)
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
        return hours_from_seconds(end.timestamp() - start.timestamp())


class Rule(Protocol):
    name: ClassVar[str]
    config_key: ClassVar[str]
    """The rule's section of `[rules]` in the config (`move_to_api`)."""
    action: ClassVar[Action]
    """What its findings ask for: findings of one action on one deployment merge into one."""
    announces_resolution: ClassVar[bool]
    """Whether its alert's end is worth a message (runaway spend: yes; an idle GPU put to work: no)."""

    def evaluate(self, context: RuleContext) -> list[Finding]: ...
