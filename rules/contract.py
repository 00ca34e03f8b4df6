"""The rule engine's contract: what a rule is given, what it returns, and how all of them are run.

A rule is a small class with a `name`, its parameters taken from the config, and `evaluate`,
which reads a window of the store and returns findings. `rules.registry` holds the one explicit list
of rules; nothing registers itself at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

from auditor.config import Config
from auditor.gpu_prices import GpuPrice
from auditor.model import Finding
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


class Rule(Protocol):
    name: ClassVar[str]
    config_key: ClassVar[str]
    """The rule's section of `[rules]` in the config (`move_to_api`)."""

    def evaluate(self, context: RuleContext) -> list[Finding]: ...


def rank(findings: Sequence[Finding]) -> list[Finding]:
    """Most dollars first; findings without a dollar figure after, most severe first."""
    severity_order = {"critical": 0, "warning": 1, "info": 2}
    return sorted(
        findings,
        key=lambda f: (
            f.usd_per_month is None,
            -(f.usd_per_month or 0),
            severity_order.get(f.severity.value, 3),
            f.rule,
            f.subject,
        ),
    )
