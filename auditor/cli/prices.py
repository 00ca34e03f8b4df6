"""`prices`: the GPU price catalog (ours) and API prices (genai-prices and config), with their dates."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from auditor.cli.common import (
    ConfigOption,
    JsonOption,
    api_catalog,
    app,
    fatal,
    gpu_catalog,
    load_config_or_exit,
    warn,
)
from auditor.gpu_prices import stale_prices as find_stale_prices
from auditor.output import emit, output_format
from auditor.prices import ApiPriceCatalog
from auditor.results import prices_result
from reports.terminal import prices_text

# Without --provider, `auditor prices` lists these (the full catalog has about 2,000 models).
FEATURED_PROVIDERS = ("openai", "anthropic", "google", "mistral", "together", "fireworks", "groq", "deepseek")


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
    emit(prices_result(gpu_rows, api_rows, stale, today), output_format(as_json), prices_text)
    if stale:
        oldest = min(stale, key=lambda r: r.as_of)
        warn(
            f"{len(stale)} GPU price(s) are older than {max_age_days} days (oldest: {oldest.provider} "
            f"{oldest.instance_type}, {oldest.as_of.isoformat()}): check them before relying on them"
        )


def _providers(catalog: ApiPriceCatalog) -> list[str]:
    return sorted(set(catalog.providers()) | {r.provider for r in gpu_catalog()})
