"""Findings as lines a reader can check: the window and its coverage, how the dollars were reached, and
the alternatives that were not added. Shared by the terminal, the digest and Slack."""

from __future__ import annotations

from datetime import UTC, datetime

from auditor.model import Finding, Window
from auditor.units import format_share


def window_text(window: Window) -> str:
    """`2026-11-16 00:00 – 2026-11-23 00:00 UTC, observed 336.0 of 336.0 GPU-h (100.0%)`."""
    start = datetime.fromtimestamp(window.start_ts, UTC)
    end = datetime.fromtimestamp(window.end_ts, UTC)
    return (
        f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} UTC, observed {window.observed_h:,.1f} of "
        f"{window.expected_h:,.1f} {window.unit} ({format_share(window.coverage)})"
    )


def alternative_lines(finding: Finding) -> list[str]:
    return [f"instead: {a.text} (excludes the above, not added) [{a.rule}]" for a in finding.alternatives]


def finding_detail_lines(finding: Finding) -> list[str]:
    """What stands under a finding: rules, window, basis, alternatives, figures, where to look."""
    head = f"[{', '.join(finding.rules) or finding.rule} {finding.subject}]"
    lines = [head]
    if finding.window is not None:
        lines.append(f"  window: {window_text(finding.window)}")
    if finding.basis:
        lines.append(f"  basis: {finding.basis}")
    lines += [f"  {line}" for line in alternative_lines(finding)]
    if finding.figures:
        lines.append("  " + "; ".join(f"{label}: {value}" for label, value in finding.figures))
    if finding.command:
        lines.append(f"  more: {finding.command}")
    return lines
