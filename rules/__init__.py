"""Rules: one module per rule, thresholds from config.

`rules.contract` is what a rule is given and returns; `rules.registry` is the one explicit list of
rules (nothing registers itself at import time); `rules.merge` makes their findings one action per
deployment and adds them up. `run` evaluates the enabled rules (or those named) and merges them;
`evaluate` is its list of findings.
"""

from __future__ import annotations

from collections.abc import Sequence

from auditor.model import Finding
from rules.common import no_verdict
from rules.contract import Rule, RuleContext
from rules.merge import AtStake, Evaluation, at_stake, at_stake_line, merge, rank
from rules.registry import RULES, rule_named, rule_names, select

# Read (not imported) at start-up by auditor.installation: this package is gpu-auditor's.
__distribution__ = "gpu-auditor"

__all__ = [
    "RULES",
    "AtStake",
    "Evaluation",
    "Rule",
    "RuleContext",
    "at_stake",
    "at_stake_line",
    "evaluate",
    "no_verdict",
    "rank",
    "rule_named",
    "rule_names",
    "run",
    "select",
]


def run(context: RuleContext, names: Sequence[str] | None = None) -> Evaluation:
    """Run the enabled rules (only those in `names`, when given) and merge their findings: one action
    per deployment, the agreeing rules cited, exclusive actions ranked, most dollars first."""
    selected = select(names, context.config.rules)
    findings: list[Finding] = []
    with context.store.one_pass():  # the rules' windows share one read of the tier
        for rule in selected:
            findings.extend(rule().evaluate(context))
    return merge(
        findings,
        {rule.name: rule.action for rule in RULES},
        {rule.name for rule in selected},
        {d.name for d in context.config.deployments},
    )


def evaluate(context: RuleContext, names: Sequence[str] | None = None) -> list[Finding]:
    """The merged findings of `run`, ranked; those that are no verdict (too little data) come last,
    with `verdict` False."""
    return run(context, names).findings
