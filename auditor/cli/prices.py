"""`prices`: the GPU price catalog (ours) and API prices (genai-prices and config), with their dates."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any

import typer
from rich.table import Table

from auditor.cli.common import (
    ConfigOption,
    JsonOption,
    api_catalog,
    app,
    console,
    fatal,
    gpu_catalog,
    load_config_or_exit,
    warn,
)
from auditor.gpu_prices import GpuPrice
from auditor.gpu_prices import stale_prices as find_stale_prices
from auditor.prices import ApiPrice, ApiPriceCatalog
from auditor.units import cents

# Without --provider, `auditor prices` lists these (the full catalog has about 2,000 models).
FEATURED_PROVIDERS = ("openai", "anthropic", "google", "mistral", "together", "fireworks", "groq", "deepseek")


def _number(value: Decimal, places: str) -> float:
    return float(value.quantize(Decimal(places)))


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
