"""The finance report's command: `report` (`replay` and `demo` are in `planning`).

The composition root of the report: it opens the store, runs the rules (`rules.evaluate`), builds the
month (`reports.monthly`) and writes each format. `replay` and `demo` feed a store from simulated
traffic (`collectors.replay`) first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

import rules
from auditor.cli.common import (
    ConfigOption,
    JsonOption,
    api_catalog,
    app,
    console,
    fatal,
    gpu_catalog,
    open_store,
    progress_bar,
    require_config,
)
from auditor.config import Config
from auditor.costing import monthly_saving
from auditor.gpu_prices import GpuPrice
from auditor.model import Finding
from auditor.output import render_json
from auditor.prices import ApiPriceCatalog, UnknownModelError
from auditor.store import Store
from auditor.units import format_share, format_tokens, format_usd
from reports.csv_export import write_csv
from reports.files import write_atomic
from reports.html import write_html
from reports.json_form import report_object
from reports.labels import gap_text, header_notes, report_state, saving_words, shown_costs, total_line
from reports.markdown import render_markdown
from reports.monthly import MonthError, MonthReport, NoDataError, build_month_report, month_window
from rules.contract import RuleContext

FORMATS = ("html", "csv", "md", "json")
LAST_SECOND = timedelta(seconds=1)
"""Rules judge a past month as of its last second: the week before its end, and in that month."""


# -- shared -------------------------------------------------------------------------------------


def evaluate_rules(
    config: Config, store: Store, now: datetime, apis: ApiPriceCatalog, gpus: Sequence[GpuPrice]
) -> list[Finding]:
    """The rules' findings at `now`, through the rules package's one entry point."""
    context = RuleContext(config=config, store=store, now=now, api_catalog=apis, gpu_catalog=gpus)
    return rules.evaluate(context)


def month_result(
    config: Config,
    store: Store,
    month: str,
    now: datetime,
    apis: ApiPriceCatalog,
    gpus: Sequence[GpuPrice],
    step: Callable[[str], None],
    only: Sequence[str] | None = None,
) -> MonthReport:
    """The month's report with the rules' findings at its end (or now, in the month still running), in
    one pass: the rules' windows and the month share one read of the quarter-hour tier."""
    window = month_window(month, config.tz, now)
    with store.one_pass():
        step("evaluating rules")
        findings = evaluate_rules(config, store, min(now, window.end - LAST_SECOND), apis, gpus)
        return build_month_report(
            store=store,
            config=config,
            month=month,
            now=now,
            api_catalog=apis,
            gpu_catalog=gpus,
            findings=findings,
            only=only,
            progress=step,
        )


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        fatal(
            f"--format: {', '.join(unknown) or 'nothing'} is not a format;"
            f" use one or more of {','.join(FORMATS)}"
        )
    return formats


def write_report(
    report: MonthReport, formats: Sequence[str], out: Path, step: Callable[[str], None]
) -> list[Path]:
    stem = report.stem
    written: list[Path] = []
    try:
        for fmt in formats:
            step(f"writing {fmt}")
            if fmt == "html":
                written.append(write_html(report, out / f"{stem}.html"))
            elif fmt == "csv":
                written.extend(write_csv(report, out, stem))
            elif fmt == "md":
                written.append(write_atomic(out / f"{stem}.md", render_markdown(report)))
            else:
                written.append(write_atomic(out / f"{stem}.json", render_json(report_object(report))))
    except OSError as exc:
        fatal(f"--out: cannot write the report to {out}: {exc.strerror or exc}; choose a writable directory")
    return written


def print_summary(report: MonthReport, written: Sequence[Path]) -> None:
    out = console()
    out.print(f"GPU cost report {report.month} ({report_state(report)}):", highlight=False)
    out.print(f"  {total_line(report)}", highlight=False)
    for note in header_notes(report):
        out.print(f"  {note}", highlight=False, markup=False)
    shown = shown_costs(report)
    for d in report.deployments:
        c = d.cost
        cheapest = c.cheapest_api
        api = ""
        if cheapest is not None:
            saving = monthly_saving(c, cheapest)
            move = "save" if saving.usd > 0 else "cost"
            api = (
                f"; the same tokens on {cheapest.price.ref}: {format_usd(cheapest.usd)},"
                f" moving would {move} {saving_words(saving)}"
            )
        out.print(
            f"  {d.name}: "
            + (
                f"{format_usd(shown.deployments[d.name])} raw, {format_usd(shown.tco(d.name))} TCO;"
                if c.cost_known
                else "no billing data (—);"
            )
            + " utilization "
            f"{format_share(c.utilization)} ({c.utilization_metric.value});"
            f" {format_tokens(c.tokens) if c.tokens_known else 'unknown'} tokens at "
            f"{format_usd(c.cost_per_mtok_usd)}/Mtok (raw){api}",
            highlight=False,
        )
        gap = gap_text(c)
        if gap:
            out.print(f"    {gap}", highlight=False)
        # A finding's title, not its text: the saving is printed once, above, for this report's window.
        for f in d.findings[:2]:
            out.print(f"    [{f.severity.value}] {f.title}", highlight=False, markup=False)
    for path in written:
        out.print(f"wrote {path}", highlight=False, soft_wrap=True)


# -- auditor report -------------------------------------------------------------------------------


@app.command()
def report(
    month: Annotated[
        str, typer.Option(help="The month, YYYY-MM (in the config's timezone).", show_default=False)
    ],
    formats: Annotated[str, typer.Option("--format", help="Comma-separated: html,csv,md,json.")] = "html,csv",
    out: Annotated[Path, typer.Option(help="Directory to write the report into.")] = Path("."),
    deployment: Annotated[
        list[str] | None, typer.Option(help="Only this deployment (repeat it). Default: all.")
    ] = None,
    config_path: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """The month for finance: cost, idle, cost per token, API equivalents, recommendations.

    Writes one self-contained HTML file (charts embedded), CSV (a row per deployment per day, and a
    summary), Markdown and JSON. With --json, prints the JSON and writes nothing."""
    config = require_config(config_path)
    chosen = parse_formats(formats)
    names = {d.name for d in config.deployments}
    for name in deployment or ():
        if name not in names:
            fatal(
                f"--deployment: no deployment {name!r} in the config;"
                f" configured: {', '.join(sorted(names)) or 'none'}"
            )
    now = datetime.now(tz=UTC)
    try:
        month_window(month, config.tz, now)  # a month the report can cover, before the store opens
    except MonthError as exc:
        fatal(f"--month: {exc}")
    store = open_store(config)
    apis, gpus = api_catalog(config), gpu_catalog()
    try:
        with progress_bar(3 + (0 if as_json else len(chosen))) as step:
            result = month_result(config, store, month, now, apis, gpus, step, only=deployment or None)
            if as_json:
                print(render_json(report_object(result)))
                return
            written = write_report(result, chosen, out, step)
    except UnknownModelError as exc:
        fatal(f"compare_to: {exc}")
    except NoDataError as exc:
        fatal(f"{exc}: nothing was observed or billed in it (see active_from in the config)", code=1)
    finally:
        store.close()
    print_summary(result, written)
