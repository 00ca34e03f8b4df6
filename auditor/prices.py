"""Managed-API prices: genai-prices' bundled snapshot, plus the config's overrides and private rates.

The snapshot is offline: nothing is fetched at run time unless `prices.fetch_updates` is set.
A model is named `provider:model` (`openai:gpt-4o`) or by its model name alone (`gpt-4o`), which
genai-prices matches to a provider.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from auditor.config import ApiPriceOverride

PER_MTOK = Decimal(1_000_000)

# The comparisons `auditor breakeven` makes when none are asked for: the design's three.
DEFAULT_COMPARISONS = (
    "openai:gpt-4o",
    "anthropic:claude-3-5-haiku",
    "together:meta-llama/Llama-3-70b-chat-hf",
)


@dataclass(frozen=True, slots=True)
class ApiPrice:
    """An API model's price in USD per million tokens."""

    provider: str
    model: str
    input_mtok_usd: Decimal
    output_mtok_usd: Decimal
    cache_read_mtok_usd: Decimal | None
    source: str
    """Where the price comes from: `genai-prices X.Y.Z` or `config`."""
    as_of: date | None = None
    name: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.provider}:{self.model}"

    @property
    def input_usd_per_token(self) -> Decimal:
        return self.input_mtok_usd / PER_MTOK

    @property
    def output_usd_per_token(self) -> Decimal:
        return self.output_mtok_usd / PER_MTOK


class UnknownModelError(LookupError):
    def __init__(self, ref: str, suggestions: list[str]) -> None:
        hint = f"; did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"unknown API model {ref!r}{hint} (`auditor prices` lists them)")
        self.ref = ref
        self.suggestions = suggestions


def _genai_version() -> str:
    import genai_prices  # its version, read from its metadata once (a lookup costs a millisecond)

    return str(genai_prices.__version__)


def refresh_api_prices(url: str | None = None, timeout_s: float = 15) -> str | None:
    """Fetch genai-prices' newest catalog once, for the config that asks for it (`prices.fetch_updates`).

    Returns a warning when that failed: the bundled snapshot then stays in use."""
    from genai_prices import UpdatePrices

    updater = UpdatePrices() if url is None else UpdatePrices(url=url)
    try:
        updater.start()
        updated = updater.wait(timeout=timeout_s)
    # A refresh is optional: whatever broke it (network, HTTP status, a payload it cannot read), the
    # bundled prices still answer, and the caller reports the reason.
    except Exception as exc:  # noqa: BLE001
        return f"could not update API prices ({type(exc).__name__}: {exc}); using the bundled snapshot"
    finally:
        updater.stop()  # type: ignore[no-untyped-call]
    return None if updated else f"no API price update within {timeout_s:g} s; using the bundled snapshot"


def _split_ref(ref: str) -> tuple[str | None, str]:
    provider, sep, model = ref.partition(":")
    return (provider.strip().lower(), model.strip()) if sep else (None, ref.strip())


def _decimal(value: Any) -> Decimal | None:
    # genai-prices gives Decimal for flat prices and a TieredPrices object for tiered ones: the base tier.
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value
    base = getattr(value, "base", None)
    return base if isinstance(base, Decimal) else None


class ApiPriceCatalog:
    """Looks up API prices: config overrides first, then the genai-prices snapshot."""

    def __init__(
        self,
        overrides: Mapping[str, ApiPriceOverride] | None = None,
        *,
        now: datetime | None = None,
    ) -> None:
        self._overrides = dict(overrides or {})
        self._now = now or datetime.now(tz=UTC)
        self._snapshot_as_of: date | None = None

    def _source(self) -> str:
        fetched = " (fetched)" if self._snapshot().from_auto_update else ""
        return f"genai-prices {_genai_version()}{fetched}"

    def _snapshot(self) -> Any:
        from genai_prices import data_snapshot  # loads a large table: only when a price is needed

        return data_snapshot.get_snapshot()

    def snapshot_date(self) -> date | None:
        """The date genai-prices' data is known good on: a fetched update's time, else the newest
        price change already in effect that the bundled snapshot holds (it was made on or after that
        day; changes it announces for later days do not date it)."""
        if self._snapshot_as_of is None:
            snapshot = self._snapshot()
            if snapshot.from_auto_update:
                self._snapshot_as_of = snapshot.timestamp.date()
            else:
                starts = [
                    start
                    for provider in snapshot.providers
                    for info in provider.models
                    if isinstance(info.prices, list)
                    for conditional in info.prices
                    if (start := getattr(conditional.constraint, "start_date", None)) is not None
                    and start <= self._now.date()
                ]
                self._snapshot_as_of = max(starts) if starts else date.min
        return None if self._snapshot_as_of == date.min else self._snapshot_as_of

    def _override(self, ref: str) -> ApiPrice | None:
        provider, model = _split_ref(ref)
        for key, o in self._overrides.items():
            key_provider, key_model = _split_ref(key)
            effective_provider = key_provider or o.provider
            if key_model.lower() == model.lower() and provider in (None, effective_provider.lower()):
                return ApiPrice(
                    provider=effective_provider,
                    model=key_model,
                    input_mtok_usd=o.input_mtok_usd,
                    output_mtok_usd=o.output_mtok_usd,
                    cache_read_mtok_usd=o.cache_read_mtok_usd,
                    source=f"config{f' ({o.source})' if o.source else ''}",
                    as_of=o.as_of,
                )
        return None

    def get(self, ref: str) -> ApiPrice:
        """The price of `provider:model` or `model`; UnknownModelError suggests close names."""
        found = self._override(ref)
        if found is not None:
            return found
        provider_id, model_ref = _split_ref(ref)
        if not model_ref:
            raise UnknownModelError(ref, [])
        try:
            provider, info = self._snapshot().find_provider_model(model_ref, None, provider_id, None)
        except LookupError:
            raise UnknownModelError(ref, self.suggest(ref)) from None
        price = self._token_price(provider.id, info)
        if price is None:  # priced per request, per image…: not comparable per token
            raise UnknownModelError(ref, [])
        return price

    def _token_price(self, provider_id: str, info: Any) -> ApiPrice | None:
        prices = info.get_prices(self._now)
        input_mtok = _decimal(getattr(prices, "input_mtok", None))
        output_mtok = _decimal(getattr(prices, "output_mtok", None))
        if input_mtok is None or output_mtok is None:
            return None
        return ApiPrice(
            provider=provider_id,
            model=info.id,
            input_mtok_usd=input_mtok,
            output_mtok_usd=output_mtok,
            cache_read_mtok_usd=_decimal(getattr(prices, "cache_read_mtok", None)),
            source=self._source(),
            as_of=self.snapshot_date(),
            name=info.name,
        )

    def all(self, provider: str | None = None) -> Iterator[ApiPrice]:
        """Every token-priced model, overrides included, optionally of one provider."""
        wanted = provider.lower() if provider else None
        for key in self._overrides:
            price = self._override(key)
            if price is not None and (wanted is None or price.provider.lower() == wanted):
                yield price
        for p in self._snapshot().providers:
            if wanted is not None and p.id != wanted:
                continue
            for info in p.models:
                price = None if info.deprecated else self._token_price(p.id, info)
                if price is not None:
                    yield price

    def providers(self) -> list[str]:
        return sorted({p.id for p in self._snapshot().providers} | {p.provider for p in self.all_overrides()})

    def all_overrides(self) -> list[ApiPrice]:
        return [p for key in self._overrides if (p := self._override(key)) is not None]

    def suggest(self, ref: str, limit: int = 3) -> list[str]:
        provider_id, model_ref = _split_ref(ref)
        candidates: dict[str, str] = {}
        for p in self._snapshot().providers:
            if provider_id and p.id != provider_id:
                continue
            for info in p.models:
                candidates[info.id.lower()] = f"{p.id}:{info.id}"
        for o in self.all_overrides():
            candidates[o.model.lower()] = o.ref
        close = difflib.get_close_matches(model_ref.lower(), list(candidates), n=limit, cutoff=0.6)
        return [candidates[c] for c in close]
