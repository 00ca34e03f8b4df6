"""One action per deployment: the rules' findings merged, ranked, and added up honestly.

- Findings that ask for the same action on the same deployment become one, citing the rules that agree
  (`move-to-api` and `below-breakeven` both say "move it to the API": one finding, one saving). Idle GPUs
  of one deployment become one finding whose dollars are the sum of each GPU's.
- The actions that cut what a deployment's GPUs cost (`SAVING_ACTIONS`: move to an API, consolidate,
  scale down off-hours, unload idle GPUs) claim the same dollars: the largest is recommended, the others
  are shown on it as alternatives, never as a second saving.
- `auditor.at_stake` adds up what is left: the recommended savings, each deployment's at most what it
  costs. Runaway spend is money *above* the usual cost: shown beside the total, never in it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from auditor.at_stake import AtStake, at_stake, at_stake_line
from auditor.model import SAVING_ACTIONS, Action, Alternative, Finding, Severity, Window
from auditor.units import format_usd

MERGED_BY_DEPLOYMENT = SAVING_ACTIONS | {Action.KEEP_SELF_HOSTING}
"""Actions judged per deployment: their findings merge into one per deployment."""
EXCLUSIVE = SAVING_ACTIONS
"""Actions that exclude each other on one deployment (each claims the dollars its GPUs cost): one is
recommended, the rest are alternatives. Keeping self-hosting goes with scaling down or consolidating;
it only excludes moving to the API, and the two never both hold (one needs the API cheaper, the other
dearer)."""
_SEVERITY_ORDER = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A run of the rules, merged: what to show, and what the alert lifecycle needs to know."""

    findings: list[Finding]
    """One per (subject, action), ranked by dollars; no-verdicts last (those whose key has no verdict)."""
    undecided: frozenset[tuple[str, str]]
    """(rule, subject) keys that no rule of their action could judge: their alerts keep their state."""
    settled_rules: frozenset[str]
    """Rules whose keys this run settles: a firing alert of theirs not found again resolves."""


def rank(findings: Sequence[Finding]) -> list[Finding]:
    """Verdicts first; most dollars first; findings without a dollar figure after, most severe first."""
    return sorted(
        findings,
        key=lambda f: (
            not f.verdict,
            f.usd_per_month is None,
            -(f.usd_per_month or 0),
            _SEVERITY_ORDER.get(f.severity, 3),
            f.rule,
            f.subject,
        ),
    )


def merge(
    findings: Sequence[Finding],
    actions: Mapping[str, Action],
    evaluated: Collection[str],
    deployments: Collection[str],
) -> Evaluation:
    """Merge the findings of the rules in `evaluated` (rule name → its action in `actions`); a finding
    whose subject is one of `deployments` is about that deployment."""
    canonical: dict[Action, str] = {}
    for rule, action in actions.items():  # the first rule of an action names its merged findings
        canonical.setdefault(action, rule)
    stamped = [_stamp(f, actions[f.rule], deployments) for f in findings]
    verdicts = [f for f in stamped if f.verdict]
    merged = _merge_same_action(verdicts, canonical)
    listed = _one_per_deployment(merged)
    keys = {(f.rule, f.subject) for f in merged}
    undecided_rules: dict[tuple[str, str], set[str]] = defaultdict(set)
    no_verdicts: dict[tuple[str, str], Finding] = {}
    for f in stamped:
        if f.verdict:
            continue
        key = _key(f, canonical)
        undecided_rules[key].add(f.rule)
        no_verdicts.setdefault((f.rule, key[1]), f)
    rules_of: dict[Action, set[str]] = defaultdict(set)
    for rule, action in actions.items():
        if rule in evaluated:
            rules_of[action].add(rule)
    undecided = frozenset(
        key
        for key, rules in undecided_rules.items()
        if key not in keys and rules >= rules_of[actions[key[0]]]
    )
    # A merged key is settled by the rules of its action that ran (a run of some rules judges by those);
    # keys under the other rules' names (left by a version before merging) never come back: they resolve.
    settled = frozenset(canonical[actions[r]] for r in evaluated) | frozenset(evaluated)
    shown_no_verdicts = [f for f in no_verdicts.values() if _key(f, canonical) not in keys]
    return Evaluation(rank([*listed, *shown_no_verdicts]), undecided, settled)


def _stamp(finding: Finding, action: Action, deployments: Collection[str]) -> Finding:
    deployment = finding.deployment
    if deployment is None and finding.subject in deployments:
        deployment = finding.subject
    return replace(
        finding,
        action=finding.action or action,
        deployment=deployment,
        rules=finding.rules or (finding.rule,),
    )


def _key(finding: Finding, canonical: Mapping[Action, str]) -> tuple[str, str]:
    action = finding.action
    assert action is not None  # noqa: S101  (stamped)
    if action in MERGED_BY_DEPLOYMENT and finding.deployment is not None:
        return canonical[action], finding.deployment
    return finding.rule, finding.subject


def _merge_same_action(findings: Sequence[Finding], canonical: Mapping[Action, str]) -> list[Finding]:
    groups: dict[tuple[str, str], list[Finding]] = defaultdict(list)
    for f in findings:
        groups[_key(f, canonical)].append(f)
    merged: list[Finding] = []
    for (rule, subject), group in groups.items():
        if len(group) == 1 and group[0].subject == subject and group[0].rule == rule:
            merged.append(group[0])
        elif group[0].action is Action.UNLOAD_IDLE:
            merged.append(_sum_gpus(rule, subject, group))
        else:
            merged.append(_agree(rule, subject, group))
    return merged


def _agree(rule: str, subject: str, group: Sequence[Finding]) -> Finding:
    """Rules that ask for the same thing: the best-founded figure (the largest), citing all of them."""
    best = rank(group)[0]
    rules = tuple(dict.fromkeys(r for f in group for r in f.rules))
    figures = best.figures
    if len(rules) > 1:
        figures = (*figures, ("rules that agree", ", ".join(rules)))
    return replace(best, rule=rule, subject=subject, rules=rules, figures=figures)


def _sum_gpus(rule: str, deployment: str, group: Sequence[Finding]) -> Finding:
    """Idle GPUs of one deployment: one finding, its dollars the sum of each GPU's."""
    ordered = sorted(group, key=lambda f: f.subject)
    dollars = [f.usd_per_month for f in ordered if f.usd_per_month is not None]
    usd = sum(dollars, Decimal(0)) if dollars else None
    where = ", ".join(_where(f) for f in ordered)
    windows = [f.window for f in ordered if f.window is not None]
    window = (
        Window(
            start_ts=min(w.start_ts for w in windows),
            end_ts=max(w.end_ts for w in windows),
            observed_h=sum(w.observed_h for w in windows),
            expected_h=sum(w.expected_h for w in windows),
        )
        if windows
        else None
    )
    cost = f": {format_usd(usd)}/month at the rate they sat idle" if usd is not None else ""
    count = len(ordered)
    return replace(
        ordered[0],
        rule=rule,
        subject=deployment,
        title=f"{deployment}: {count} GPU{'s' if count > 1 else ''} hold a model and sit idle",
        text=f"Unload the model from {where} or give {'them' if count > 1 else 'it'} work{cost}.",
        usd_per_month=usd,
        severity=max((f.severity for f in ordered), key=lambda s: -_SEVERITY_ORDER[s]),
        window=window,
        figures=tuple(pair for f in ordered for pair in f.figures),
        merged_subjects=tuple(f.subject for f in ordered),
        rules=(rule,),
    )


def _where(finding: Finding) -> str:
    return dict(finding.figures).get("GPU", finding.subject).split(",")[0]


def _one_per_deployment(findings: Sequence[Finding]) -> list[Finding]:
    """On each deployment, the exclusive action with the most dollars; the others as its alternatives."""
    by_deployment: dict[str, list[Finding]] = defaultdict(list)
    kept: list[Finding] = []
    for f in findings:
        if f.action in EXCLUSIVE and f.deployment is not None:
            by_deployment[f.deployment].append(f)
        else:
            kept.append(f)
    for group in by_deployment.values():
        best, *others = rank(group)
        alternatives = tuple(
            Alternative(
                rule=o.rule,
                action=o.action or Action.KEEP_SELF_HOSTING,
                text=o.text,
                usd_per_month=o.usd_per_month,
            )
            for o in others
        )
        kept.append(replace(best, alternatives=alternatives) if alternatives else best)
    return kept


__all__ = ["AtStake", "Evaluation", "at_stake", "at_stake_line", "merge", "rank"]
