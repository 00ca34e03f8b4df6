"""The terminal form of each command's result (`auditor.results`): tables and lines for a person.

Each renderer reads only its result, and rounds only as `auditor.output` says (money to the cent
through `units.format_usd`, shares through `units.format_share`), so `--json` and the terminal show
the same figures.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

from auditor.results import BreakevenResult, FindingsResult, FleetRollupResult, PricesResult, StatusResult
from auditor.units import cents, format_share, format_tokens, format_usd
from reports.findings import finding_detail_lines


def _cell(value: Any, fmt: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{fmt}}{suffix}"


def _usd_cell(value: Decimal | None) -> str:
    """Money in a table column headed `$…`: to the cent, no sign."""
    return "—" if value is None else f"{cents(value):,.2f}"


def _line(out: Console, text: str) -> None:
    out.print(text, highlight=False, markup=False, soft_wrap=True)


# -- status ----------------------------------------------------------------------------------------


def status_text(result: StatusResult, out: Console) -> None:
    now = result.now_ts
    for source in result.sources:
        if source["state"] == "up":
            continue
        since = source["down_since_ts"]
        when = (
            "never sampled"
            if since is None
            else f"no sample since {datetime.fromtimestamp(since, result.timezone):%Y-%m-%d %H:%M:%S %Z}"
            f" ({(now - since) / 60:,.0f} min ago)"
        )
        _line(out, f"DOWN  {source['kind']} {source['source']}: {when}")
    minutes = result.window_minutes
    if not result.gpus:
        _line(out, f"No GPU samples in the last {minutes} minutes: is `auditor daemon` running?")
    else:
        table = Table(title=f"GPUs (latest sample, last {minutes} min)", title_justify="left")
        for column in ("host", "GPU", "deployment", "util", "SM active", "memory", "power", "procs", "age"):
            table.add_column(column, justify="left" if column in {"host", "GPU", "deployment"} else "right")
        for g in result.gpus:
            memory = (
                "—"
                if g.mem_used_bytes is None or g.mem_total_bytes is None
                else f"{g.mem_used_bytes / 2**30:.1f}/{g.mem_total_bytes / 2**30:.1f} GiB"
            )
            table.add_row(
                g.host,
                f"{g.gpu_index} {g.gpu_name or ''}".strip(),
                g.deployment or "—",
                _cell(g.util_pct, ".0f", "%"),
                _cell(g.sm_active_pct, ".0f", "%"),
                memory,
                _cell(g.power_w, ".0f", " W"),
                _cell(g.process_count, "d"),
                f"{g.age_s:.0f} s",
            )
        out.print(table)
    table = Table(title="Deployments", title_justify="left")
    for column in (
        "deployment",
        "tokens/s",
        "running",
        "$/h",
        "$/Mtok 1h",
        "$/Mtok 1d",
        "idle $ so far this month",
    ):
        table.add_column(column, justify="left" if column == "deployment" else "right")
    for d in result.deployments:
        table.add_row(
            d.deployment,
            _cell(d.tokens_per_s, ",.1f"),
            _cell(d.requests_running, ".0f"),
            _usd_cell(d.cost_rate_usd_per_h),
            _usd_cell(d.cost_per_mtok_usd_1h),
            _usd_cell(d.cost_per_mtok_usd_1d),
            _usd_cell(d.idle_cost_month_usd),
        )
    out.print(table)


# -- rules check -------------------------------------------------------------------------------------


def findings_text(result: FindingsResult, out: Console) -> None:
    verdicts = [f for f in result.found if f.verdict]
    undecided = [f for f in result.found if not f.verdict]
    if not verdicts:
        _line(out, result.nothing_found)
    else:
        table = Table(title="Findings, most dollars first (one action per deployment)", title_justify="left")
        for column in ("$/month", "severity", "rule", "subject", "recommendation"):
            table.add_column(column, justify="right" if column == "$/month" else "left")
        for f in verdicts:
            table.add_row(
                format_usd(f.usd_per_month), f.severity.value, ", ".join(f.rules), f.subject, f.text
            )
        out.print(table)
        for f in verdicts:
            for line in finding_detail_lines(f):
                out.print(line, highlight=False, markup=False)
    for f in undecided:
        out.print(f"no verdict: {f.rule} {f.subject}: {f.text}", highlight=False, markup=False)
    out.print(result.total_at_stake.text, highlight=False, markup=False)


# -- breakeven ---------------------------------------------------------------------------------------


def breakeven_text(result: BreakevenResult, out: Console) -> None:
    for note in result.notes:
        _line(out, note)
    hosted = result.self_hosted
    use = hosted.utilization
    capacity = (
        f"; {format_share(use)} of {hosted.capacity_tokens_per_s:,.0f} tokens/s capacity"
        if use is not None and hosted.capacity_tokens_per_s
        else ""
    )
    out.print(
        f"Volume: {result.volume.prompt_tokens:,} prompt + {result.volume.generation_tokens:,} generated "
        f"tokens/month{capacity}",
        highlight=False,
    )
    out.print(
        f"Self-hosted: {hosted.gpus} GPU × {format_usd(hosted.gpu_hourly_usd)}/GPU-hour "
        f"× {hosted.hours} h{'' if hosted.hours_basis == 'given' else f' ({hosted.hours_basis})'} "
        f"= {format_usd(hosted.monthly_usd)}/month raw, {format_usd(hosted.monthly_tco_usd)}/month TCO",
        highlight=False,
    )
    table = Table(show_lines=False)
    table.add_column("API model")
    table.add_column("$/Mtok in/out", justify="right")
    table.add_column("API $/month", justify="right")
    table.add_column("vs self-hosted TCO", justify="right")
    table.add_column("break-even tokens/month", justify="right")
    table.add_column("break-even utilization", justify="right")
    for a in result.apis:
        table.add_row(
            a.ref,
            f"{a.input_mtok_usd}/{a.output_mtok_usd}",
            format_usd(a.monthly_usd),
            ("API cheaper by " if a.savings_usd_month > 0 else "self-host cheaper by ")
            + format_usd(abs(a.savings_usd_month)),
            format_tokens(a.breakeven_tokens_per_month),
            _utilization_cell(a.breakeven_utilization),
        )
    out.print(table)
    out.print(result.verdict, highlight=False)


def _utilization_cell(share: Decimal | None) -> str:
    if share is None:
        return "— (give --capacity-tokens-per-s)"
    if share > 1:
        return f"{format_share(share)} (never)"
    return format_share(share)


# -- prices ------------------------------------------------------------------------------------------


def prices_text(result: PricesResult, out: Console) -> None:
    if result.gpu:
        table = Table(title="GPU prices (gpu-auditor catalog)", title_justify="left")
        for column in ("provider", "instance", "GPUs", "pricing", "$/h", "$/GPU-h", "region", "as of"):
            table.add_column(column, justify="right" if "$" in column or column == "GPUs" else "left")
        for r in result.gpu:
            table.add_row(
                r.provider,
                r.instance_type,
                f"{r.gpus}× {r.gpu_type}",
                r.pricing,
                f"{r.instance_hourly_usd:,}",
                _usd_cell(r.gpu_hourly_usd),
                r.region,
                f"{r.as_of}{' (stale)' if r.stale else ''}",
                style="yellow" if r.age_days < 0 or r.stale else None,
            )
        out.print(table)
    if result.api:
        sources = sorted({p.source for p in result.api})
        table = Table(
            title=f"API prices, USD per million tokens ({'; '.join(sources)})", title_justify="left"
        )
        for column in ("provider", "model", "input", "output", "cached input", "as of"):
            table.add_column(
                column, justify="right" if column in {"input", "output", "cached input"} else "left"
            )
        for p in result.api:
            table.add_row(
                p.provider,
                p.model,
                f"{p.input_mtok_usd}",
                f"{p.output_mtok_usd}",
                "—" if p.cache_read_mtok_usd is None else f"{p.cache_read_mtok_usd}",
                p.as_of or "—",
            )
        out.print(table)


def fleet_rollup_text(result: FleetRollupResult, out: Console) -> None:
    if result.skipped:
        out.print("another replica holds the fleet roll-up lock: nothing done (it rolls the window up)")
        return
    out.print(
        f"rolled up {result.window_start.isoformat()} to {result.window_end.isoformat()}: "
        f"{result.gpu_minutes} GPU-minutes, {result.deployment_minutes} deployment-minutes, "
        f"{result.requests} PromQL requests in {result.chunks} chunk(s), {result.seconds:.1f} s",
        highlight=False,
    )
