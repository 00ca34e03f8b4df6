"""Rules: one module per rule, thresholds from config.

`rules.contract` is what a rule is given and returns; `rules.registry` is the one explicit list of
rules (nothing registers itself at import time). `evaluate` runs the enabled ones (or those named) and
returns their findings ranked by dollars.
"""

from __future__ import annotations

from collections.abc import Sequence

from auditor.model import Finding
from rules.common import no_verdict
from rules.contract import Rule, RuleContext, rank
from rules.registry import RULES, enabled_names, rule_named, rule_names, select

# Read (not imported) at start-up by auditor.installation: this package is gpu-auditor's.
__distribution__ = "gpu-auditor"

__all__ = [
    "RULES",
    "Rule",
    "RuleContext",
    "enabled_names",
    "evaluate",
    "no_verdict",
    "rank",
    "rule_named",
    "rule_names",
    "select",
]


def evaluate(context: RuleContext, names: Sequence[str] | None = None) -> list[Finding]:
    """Run the enabled rules (only those in `names`, when given) and rank their findings by dollars.

    Findings that are no verdict (too little data) are included, with `verdict` False."""
    findings: list[Finding] = []
    for rule in select(names, context.config.rules):
        findings.extend(rule().evaluate(context))
    return rank(findings)
