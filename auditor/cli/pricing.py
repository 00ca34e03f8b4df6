"""`breakeven`, the what-if calculator (no GPU, no store, no config), and `version`."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer

from auditor import __version__
from auditor.breakeven import instance_billing
from auditor.breakeven import verdict as breakeven_verdict
from auditor.cli.common import (
    ConfigOption,
    JsonOption,
    api_catalog,
    app,
    fatal,
    gpu_catalog,
    load_config_or_exit,
)
from auditor.config import Config
from auditor.costing import WhatIf, month_hours
from auditor.gpu_prices import PRICING_KINDS, find_gpu_price
from auditor.output import emit, output_format
from auditor.prices import DEFAULT_COMPARISONS, ApiPrice, ApiPriceCatalog, UnknownModelError
from auditor.results import breakeven_result
from auditor.units import MAX_GPUS, MAX_TOKENS_PER_S, parse_positive, parse_token_count, parse_usd
from reports.terminal import breakeven_text

AVERAGE_MONTH_HOURS = Decimal(730)
"""8,760 h ÷ 12: the what-if's month when no calendar month is named."""


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
        str | None,
        typer.Option(help="Billed hours a month. Default: 730, a year's average month.", show_default=False),
    ] = None,
    month: Annotated[
        str | None,
        typer.Option(
            help="Bill a calendar month's real hours instead (YYYY-MM, in the config's timezone): "
            "744 for January, 745 for October in Europe/Berlin.",
            show_default=False,
        ),
    ] = None,
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
    if capacity_tokens_per_s is not None and not (0 < capacity_tokens_per_s <= MAX_TOKENS_PER_S):
        fatal(f"--capacity-tokens-per-s: must be more than 0 and at most {MAX_TOKENS_PER_S:.0e} tokens/s")
    if gpus is not None and not 0 < gpus <= MAX_GPUS:
        fatal(f"--gpus: must be 1 to {MAX_GPUS:,}")
    config = load_config_or_exit(config_path, required=False)
    billed_hours, hours_basis = _month_hours(hours, month, config)
    notes: list[str] = []
    gpu_count, rate = _self_hosted_rate(gpus, gpu_hourly_usd, instance, pricing, notes)
    what_if = WhatIf(
        prompt_tokens=prompt,
        generation_tokens=generation,
        gpus=gpu_count,
        gpu_hourly_usd=rate,
        hours=billed_hours,
        overhead_usd_month=overhead,
        capacity_tokens_per_s=capacity_tokens_per_s,
    )
    prices = _api_prices(api_catalog(config), api or DEFAULT_COMPARISONS, config)
    comparisons = what_if.compare(prices)
    verdict = breakeven_verdict(what_if, comparisons)
    result = breakeven_result(what_if, comparisons, verdict, notes, hours_basis)
    emit(result, output_format(as_json), breakeven_text)


def _month_hours(hours: str | None, month: str | None, config: Config | None) -> tuple[Decimal, str]:
    """(hours billed in the what-if's month, what they are): given, a calendar month's, or 730."""
    if hours is not None and month is not None:
        fatal("give --hours or --month, not both")
    if hours is not None:
        return _parse("--hours", lambda t: parse_positive(t, "hours", maximum=Decimal(745)), hours), "given"
    if month is None:
        return AVERAGE_MONTH_HOURS, "a year's average month; --month YYYY-MM bills a calendar month"
    from reports.monthly import MonthError, month_start  # imported here: it imports the store

    tz = config.tz if config is not None else ZoneInfo("UTC")
    try:
        start = month_start(month, tz)
    except MonthError as exc:
        fatal(f"--month: {exc}")
    return month_hours(start, tz), f"{month} in {tz.key}"


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
    billing = instance_billing(row, gpus)
    notes.extend(billing.notes(gpus))
    return billing.gpus, row.gpu_hourly_usd
