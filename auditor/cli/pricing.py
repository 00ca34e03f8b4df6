"""Commands that need no GPU and no store: `breakeven`, `prices`, `config check`, `version`."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any

import typer
from rich.table import Table

from auditor import __version__
from auditor.cli.common import (
    ConfigOption,
    JsonOption,
    api_catalog,
    app,
    config_app,
    console,
    fatal,
    gpu_catalog,
    load_config_or_exit,
    require_config,
    warn,
)
from auditor.config import Config, redacted
from auditor.costing import ApiComparison, WhatIf
from auditor.gpu_prices import PRICING_KINDS, GpuPrice, find_gpu_price
from auditor.gpu_prices import stale_prices as find_stale_prices
from auditor.prices import DEFAULT_COMPARISONS, ApiPrice, ApiPriceCatalog, UnknownModelError
from auditor.units import (
    cents,
    format_share,
    format_tokens,
    format_usd,
    parse_positive,
    parse_token_count,
    parse_usd,
)

DEFAULT_HOURS = "730"
# Without --provider, `auditor prices` lists these (the full catalog has about 2,000 models).
FEATURED_PROVIDERS = ("openai", "anthropic", "google", "mistral", "together", "fireworks", "groq", "deepseek")


def _api_prices(catalog: ApiPriceCatalog, refs: Sequence[str], config: Config | None) -> list[ApiPrice]:
    prices = []
    for ref in refs:
        try:
            prices.append(catalog.get(ref))
        except UnknownModelError as exc:
            if ref.lower().startswith("private:"):
                where = (
                    "no config was read: give --config FILE or set $AUDITOR_CONFIG" if config is None else ""
                )
                fatal(
                    f"--api: {ref!r} is a private price, read from the config's "
                    f'[prices.api."{ref}"] table; {where or "the config has no such table"}'
                )
            fatal(f"--api: {exc}")
    return prices


def _parse(option: str, parser: Any, text: str) -> Any:
    try:
        return parser(text)
    except ValueError as exc:
        fatal(f"{option}: {exc}")


@app.command()
def version() -> None:
    """Print the version."""
    print(f"gpu-auditor {__version__}")


@app.command()
def breakeven(
    prompt_tokens: Annotated[
        str,
        typer.Option(help="Prompt (input) tokens a month: 100M, 1.5B, 2e9, 120000000.", show_default=False),
    ],
    generation_tokens: Annotated[
        str, typer.Option(help="Generated (output) tokens a month.", show_default=False)
    ],
    gpus: Annotated[
        int | None, typer.Option(help="GPUs billed (default: one instance's GPUs with --instance).")
    ] = None,
    gpu_hourly_usd: Annotated[str | None, typer.Option(help="USD per GPU-hour.")] = None,
    instance: Annotated[
        str | None, typer.Option(help="Price the GPUs from the catalog's instance type, e.g. p5.48xlarge.")
    ] = None,
    pricing: Annotated[
        str, typer.Option(help="With --instance: on_demand, reserved_1y, reserved_3y or spot.")
    ] = "on_demand",
    hours: Annotated[
        str, typer.Option(help="Billed hours a month (730 is a year's average month).")
    ] = DEFAULT_HOURS,
    capacity_tokens_per_s: Annotated[
        float | None,
        typer.Option(help="Sustained peak tokens/s of the deployment: gives break-even utilization."),
    ] = None,
    overhead_usd_month: Annotated[
        str, typer.Option(help="Engineering, egress, storage, monitoring in USD a month (TCO = GPUs + this).")
    ] = "0",
    api: Annotated[
        list[str] | None,
        typer.Option(
            help="API model to compare with, as provider:model or model (repeat it). Default: GPT-4o, "
            "Claude 3.5 Haiku, Together Llama 3 70B."
        ),
    ] = None,
    config_path: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """What-if: at these monthly volumes, is self-hosting cheaper than each API?

    Needs no GPU, no store and no config."""
    prompt = _parse("--prompt-tokens", parse_token_count, prompt_tokens)
    generation = _parse("--generation-tokens", parse_token_count, generation_tokens)
    overhead = _parse("--overhead-usd-month", parse_usd, overhead_usd_month)
    month_hours = _parse("--hours", lambda t: parse_positive(t, "hours", maximum=Decimal(744)), hours)
    if capacity_tokens_per_s is not None and not (
        capacity_tokens_per_s > 0 and math.isfinite(capacity_tokens_per_s)
    ):
        fatal("--capacity-tokens-per-s: must be more than 0 tokens/s")
    if gpus is not None and gpus <= 0:
        fatal("--gpus: must be 1 or more")
    config = load_config_or_exit(config_path, required=False)
    notes: list[str] = []
    gpu_count, rate = _self_hosted_rate(gpus, gpu_hourly_usd, instance, pricing, notes)
    what_if = WhatIf(
        prompt_tokens=prompt,
        generation_tokens=generation,
        gpus=gpu_count,
        gpu_hourly_usd=rate,
        hours=month_hours,
        overhead_usd_month=overhead,
        capacity_tokens_per_s=capacity_tokens_per_s,
    )
    prices = _api_prices(api_catalog(config), api or DEFAULT_COMPARISONS, config)
    comparisons = what_if.compare(prices)
    verdict = _verdict(what_if, comparisons)
    if as_json:
        print(json.dumps(_breakeven_json(what_if, comparisons, verdict), indent=2))
        return
    for note in notes:
        print(note)
    _print_breakeven(what_if, comparisons, verdict)


def _self_hosted_rate(
    gpus: int | None, gpu_hourly_usd: str | None, instance: str | None, pricing: str, notes: list[str]
) -> tuple[int, Decimal]:
    """(GPUs billed, USD per GPU-hour) from --gpus/--gpu-hourly-usd or --instance."""
    if instance is None and gpu_hourly_usd is None:
        fatal("give --gpu-hourly-usd (with --gpus), or --instance to price from the catalog")
    if instance is not None and gpu_hourly_usd is not None:
        fatal("give --gpu-hourly-usd or --instance, not both")
    if gpu_hourly_usd is not None:
        if gpus is None:
            fatal("--gpus: how many GPUs are billed? (with --gpu-hourly-usd)")
        return gpus, _parse("--gpu-hourly-usd", parse_usd, gpu_hourly_usd)
    assert instance is not None  # noqa: S101  (both None was rejected above)
    if pricing not in PRICING_KINDS:
        fatal(f"--pricing: {pricing!r} is not one of {', '.join(sorted(PRICING_KINDS))}")
    try:
        row = find_gpu_price(gpu_catalog(), instance, pricing=pricing)
    except LookupError as exc:  # unknown type, no price of that kind, or several
        fatal(f"--instance: {exc}")
    instances = 1 if gpus is None else math.ceil(gpus / row.gpus)
    if gpus is not None and gpus % row.gpus:
        notes.append(
            f"{row.instance_type} has {row.gpus} GPUs and is billed whole: {instances} instance(s), "
            f"{instances * row.gpus} GPUs."
        )
    notes.append(
        f"{row.provider} {row.instance_type} ({row.pricing}, {row.region}): "
        f"{format_usd(row.instance_hourly_usd)}/h, {format_usd(row.gpu_hourly_usd)} per GPU-hour, "
        f"as of {row.as_of.isoformat()} ({row.source_url})"
    )
    return instances * row.gpus, row.gpu_hourly_usd


def _verdict(what_if: WhatIf, comparisons: Sequence[ApiComparison]) -> str:
    volume = format_tokens(what_if.prompt_tokens + what_if.generation_tokens)
    cheapest = min(comparisons, key=lambda c: c.usd)
    tco = what_if.monthly_tco_usd
    name = cheapest.price.ref
    if cheapest.usd < tco:
        breakeven = cheapest.breakeven_tokens_per_month
        where = f"; self-hosting breaks even at {format_tokens(breakeven)} tokens/month" if breakeven else ""
        return (
            f"At {volume} tokens/month, {name} is cheaper: {format_usd(cheapest.usd)} against "
            f"{format_usd(tco)} self-hosted (TCO), saving {format_usd(tco - cheapest.usd)}/month{where}."
        )
    return (
        f"At {volume} tokens/month, self-hosting is cheaper than every API compared: "
        f"{format_usd(tco)} (TCO) against {format_usd(cheapest.usd)} on the cheapest, {name}, "
        f"saving {format_usd(cheapest.usd - tco)}/month."
    )


def _number(value: Decimal | None, places: str = "0.01") -> float | None:
    return None if value is None else float(value.quantize(Decimal(places)))


def _breakeven_json(what_if: WhatIf, comparisons: Sequence[ApiComparison], verdict: str) -> dict[str, Any]:
    return {
        "volume": {"prompt_tokens": what_if.prompt_tokens, "generation_tokens": what_if.generation_tokens},
        "self_hosted": {
            "gpus": what_if.gpus,
            "gpu_hourly_usd": float(what_if.gpu_hourly_usd),
            "hours": float(what_if.hours),
            "monthly_usd": _number(what_if.monthly_usd),
            "overhead_usd_month": _number(what_if.overhead_usd_month),
            "monthly_tco_usd": _number(what_if.monthly_tco_usd),
            "capacity_tokens_per_s": what_if.capacity_tokens_per_s,
            "utilization": _number(what_if.utilization, "0.000001"),
        },
        "apis": [
            {
                "provider": c.price.provider,
                "model": c.price.model,
                "input_mtok_usd": float(c.price.input_mtok_usd),
                "output_mtok_usd": float(c.price.output_mtok_usd),
                "price_source": c.price.source,
                "monthly_usd": _number(c.usd),
                "savings_usd_month": _number(c.savings_usd),
                "breakeven_tokens_per_month": (
                    None if c.breakeven_tokens_per_month is None else round(c.breakeven_tokens_per_month)
                ),
                "breakeven_utilization": _number(c.breakeven_utilization, "0.000001"),
            }
            for c in comparisons
        ],
        "verdict": verdict,
    }


def _print_breakeven(what_if: WhatIf, comparisons: Sequence[ApiComparison], verdict: str) -> None:
    out = console()
    use = what_if.utilization
    capacity = (
        f"; {format_share(use)} of {what_if.capacity_tokens_per_s:,.0f} tokens/s capacity"
        if use is not None and what_if.capacity_tokens_per_s
        else ""
    )
    out.print(
        f"Volume: {what_if.prompt_tokens:,} prompt + {what_if.generation_tokens:,} generated "
        f"tokens/month{capacity}",
        highlight=False,
    )
    out.print(
        f"Self-hosted: {what_if.gpus} GPU × {format_usd(what_if.gpu_hourly_usd)}/GPU-hour "
        f"× {what_if.hours} h "
        f"= {format_usd(what_if.monthly_usd)}/month raw, {format_usd(what_if.monthly_tco_usd)}/month TCO",
        highlight=False,
    )
    table = Table(show_lines=False)
    table.add_column("API model")
    table.add_column("$/Mtok in/out", justify="right")
    table.add_column("API $/month", justify="right")
    table.add_column("vs self-hosted TCO", justify="right")
    table.add_column("break-even tokens/month", justify="right")
    table.add_column("break-even utilization", justify="right")
    for c in comparisons:
        table.add_row(
            c.price.ref,
            f"{c.price.input_mtok_usd}/{c.price.output_mtok_usd}",
            format_usd(c.usd),
            ("API cheaper by " if c.savings_usd > 0 else "self-host cheaper by ")
            + format_usd(abs(c.savings_usd)),
            format_tokens(c.breakeven_tokens_per_month),
            _utilization_cell(c.breakeven_utilization),
        )
    out.print(table)
    out.print(verdict, highlight=False)


def _utilization_cell(share: Decimal | None) -> str:
    if share is None:
        return "— (give --capacity-tokens-per-s)"
    if share > 1:
        return f"{format_share(share)} (never)"
    return format_share(share)


@app.command()
def prices(
    provider: Annotated[str | None, typer.Option(help="Only this provider (openai, aws, lambda, …).")] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Every API provider, not only the main ones.")
    ] = False,
    config_path: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List GPU prices (our catalog) and API prices (genai-prices and config), with their dates."""
    config = load_config_or_exit(config_path, required=False)
    max_age_days = config.prices.gpu_max_age_days if config else 180
    gpu_rows = [r for r in gpu_catalog() if provider is None or r.provider == provider.lower()]
    catalog = api_catalog(config)
    if provider is not None:
        api_rows = list(catalog.all(provider))
    elif show_all:
        api_rows = list(catalog.all())
    else:
        api_rows = [p for name in FEATURED_PROVIDERS for p in catalog.all(name)] + catalog.all_overrides()
    if provider is not None and not gpu_rows and not api_rows:
        fatal(f"--provider: no prices for {provider!r}; providers: {', '.join(_providers(catalog))}")
    today = datetime.now(tz=UTC).date()
    stale = find_stale_prices(gpu_rows, today, max_age_days)
    if as_json:
        print(json.dumps(_prices_json(gpu_rows, api_rows, stale), indent=2))
    else:
        _print_prices(gpu_rows, api_rows, stale, today)
    if stale:
        oldest = min(stale, key=lambda r: r.as_of)
        warn(
            f"{len(stale)} GPU price(s) are older than {max_age_days} days (oldest: {oldest.provider} "
            f"{oldest.instance_type}, {oldest.as_of.isoformat()}): check them before relying on them"
        )


def _providers(catalog: ApiPriceCatalog) -> list[str]:
    return sorted(set(catalog.providers()) | {r.provider for r in gpu_catalog()})


def _prices_json(
    gpu_rows: Sequence[GpuPrice], api_rows: Sequence[ApiPrice], stale: Sequence[GpuPrice]
) -> Any:
    stale_ids = {id(r) for r in stale}
    return {
        "gpu": [
            {
                "provider": r.provider,
                "instance_type": r.instance_type,
                "gpu_type": r.gpu_type,
                "gpus": r.gpus,
                "pricing": r.pricing,
                "instance_hourly_usd": float(r.instance_hourly_usd),
                "gpu_hourly_usd": _number(r.gpu_hourly_usd, "0.000001"),
                "region": r.region,
                "as_of": r.as_of.isoformat(),
                "source_url": r.source_url,
                "stale": id(r) in stale_ids,
            }
            for r in gpu_rows
        ],
        "api": [
            {
                "provider": p.provider,
                "model": p.model,
                "input_mtok_usd": float(p.input_mtok_usd),
                "output_mtok_usd": float(p.output_mtok_usd),
                "cache_read_mtok_usd": None
                if p.cache_read_mtok_usd is None
                else float(p.cache_read_mtok_usd),
                "source": p.source,
                "as_of": p.as_of.isoformat() if p.as_of else None,
            }
            for p in api_rows
        ],
    }


def _print_prices(
    gpu_rows: Sequence[GpuPrice], api_rows: Sequence[ApiPrice], stale: Sequence[GpuPrice], today: date
) -> None:
    out = console()
    stale_ids = {id(r) for r in stale}
    if gpu_rows:
        table = Table(title="GPU prices (gpu-auditor catalog)", title_justify="left")
        for column in ("provider", "instance", "GPUs", "pricing", "$/h", "$/GPU-h", "region", "as of"):
            table.add_column(column, justify="right" if "$" in column or column == "GPUs" else "left")
        for r in gpu_rows:
            age = (today - r.as_of).days
            table.add_row(
                r.provider,
                r.instance_type,
                f"{r.gpus}× {r.gpu_type}",
                r.pricing,
                f"{r.instance_hourly_usd:,}",
                f"{cents(r.gpu_hourly_usd):,}",
                r.region,
                f"{r.as_of.isoformat()}{' (stale)' if id(r) in stale_ids else ''}",
                style="yellow" if age < 0 or id(r) in stale_ids else None,
            )
        out.print(table)
    if api_rows:
        sources = sorted({p.source for p in api_rows})
        table = Table(
            title=f"API prices, USD per million tokens ({'; '.join(sources)})", title_justify="left"
        )
        for column in ("provider", "model", "input", "output", "cached input", "as of"):
            table.add_column(
                column, justify="right" if column in {"input", "output", "cached input"} else "left"
            )
        for p in api_rows:
            table.add_row(
                p.provider,
                p.model,
                f"{p.input_mtok_usd}",
                f"{p.output_mtok_usd}",
                "—" if p.cache_read_mtok_usd is None else f"{p.cache_read_mtok_usd}",
                p.as_of.isoformat() if p.as_of else "—",
            )
        out.print(table)


@config_app.command("check")
def config_check(config_path: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Validate the config file; print the effective config (secrets hidden), or every problem."""
    config = require_config(config_path)  # the one validation path: the daemon loads it the same way
    effective = redacted(config)
    if as_json:
        print(json.dumps(effective, indent=2))
        return
    out = console()
    out.print_json(json.dumps(effective))
    out.print(
        f"config OK: {len(config.deployments)} deployment(s), store {effective['store']['url']}, "
        f"timezone {config.timezone}",
        highlight=False,
    )
