"""The report as one self-contained HTML file: inline CSS, inline SVG charts, nothing fetched."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from auditor.costing import monthly_saving, token_splits
from auditor.units import format_saving, format_share, format_tokens, format_usd
from reports.charts import deployment_charts
from reports.files import write_atomic
from reports.labels import gap_text, header_notes, report_state, shown_costs, total_line
from reports.monthly import MonthReport


def _hours(value: Decimal | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def _breakeven(value: Decimal | None) -> str:
    if value is None:
        return "— (capacity unknown)"
    return f"{format_share(value)} (never)" if value > 1 else format_share(value)


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("reports", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        usd=format_usd,
        share=format_share,
        tokens=format_tokens,
        hours=_hours,
        breakeven=_breakeven,
        saving=monthly_saving,
        saving_words=format_saving,
        state=report_state,
        total_line=total_line,
        notes=header_notes,
        gap=gap_text,
        splits=token_splits,
    )
    return env


def render_html(report: MonthReport) -> str:
    charts = {d.name: deployment_charts(d) for d in report.deployments}
    return environment().get_template("month.html.j2").render(r=report, charts=charts, s=shown_costs(report))


def write_html(report: MonthReport, path: Path) -> Path:
    return write_atomic(path, render_html(report))
