"""The report as Markdown, for pasting into a ticket: the totals, a table per deployment, the advice."""

from __future__ import annotations

from auditor.units import format_share, format_tokens, format_usd
from reports.monthly import DeploymentMonth, MonthReport

_MARKDOWN_SPECIAL = str.maketrans(
    {c: f"\\{c}" for c in "\\`*_[]|#"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"}
)


def md(text: str) -> str:
    """A name as literal text: no raw HTML, link, emphasis or table cell break can come from it."""
    return text.translate(_MARKDOWN_SPECIAL)


def _status(report: MonthReport) -> str:
    if report.partial:
        return f"partial: up to {report.end:%Y-%m-%d %H:%M} {report.timezone}"
    return f"complete month, {report.timezone}"


def _deployment(d: DeploymentMonth) -> list[str]:
    c = d.cost
    lines = [
        f"### {md(d.name)} — {md(d.config.model)} on {d.config.billed_gpus}× {md(d.config.gpu_type)}",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| raw compute | {format_usd(c.cost_usd)} |",
        f"| TCO (with {format_usd(c.overhead_usd)} overheads) | {format_usd(c.tco_usd)} |",
        f"| GPU-hours billed / observed / idle / unknown | {c.hours.billed:,.1f} / {c.hours.observed:,.1f}"
        f" / {c.hours.idle:,.1f} / {c.hours.unknown:,.1f} |",
        f"| utilization ({c.utilization_metric.value}) | {format_share(c.utilization)} |",
        f"| tokens (prompt + generated) | {format_tokens(c.prompt_tokens)}"
        f" + {format_tokens(c.generation_tokens)} |",
        f"| cost per Mtok (raw / TCO) | {format_usd(c.cost_per_mtok_usd)}"
        f" / {format_usd(c.tco_per_mtok_usd)} |",
        f"| idle cost | {format_usd(c.idle_cost_usd)} |",
    ]
    if c.apis:
        lines += [
            "",
            "| API | same tokens | moving would | break-even utilization | break-even tokens/month |",
            "|---|---:|---:|---:|---:|",
        ]
        for a in c.apis:
            verdict = ("save " if a.savings_usd > 0 else "cost ") + format_usd(abs(a.savings_usd))
            lines.append(
                f"| {md(a.price.ref)} | {format_usd(a.usd)} | {verdict}"
                f" | {format_share(a.breakeven_utilization)}"
                f" | {format_tokens(a.breakeven_tokens_per_month)} |"
            )
    if d.disagreement:
        lines += ["", f"> {md(d.disagreement)}"]
    if d.findings:
        lines += ["", "**Recommendations**", ""]
        for f in d.findings:
            money = f" ({format_usd(f.usd_per_month)}/month)" if f.usd_per_month is not None else ""
            lines.append(f"- **{f.severity.value}** `{f.rule}`: {md(f.text)}{money}")
            lines += [f"  - instead: {md(a.text)} (excludes the above, not added)" for a in f.alternatives]
    return [*lines, ""]


def render_markdown(report: MonthReport) -> str:
    lines = [
        f"## GPU cost report {report.month} ({_status(report)})",
        "",
        f"Total billed: **{format_usd(report.total_cost_usd)}**, of which unattributed: "
        f"**{format_usd(report.unattributed_cost_usd)}**"
        + (" — includes estimates (list prices or bills not yet final)" if report.estimated else ""),
        "",
        "| deployment | raw compute | TCO | utilization | cost per Mtok | cheapest API | idle cost |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d in report.deployments:
        c = d.cost
        cheapest = c.cheapest_api
        lines.append(
            f"| {md(d.name)} | {format_usd(c.cost_usd)} | {format_usd(c.tco_usd)}"
            f" | {format_share(c.utilization)}"
            f" ({c.utilization_metric.value}) | {format_usd(c.cost_per_mtok_usd)}"
            f" | {format_usd(cheapest.usd) + ' ' + md(cheapest.price.ref) if cheapest else '—'}"
            f" | {format_usd(c.idle_cost_usd)} |"
        )
    lines.append(f"| (unattributed) | {format_usd(report.unattributed_cost_usd)} | | | | | |")
    lines += ["", *[line for d in report.deployments for line in _deployment(d)]]
    if report.other_findings:
        lines += ["### Other findings", ""]
        lines += [
            f"- **{f.severity.value}** `{f.rule}` ({md(f.subject)}): {md(f.text)}"
            for f in report.other_findings
        ]
    lines += ["", f"**{report.at_stake_text}**"]
    return "\n".join(lines).rstrip() + "\n"
