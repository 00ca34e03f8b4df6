"""Planning commands: `replay` (what would this traffic cost on N GPUs) and `demo` (the whole product on
simulated data). Both feed a scratch store from `collectors.replay`, then cost it exactly as the report
does; the planning defaults live in `collectors.replay`."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer

from auditor.analysis import cost_window
from auditor.cli.common import (
    JsonOption,
    api_catalog,
    app,
    console,
    fatal,
    gpu_catalog,
    open_store,
    program,
    progress_bar,
)
from auditor.config import ConfigError, parse_config
from auditor.costing import DeploymentCost
from auditor.gpu_prices import GpuPrice
from auditor.output import render_json
from auditor.prices import UnknownModelError
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
    month_minutes_kept,
    read_trace_loads,
    replay_config,
    replay_into_store,
    window_ends,
)
from reports.files import write_atomic

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
            first_ts, after_ts = loads[0].minute_ts, loads[-1].minute_ts + 60
            try:
                replay_into_store(
                    store,
                    [(loads, simulated)],
                    minutes_kept=window_ends(first_ts, after_ts),
                )
            except ReplayError as exc:
                fatal(str(exc))
            step("costing")
            start_dt = datetime.fromtimestamp(first_ts, UTC)
            end_dt = datetime.fromtimestamp(after_ts, UTC)
            cost = cost_window(store, config, start_dt, end_dt, apis, catalog).window.deployments[0]
        finally:
            store.close()
    if as_json:
        from reports.json_form import deployment_object  # the report's modules: only for --json

        print(render_json(deployment_object(cost, [])))
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
    # Imported here, not with the module: `replay` shares it and needs none of the report's modules.
    from auditor.cli.report import FORMATS, month_result, print_summary, write_report
    from reports.monthly import MonthError, month_window, previous_month

    now = datetime.now(tz=UTC)
    directory = out or Path(tempfile.mkdtemp(prefix="auditor-demo-"))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        db = directory / "auditor.db"
        for stale in directory.glob("auditor.db*"):
            stale.unlink()
        bills = (directory / "bills").resolve()
        text = DEMO_CONFIG.format(db=db.resolve(), bills=bills)
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
        with progress_bar(5 + len(FORMATS)) as step:
            step("simulating a month of traffic")
            start_ts, end_ts = int(window.start.timestamp()), int(window.end.timestamp())
            runs = demo_runs(config.deployments, start_ts, end_ts, config.tz)
            replay_into_store(store, runs, minutes_kept=month_minutes_kept(start_ts, end_ts))
            step("importing the month's cloud bill (FOCUS)")
            from collectors.focus_demo import write_demo_bill
            from collectors.focus_sources import import_files

            bill = write_demo_bill(bills / f"focus-{chosen_month}.csv", window.start, window.end)
            import_files(store, config, [bill], gpus, source="aws-focus")
            result = month_result(config, store, chosen_month, now, apis, gpus, step)
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
