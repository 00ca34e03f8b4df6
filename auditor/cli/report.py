"""Commands of the finance report: `report`, `replay`, `demo`.

The composition root of the report: it opens the store, runs the rules (`rules.evaluate`), builds the
month (`reports.monthly`) and writes each format. `replay` and `demo` feed a store from simulated
traffic (`collectors.replay`) first.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import rules
from auditor.analysis import cost_window
from auditor.cli.common import (
    ConfigOption,
    JsonOption,
    api_catalog,
    app,
    console,
    fatal,
    gpu_catalog,
    open_store,
    program,
    require_config,
)
from auditor.config import Config, ConfigError, parse_config
from auditor.costing import DeploymentCost, monthly_saving
from auditor.gpu_prices import GpuPrice
from auditor.model import CostBasis, CostLine, Finding
from auditor.prices import ApiPriceCatalog, UnknownModelError
from auditor.store import Store
from auditor.units import format_share, format_tokens, format_usd, parse_usd
from collectors.replay import (
    DEFAULT_COMPARE_TO,
    DEMO_CONFIG,
    ReplayError,
    SimulatedDeployment,
    catalog_gpu_hourly_usd,
    check_gpu_minutes,
    check_replay_size,
    default_capacity_tokens_per_s,
    demo_runs,
    generated_loads,
    read_trace_loads,
    replay_into_store,
)
from reports.csv_export import write_csv
from reports.files import write_atomic
from reports.html import write_html
from reports.json_form import deployment_object, report_object
from reports.labels import gap_text, report_state, saving_words, shown_costs, total_line
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


@contextmanager
def progress_bar(total: int) -> Iterator[Callable[[str], None]]:
    """A progress bar on stderr (stdout stays clean for --json); each call advances it one step."""
    err = Console(stderr=True)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("starting", total=total)

        def step(description: str) -> None:
            bar.update(task, advance=1, description=description)

        yield step


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
                written.append(
                    write_atomic(out / f"{stem}.json", json.dumps(report_object(report), indent=2))
                )
    except OSError as exc:
        fatal(f"--out: cannot write the report to {out}: {exc.strerror or exc}; choose a writable directory")
    return written


def print_summary(report: MonthReport, written: Sequence[Path]) -> None:
    out = console()
    out.print(f"GPU cost report {report.month} ({report_state(report)}):", highlight=False)
    out.print(f"  {total_line(report)}", highlight=False)
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
            f"  {d.name}: {format_usd(shown.deployments[d.name])} raw, {format_usd(shown.tco(d.name))} TCO;"
            " utilization "
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
        window = month_window(month, config.tz, now)
    except MonthError as exc:
        fatal(f"--month: {exc}")
    store = open_store(config)
    apis, gpus = api_catalog(config), gpu_catalog()
    try:
        with progress_bar(3 + (0 if as_json else len(chosen))) as step:
            step("evaluating rules")
            findings = evaluate_rules(config, store, min(now, window.end - LAST_SECOND), apis, gpus)
            result = build_month_report(
                store=store,
                config=config,
                month=month,
                now=now,
                api_catalog=apis,
                gpu_catalog=gpus,
                findings=findings,
                only=deployment or None,
                progress=step,
            )
            if as_json:
                print(json.dumps(report_object(result), indent=2))
                return
            written = write_report(result, chosen, out, step)
    except UnknownModelError as exc:
        fatal(f"compare_to: {exc}")
    except NoDataError as exc:
        fatal(f"{exc}: nothing was observed or billed in it (see active_from in the config)", code=1)
    finally:
        store.close()
    print_summary(result, written)


# -- auditor replay -------------------------------------------------------------------------------


def _gpu_rate(gpu_type: str, given: str | None, catalog: Sequence[GpuPrice]) -> tuple[Decimal, str | None]:
    if given is not None:
        try:
            return parse_usd(given, allow_zero=False), None
        except ValueError as exc:
            fatal(f"--gpu-hourly-usd: {exc}")
    try:
        return catalog_gpu_hourly_usd(gpu_type, catalog)
    except ReplayError as exc:
        fatal(str(exc))


def replay_config(
    name: str, gpu_type: str, gpus: int, rate: Decimal, capacity: float, apis: Sequence[str], store_url: str
) -> Config:
    return Config.model_validate(
        {
            "store": {"url": store_url},
            "deployments": [
                {
                    "name": name,
                    "model": "replayed traffic",
                    "gpu_type": gpu_type,
                    "gpu_count": gpus,
                    "prometheus_matchers": {"deployment": name},
                    "price": {"source": "static", "gpu_hourly_usd": rate},
                    "compare_to": list(apis),
                    "capacity_tokens_per_s": capacity,
                }
            ],
        }
    )


@app.command()
def replay(
    gpus: Annotated[int, typer.Option(help="GPUs of the simulated deployment.", show_default=False)],
    gpu_type: Annotated[str, typer.Option(help="GPU type: H100, A100-80GB, L4, …", show_default=False)],
    trace: Annotated[
        Path | None,
        typer.Option(
            help="Request trace CSV: TIMESTAMP,ContextTokens,GeneratedTokens (Azure LLM trace format)."
        ),
    ] = None,
    requests_per_min: Annotated[
        float | None,
        typer.Option(help="Without --trace: generate traffic at this mean rate (weekday) instead."),
    ] = None,
    days: Annotated[int, typer.Option(help="Without --trace: days of generated traffic.")] = 30,
    gpu_hourly_usd: Annotated[
        str | None, typer.Option(help="USD per GPU-hour (default: catalog median).")
    ] = None,
    capacity_tokens_per_s: Annotated[
        float | None,
        typer.Option(help="Sustained peak tokens/s of the deployment (default: a per-GPU guess)."),
    ] = None,
    api: Annotated[list[str] | None, typer.Option(help="API model to compare with (repeat it).")] = None,
    busy_poll: Annotated[
        bool, typer.Option(help="Simulate a server that busy-polls (NVML reads 100%).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Planning: what would this API traffic cost on N GPUs, and at what utilization?

    Replays a request trace (or generated traffic) against a simulated deployment and costs it
    exactly as the report costs a real one. Needs no GPU, no store and no config."""
    if trace is None and requests_per_min is None:
        fatal("give --trace FILE (a request trace), or --requests-per-min to generate traffic")
    catalog = gpu_catalog()
    rate, note = _gpu_rate(gpu_type, gpu_hourly_usd, catalog)
    refs = api or list(DEFAULT_COMPARE_TO)
    apis = api_catalog(None)
    for ref in refs:
        try:
            apis.get(ref)
        except UnknownModelError as exc:
            fatal(f"--api: {exc}")
    try:
        capacity = capacity_tokens_per_s
        if capacity is None:
            capacity = default_capacity_tokens_per_s(gpu_type, max(gpus, 0))
        check_replay_size(gpus, capacity)
        if requests_per_min is not None and trace is None:
            today = datetime.now(tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            loads = generated_loads(requests_per_min, days, today, ZoneInfo("UTC"))
    except ReplayError as exc:
        fatal(str(exc))
    if trace is not None:
        try:
            loads = read_trace_loads(trace)
        except ReplayError as exc:
            fatal(f"--trace: {exc}")
    try:
        check_gpu_minutes(gpus, loads)
    except ReplayError as exc:
        fatal(str(exc))
    with tempfile.TemporaryDirectory(prefix="auditor-replay-") as scratch, progress_bar(2) as step:
        config = replay_config(
            "replay", gpu_type, gpus, rate, capacity, refs, f"sqlite:///{Path(scratch) / 'replay.db'}"
        )
        store = Store.open(config.store.url)
        try:
            simulated = SimulatedDeployment(
                name="replay",
                gpu_type=gpu_type,
                gpus=gpus,
                capacity_tokens_per_s=capacity,
                busy_poll_util=1.0 if busy_poll else 0.0,
            )
            step(f"replaying {len(loads):,} minutes")
            try:
                replay_into_store(store, [(loads, simulated)])
            except ReplayError as exc:
                fatal(str(exc))
            step("costing")
            start_dt = datetime.fromtimestamp(loads[0].minute_ts, UTC)
            end_dt = datetime.fromtimestamp(loads[-1].minute_ts + 60, UTC)
            cost = cost_window(store, config, start_dt, end_dt, apis, catalog).window.deployments[0]
        finally:
            store.close()
    if as_json:
        print(json.dumps(deployment_object(cost, []), indent=2))
        return
    if note:
        print(note)
    _print_replay(cost, gpus, gpu_type, rate)


def _print_replay(cost: DeploymentCost, gpus: int, gpu_type: str, rate: Decimal) -> None:
    out = console()
    hours = cost.window_hours
    out.print(
        f"Replayed {format_tokens(cost.prompt_tokens)} prompt"
        f" + {format_tokens(cost.generation_tokens)} generated tokens "
        f"over {hours:,.2f} h on {gpus}× {gpu_type} at {format_usd(rate)}/GPU-hour:"
        f" {format_usd(cost.cost_usd)}",
        highlight=False,
    )
    m = cost.measures
    out.print(
        f"Utilization: throughput {format_share(m.throughput_util)}"
        f" of {cost.capacity_tokens_per_s or 0:,.0f} tokens/s, "
        f"requests running {format_share(m.request_busy)} of the time,"
        f" sm_active {format_share(m.sm_active)}, "
        f"NVML gpu_util {format_share(m.gpu_util)};"
        f" idle GPU-hours {cost.hours.idle:,.2f} of {cost.hours.billed:,.2f}",
        highlight=False,
    )
    out.print(f"Cost per Mtok: {format_usd(cost.cost_per_mtok_usd)}", highlight=False)
    for a in cost.apis:
        verdict = "cheaper on the API" if a.savings_usd > 0 else "cheaper self-hosted"
        out.print(
            f"  {a.price.ref}: {format_usd(a.usd)} ({verdict} by {format_usd(abs(a.savings_usd))}); "
            f"break-even at {format_share(a.breakeven_utilization)} utilization, "
            f"{format_tokens(a.breakeven_tokens_per_month)} tokens/month",
            highlight=False,
        )


# -- auditor demo ---------------------------------------------------------------------------------


def previous_month(now: datetime) -> str:
    first = now.date().replace(day=1)
    last = first - timedelta(days=1)
    return f"{last.year:04d}-{last.month:02d}"


@app.command()
def demo(
    out: Annotated[
        Path | None, typer.Option(help="Directory for the demo (default: a new scratch directory).")
    ] = None,
    month: Annotated[
        str | None, typer.Option(help="The month to simulate, YYYY-MM (default: last month).")
    ] = None,
) -> None:
    """See the whole product work without a GPU: a month of simulated traffic, the rules, the report."""
    now = datetime.now(tz=UTC)
    directory = out or Path(tempfile.mkdtemp(prefix="auditor-demo-"))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        db = directory / "auditor.db"
        for stale in directory.glob("auditor.db*"):
            stale.unlink()
        text = DEMO_CONFIG.format(db=db.resolve())
        write_atomic(directory / "auditor.toml", text)
    except OSError as exc:
        fatal(f"--out: cannot use {directory}: {exc.strerror or exc}; choose a writable directory")
    try:
        config = parse_config(text, source=str(directory / "auditor.toml"))
    except ConfigError as exc:  # our own text: a defect, said plainly
        fatal(f"the demo's config is invalid: {exc}", code=1)
    chosen_month = month or previous_month(now)
    try:
        window = month_window(chosen_month, config.tz, now)
    except MonthError as exc:
        fatal(f"--month: {exc}")
    store = open_store(config)
    apis, gpus = api_catalog(config), gpu_catalog()
    try:
        with progress_bar(4 + len(FORMATS)) as step:
            step("simulating a month of traffic")
            runs = demo_runs(
                config.deployments, int(window.start.timestamp()), int(window.end.timestamp()), config.tz
            )
            replay_into_store(store, runs)
            _demo_unattributed(store, window.start.date())
            step("evaluating rules")
            findings = evaluate_rules(config, store, window.end - LAST_SECOND, apis, gpus)
            result = build_month_report(
                store=store,
                config=config,
                month=chosen_month,
                now=now,
                api_catalog=apis,
                gpu_catalog=gpus,
                findings=findings,
                progress=step,
            )
            written = write_report(result, FORMATS, directory, step)
    finally:
        store.close()
    print_summary(result, written)
    html = next(p for p in written if p.suffix == ".html")
    console().print(
        f"\nOpen the report: file://{html.resolve()}\n"
        f"Re-run it: {program()} report --config {directory / 'auditor.toml'}"
        f" --month {chosen_month} --out {directory}",
        highlight=False,
        soft_wrap=True,
    )


def _demo_unattributed(store: Store, first_day: date) -> None:
    """A bill line tagged to no deployment (a forgotten dev box): the report shows it, never drops it."""
    days = [first_day + timedelta(days=i) for i in range(3, 6)]
    lines = [
        CostLine(
            day=day,
            source="aws",
            account="demo",
            resource="i-0demo-untagged",
            usage_type="BoxUsage:g5.xlarge",
            amount_usd=Decimal("24.144"),
            usage_hours=Decimal(24),
            basis=CostBasis.INVOICED,
        )
        for day in days
    ]
    store.replace_cost_lines("aws", "demo", days[0], days[-1] + timedelta(days=1), lines)
