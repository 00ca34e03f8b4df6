"""A finding as JSON and back: the alert store's payload, `rules check --json`, the digest's JSON.

Money is a string of the exact Decimal unless the caller asks for another form (a display rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from auditor.model import Action, Alternative, Finding, Severity, Window


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def window_to_json(window: Window) -> dict[str, Any]:
    return {
        "start_ts": window.start_ts,
        "end_ts": window.end_ts,
        "observed_h": window.observed_h,
        "expected_h": window.expected_h,
        "unit": window.unit,
        "coverage": window.coverage,
    }


def finding_to_json(finding: Finding, money: Callable[[Decimal], Any] = str) -> dict[str, Any]:
    """Every field of the finding; `money` turns a Decimal into its JSON form (default: exact string)."""

    def usd(value: Decimal | None) -> Any:
        return None if value is None else money(value)

    return {
        "rule": finding.rule,
        "rules": list(finding.rules),
        "subject": finding.subject,
        "deployment": finding.deployment,
        "action": None if finding.action is None else finding.action.value,
        "verdict": finding.verdict,
        "severity": finding.severity.value,
        "title": finding.title,
        "text": finding.text,
        "usd_per_month": usd(finding.usd_per_month),
        "basis": finding.basis,
        "window": None if finding.window is None else window_to_json(finding.window),
        "monthly_cost_usd": usd(finding.monthly_cost_usd),
        "figures": [list(pair) for pair in finding.figures],
        "command": finding.command,
        "merged_subjects": list(finding.merged_subjects),
        "alternatives": [
            {"rule": a.rule, "action": a.action.value, "text": a.text, "usd_per_month": usd(a.usd_per_month)}
            for a in finding.alternatives
        ],
    }


def finding_from_json(data: dict[str, Any]) -> Finding:
    window = data.get("window")
    action = data.get("action")
    return Finding(
        rule=data["rule"],
        subject=data["subject"],
        severity=Severity(data["severity"]),
        title=data["title"],
        text=data["text"],
        usd_per_month=_decimal(data.get("usd_per_month")),
        figures=tuple((str(a), str(b)) for a, b in data.get("figures", [])),
        command=data.get("command"),
        verdict=bool(data.get("verdict", True)),
        deployment=data.get("deployment"),
        action=None if action is None else Action(action),
        window=None
        if window is None
        else Window(
            start_ts=float(window["start_ts"]),
            end_ts=float(window["end_ts"]),
            observed_h=float(window["observed_h"]),
            expected_h=float(window["expected_h"]),
            unit=str(window.get("unit", "GPU-h")),
        ),
        basis=data.get("basis"),
        monthly_cost_usd=_decimal(data.get("monthly_cost_usd")),
        rules=tuple(data.get("rules", ())),
        merged_subjects=tuple(data.get("merged_subjects", ())),
        alternatives=tuple(
            Alternative(
                rule=a["rule"],
                action=Action(a["action"]),
                text=a["text"],
                usd_per_month=_decimal(a.get("usd_per_month")),
            )
            for a in data.get("alternatives", ())
        ),
    )
