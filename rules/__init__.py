"""Rules: one module per rule, thresholds from config; `rules.registry` holds the contract.

`RULES` is the one explicit list of rules: nothing registers itself at import time. `evaluate` runs
the enabled ones (or those named) and returns their findings ranked by dollars.
"""

from __future__ import annotations

from collections.abc import Sequence

from auditor.config import RulesConfig
from auditor.model import Finding
from rules.below_breakeven import BelowBreakeven
from rules.common import is_no_verdict, no_verdict
from rules.idle_loaded import IdleLoaded
from rules.move_to_api import MoveToApi
from rules.off_hours_idle import OffHoursIdle
from rules.optimize import Optimize
from rules.registry import Rule, RuleContext, rank
from rules.runaway_spend import RunawaySpend
from rules.saturation import Saturation
from rules.self_host_pays import SelfHostPays

# Read (not imported) at start-up by auditor.installation: this package is gpu-auditor's.
__distribution__ = "gpu-auditor"

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

__all__ = [
    "RULES",
    "Rule",
    "RuleContext",
    "enabled_names",
    "evaluate",
    "is_no_verdict",
    "no_verdict",
    "rank",
    "rule_names",
    "select",
]


def rule_names() -> list[str]:
    return [rule.name for rule in RULES]


def _enabled(rules_config: RulesConfig, rule: type[Rule]) -> bool:
    return bool(getattr(rules_config, rule.config_key).enabled)


def enabled_names(rules_config: RulesConfig) -> list[str]:
    return [rule.name for rule in RULES if _enabled(rules_config, rule)]


def select(names: Sequence[str] | None, rules_config: RulesConfig) -> list[type[Rule]]:
    """The rules to run: the enabled ones, or those named (ValueError names the unknown ones)."""
    if names is None:
        return [rule for rule in RULES if _enabled(rules_config, rule)]
    unknown = sorted(set(names) - set(rule_names()))
    if unknown:
        raise ValueError(f"unknown rule(s) {', '.join(unknown)}; the rules are {', '.join(rule_names())}")
    return [rule for rule in RULES if rule.name in names and _enabled(rules_config, rule)]


def evaluate(context: RuleContext, names: Sequence[str] | None = None) -> list[Finding]:
    """Run the enabled rules (only those in `names`, when given) and rank their findings by dollars.

    Findings that are no verdict (too little data) are included: `is_no_verdict` tells them apart."""
    findings: list[Finding] = []
    for rule in select(names, context.config.rules):
        findings.extend(rule().evaluate(context))
    return rank(findings)
