"""The registry: the one explicit list of rules, and which of them a run evaluates.

Nothing registers itself at import time: a new rule is a module and a line in `RULES`.
"""

from __future__ import annotations

from collections.abc import Sequence

from auditor.config import RulesConfig
from rules.below_breakeven import BelowBreakeven
from rules.contract import Rule
from rules.idle_loaded import IdleLoaded
from rules.move_to_api import MoveToApi
from rules.off_hours_idle import OffHoursIdle
from rules.optimize import Optimize
from rules.runaway_spend import RunawaySpend
from rules.saturation import Saturation
from rules.self_host_pays import SelfHostPays

RULES: tuple[type[Rule], ...] = (
    MoveToApi,
    SelfHostPays,
    BelowBreakeven,
    Optimize,
    RunawaySpend,
    IdleLoaded,
    OffHoursIdle,
    Saturation,
)


def rule_names() -> list[str]:
    return [rule.name for rule in RULES]


def rule_named(name: str) -> type[Rule]:
    """The rule called `name` (LookupError when there is none)."""
    for rule in RULES:
        if rule.name == name:
            return rule
    raise LookupError(f"no rule {name!r}")


def _enabled(rules_config: RulesConfig, rule: type[Rule]) -> bool:
    return bool(getattr(rules_config, rule.config_key).enabled)


def select(names: Sequence[str] | None, rules_config: RulesConfig) -> list[type[Rule]]:
    """The rules to run: the enabled ones, or those named (ValueError names the unknown ones)."""
    if names is None:
        return [rule for rule in RULES if _enabled(rules_config, rule)]
    unknown = sorted(set(names) - set(rule_names()))
    if unknown:
        raise ValueError(f"unknown rule(s) {', '.join(unknown)}; the rules are {', '.join(rule_names())}")
    return [rule for rule in RULES if rule.name in names and _enabled(rules_config, rule)]
