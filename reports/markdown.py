"""The report as Markdown, for pasting into a ticket: the totals, a table per deployment, the advice."""

from __future__ import annotations

from auditor.costing import monthly_saving, token_splits
from auditor.units import format_saving, format_share, format_tokens, format_usd
from reports.labels import ShownCosts, gap_text, header_notes, report_state, shown_costs, total_line
from reports.monthly import DeploymentMonth, MonthReport

_MARKDOWN_SPECIAL = str.maketrans(
    {c: f"\\{c}" for c in "\\`*_[]|#"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"}
)


def md(text: str) -> str:
    """A name as literal text: no raw HTML, link, emphasis or table cell break can come from it."""
    return text.translate(_MARKDOWN_SPECIAL)


def _deployment(d: DeploymentMonth, shown: ShownCosts) -> list[str]:
    c = d.cost
    raw = format_usd(shown.deployments[d.name]) if c.cost_known else "no billing data (—)"
    lines = [
        f"### {md(d.name)} — {md(d.config.model)} on {d.config.billed_gpus}× {md(d.config.gpu_type)}",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| raw compute (billed) | {raw} |",
        f"| TCO (with {format_usd(shown.overheads[d.name])} overheads) | {format_usd(shown.tco(d.name))} |",
        f"| GPU-hours billed / observed / idle / unknown | {c.hours.billed:,.1f} / {c.hours.observed:,.1f}"
        f" / {c.hours.idle:,.1f} / {c.hours.unknown:,.1f} |",
        f"| utilization ({c.utilization_metric.value}) | {format_share(c.utilization)} |",
        f"| tokens (prompt + generated) | {format_tokens(c.prompt_tokens)}"
        f" + {format_tokens(c.generation_tokens)} |",
        f"| observed GPU-hours / paid-for (coverage) | {format_share(c.coverage)} |",
        f"| cost per Mtok, observed hours (raw / TCO) | {format_usd(c.cost_per_mtok_usd)}"
        f" / {format_usd(c.tco_per_mtok_usd)} |",
        f"| idle cost | {format_usd(c.idle_cost_usd)} |",
        *(
            f"| {s.basis} basis: $/Mtok input / output (split by {s.method}) |"
            f" {format_usd(s.input_mtok_usd)} / {format_usd(s.output_mtok_usd)} |"
            for s in token_splits(c)
        ),
    ]
    if c.apis:
        lines += [
            "",
            "| API | same tokens | moving would | break-even utilization | break-even tokens/month |",
            "|---|---:|---:|---:|---:|",
        ]
        for a in c.apis:
            saving = monthly_saving(c, a)
            verdict = ("save " if saving.usd > 0 else "cost ") + format_saving(saving)
            lines.append(
                f"| {md(a.price.ref)} | {format_usd(a.usd)} | {verdict}"
                f" | {format_share(a.breakeven_utilization)}"
                f" | {format_tokens(a.breakeven_tokens_per_month)} |"
            )
    gap = gap_text(c)
    if gap:
        lines += ["", f"> {gap}"]
    if d.disagreement:
        lines += ["", f"> {md(d.disagreement)}"]
    if d.findings:
        lines += ["", "**Recommendations**", ""]
        for f in d.findings:
            lines.append(f"- **{f.severity.value}** `{f.rule}`: {md(f.text)}")
            lines += [f"  - instead: {md(a.text)} (excludes the above, not added)" for a in f.alternatives]
    return [*lines, ""]


def render_markdown(report: MonthReport) -> str:
    shown = shown_costs(report)
    lines = [
        f"## GPU cost report {report.month} ({report_state(report)})",
        "",
        total_line(report)[:1].upper()
        + total_line(report)[1:]
        + (" — includes estimates (list prices or bills not yet final)" if report.estimated else ""),
        "",
        *(f"> {md(note)}\n" for note in header_notes(report)),
        "| deployment | raw compute | TCO | utilization | cost per Mtok | cheapest API | idle cost |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d in report.deployments:
        c = d.cost
        cheapest = c.cheapest_api
        lines.append(
            f"| {md(d.name)} | {format_usd(shown.deployments[d.name])} | {format_usd(shown.tco(d.name))}"
            f" | {format_share(c.utilization)}"
            f" ({c.utilization_metric.value}) | {format_usd(c.cost_per_mtok_usd)}"
            f" | {format_usd(cheapest.usd) + ' ' + md(cheapest.price.ref) if cheapest else '—'}"
            f" | {format_usd(c.idle_cost_usd)} |"
        )
    if not report.filtered_to:
        lines.append(f"| (unattributed) | {format_usd(shown.unattributed)} | | | | | |")
    lines += ["", *[line for d in report.deployments for line in _deployment(d, shown)]]
    if report.other_findings:
        lines += ["### Other findings", ""]
        lines += [
            f"- **{f.severity.value}** `{f.rule}` ({md(f.subject)}): {md(f.text)}"
            for f in report.other_findings
        ]
    lines += ["", f"**{report.at_stake_text}**"]
    return "\n".join(lines).rstrip() + "\n"
