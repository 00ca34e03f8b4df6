"""The GPU price catalog: hourly instance prices of GPU clouds, each with its as-of date and source.

The catalog is a CSV file shipped as `auditor/data/gpu_prices.csv` (see `auditor/data/GPU_PRICES.md`);
`load_gpu_prices(path)` reads a file of the same form instead. Prices are USD per instance-hour, kept
as exact `Decimal`s. A price is only as good as its date: `stale_prices` says which ones are older than
the warning age (`prices.gpu_max_age_days` in the config, 180 days by default).
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Context, Decimal
from importlib.resources import files
from pathlib import Path

COLUMNS = (
    "provider",
    "instance_type",
    "gpu_type",
    "gpus",
    "pricing",
    "instance_hourly_usd",
    "region",
    "as_of",
    "source_url",
)
PRICING_KINDS = frozenset({"on_demand", "reserved_1y", "reserved_3y", "spot"})
KNOWN_GPU_TYPES = frozenset({"H100", "H200", "A100-40GB", "A100-80GB", "A10G", "L4", "L40S"})
"""The normalised GPU names of the packaged file; a user's own file may name others."""
DEFAULT_MAX_AGE_DAYS = 180

_HEADER = ",".join(COLUMNS)
_PRICING_LIST = ", ".join(sorted(PRICING_KINDS))
_WHOLE_NUMBER = re.compile(r"[0-9]+")
_PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# A fixed context, so that a caller's lowered precision cannot round a per-GPU price.
_DIVISION = Context(prec=50, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class GpuPrice:
    """One instance type's hourly price under one pricing model, in one region."""

    provider: str
    instance_type: str
    gpu_type: str
    gpus: int
    pricing: str
    instance_hourly_usd: Decimal
    region: str
    """The provider's region name, or `-` where the price is not regional."""
    as_of: date
    """When the price was observed or published."""
    source_url: str

    def __post_init__(self) -> None:
        if self.gpus <= 0:
            raise ValueError(f"gpus must be > 0, got {self.gpus}")
        if self.pricing not in PRICING_KINDS:
            raise ValueError(f"pricing must be one of {_PRICING_LIST}, got {self.pricing!r}")
        if not self.instance_hourly_usd.is_finite() or self.instance_hourly_usd < 0:
            raise ValueError(f"instance_hourly_usd must be finite and >= 0, got {self.instance_hourly_usd}")

    @property
    def gpu_hourly_usd(self) -> Decimal:
        """USD per GPU-hour: exact whenever the division terminates (a GPU count made of 2s and 5s)."""
        return _DIVISION.divide(self.instance_hourly_usd, Decimal(self.gpus))


class GpuPriceDataError(ValueError):
    """A GPU price file that cannot be used; the message names the file, row, column and value."""

    def __init__(self, source: str, row: int, column: str, value: str | None, problem: str) -> None:
        got = "" if value is None else f" (got {value!r})"
        super().__init__(f"{source}: row {row}, column {column!r}: {problem}{got}")
        self.source = source
        self.row = row
        self.column = column
        self.value = value


class UnknownInstanceError(LookupError):
    """No catalog row has this instance type; `suggestions` are close names, or a few known ones."""

    def __init__(self, name: str, suggestions: list[str], *, close: bool = True) -> None:
        if not suggestions:
            tail = "the GPU price catalog is empty"
        elif close:
            tail = f"did you mean: {', '.join(suggestions)}?"
        else:
            tail = f"known instance types include: {', '.join(suggestions)}"
        super().__init__(f"unknown instance type {name!r}; {tail}")
        self.name = name
        self.suggestions = suggestions


class PriceNotListedError(LookupError):
    """The instance type is in the catalog, but not with the pricing, provider or region asked for."""

    def __init__(
        self, name: str, pricing: str, listed: list[str], *, provider: str | None, region: str | None
    ) -> None:
        where = "".join(f" {word} {value}" for word, value in (("from", provider), ("in", region)) if value)
        has = ", ".join(listed)
        super().__init__(f"no {pricing} price{where} for instance type {name!r}; the catalog has: {has}")
        self.name = name
        self.listed = listed


class AmbiguousPriceError(LookupError):
    """Several rows match: the caller must name the provider or the region."""

    def __init__(self, name: str, listed: list[str]) -> None:
        matching = ", ".join(listed)
        super().__init__(f"instance type {name!r} has several prices ({matching}); name a provider or region")
        self.name = name
        self.listed = listed


def load_gpu_prices(path: Path | None = None) -> list[GpuPrice]:
    """Every row of a GPU price file (default: the packaged catalog), validated; GpuPriceDataError if bad."""
    if path is None:
        resource = files("auditor.data").joinpath("gpu_prices.csv")
        return parse_gpu_prices(resource.read_text(encoding="utf-8-sig"), source=str(resource))
    return parse_gpu_prices(path.read_text(encoding="utf-8-sig"), source=str(path))


def parse_gpu_prices(text: str, *, source: str) -> list[GpuPrice]:
    """The rows of GPU price CSV text; `source` names it in errors. Rows count from the header, row 1."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise GpuPriceDataError(source, 1, COLUMNS[0], None, f"empty file; the header is {_HEADER}")
    names = [h.strip() for h in header]
    _check_header(names, source)
    index = {name: i for i, name in enumerate(names)}
    prices: list[GpuPrice] = []
    first_row_of: dict[tuple[str, str, str, str], int] = {}
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        row = reader.line_num
        if len(fields) != len(names):
            raise _field_count_error(fields, names, source, row)
        price = _parse_row({c: fields[index[c]].strip() for c in COLUMNS}, source, row)
        # Two rows for one key would make a lookup ambiguous, or silently pick one of them.
        key = (price.provider, price.instance_type.lower(), price.pricing, price.region.lower())
        if key in first_row_of:
            problem = f"repeats row {first_row_of[key]} (same provider, pricing and region)"
            raise GpuPriceDataError(source, row, "instance_type", price.instance_type, problem)
        first_row_of[key] = row
        prices.append(price)
    return prices


def _check_header(names: list[str], source: str) -> None:
    for column in COLUMNS:
        if column not in names:
            raise GpuPriceDataError(source, 1, column, None, f"missing column; the header is {_HEADER}")
    for name in names:
        if name not in COLUMNS or names.count(name) > 1:
            raise GpuPriceDataError(source, 1, name, name, f"unexpected column; the header is {_HEADER}")


def _field_count_error(fields: list[str], names: list[str], source: str, row: int) -> GpuPriceDataError:
    counts = f"the row has {len(fields)} fields, the header {len(names)}"
    if len(fields) < len(names):
        return GpuPriceDataError(source, row, names[len(fields)], None, f"missing value; {counts}")
    extra = ",".join(fields[len(names) - 1 :])
    return GpuPriceDataError(source, row, names[-1], extra, f"{counts} (a comma that should be quoted?)")


_Fail = Callable[[str, str], GpuPriceDataError]
"""Makes the error for a column of the row being parsed, given the problem."""


def _parse_row(values: dict[str, str], source: str, row: int) -> GpuPrice:
    def fail(column: str, problem: str) -> GpuPriceDataError:
        return GpuPriceDataError(source, row, column, values[column], problem)

    for column in COLUMNS:
        if not values[column]:
            raise fail(column, "missing value")
    if values["provider"] != values["provider"].lower():
        raise fail("provider", "must be lower-case")
    if values["pricing"] not in PRICING_KINDS:
        raise fail("pricing", f"must be one of {_PRICING_LIST}")
    return GpuPrice(
        provider=values["provider"],
        instance_type=values["instance_type"],
        gpu_type=values["gpu_type"],
        gpus=_parse_gpus(values["gpus"], fail),
        pricing=values["pricing"],
        instance_hourly_usd=_parse_usd(values["instance_hourly_usd"], fail),
        region=values["region"],
        as_of=_parse_date(values["as_of"], fail),
        source_url=_parse_url(values["source_url"], fail),
    )


def _parse_gpus(text: str, fail: _Fail) -> int:
    if not _WHOLE_NUMBER.fullmatch(text):
        raise fail("gpus", "not a whole number of GPUs")
    if int(text) <= 0:
        raise fail("gpus", "must be > 0")
    return int(text)


def _parse_usd(text: str, fail: _Fail) -> Decimal:
    if text.startswith("-"):
        raise fail("instance_hourly_usd", "must be >= 0")
    if not _PLAIN_DECIMAL.fullmatch(text):
        raise fail("instance_hourly_usd", "not a plain decimal amount such as 55.04")
    return Decimal(text)


def _parse_date(text: str, fail: _Fail) -> date:
    if not _ISO_DATE.fullmatch(text):
        raise fail("as_of", "not an ISO date such as 2026-05-01")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise fail("as_of", "not a real date") from None


def _parse_url(text: str, fail: _Fail) -> str:
    if not text.startswith("https://") or len(text) == len("https://"):
        raise fail("source_url", "must be the https:// address of the page that states the price")
    return text


def find_gpu_price(
    prices: Sequence[GpuPrice],
    instance_type: str,
    *,
    pricing: str = "on_demand",
    provider: str | None = None,
    region: str | None = None,
) -> GpuPrice:
    """The one row for an instance type (any case) under `pricing`, optionally of one provider or region.

    UnknownInstanceError (with close names) when no row has the name; PriceNotListedError when rows
    have it but none with that pricing, provider or region; AmbiguousPriceError when several match.
    """
    if pricing not in PRICING_KINDS:
        raise ValueError(f"pricing must be one of {_PRICING_LIST}, got {pricing!r}")
    wanted = instance_type.strip().lower()
    named = [p for p in prices if p.instance_type.lower() == wanted]
    if not named:
        suggestions, close = _suggest(prices, wanted)
        raise UnknownInstanceError(instance_type, suggestions, close=close)
    matches = [
        p
        for p in named
        if p.pricing == pricing
        and (provider is None or p.provider == provider.strip().lower())
        and (region is None or p.region.lower() == region.strip().lower())
    ]
    if not matches:
        listed = sorted({_describe(p) for p in named})
        raise PriceNotListedError(instance_type, pricing, listed, provider=provider, region=region)
    if len(matches) > 1:
        raise AmbiguousPriceError(instance_type, sorted(_describe(p) for p in matches))
    return matches[0]


def _describe(price: GpuPrice) -> str:
    return f"{price.provider} {price.pricing} {price.region}"


def _suggest(prices: Sequence[GpuPrice], wanted: str, limit: int = 3) -> tuple[list[str], bool]:
    by_lower = {p.instance_type.lower(): p.instance_type for p in prices}
    close = difflib.get_close_matches(wanted, list(by_lower), n=limit, cutoff=0.6)
    if close:
        return [by_lower[c] for c in close], True
    return sorted(by_lower.values(), key=str.lower)[:5], False


def stale_prices(
    prices: Sequence[GpuPrice], today: date, max_age_days: int = DEFAULT_MAX_AGE_DAYS
) -> list[GpuPrice]:
    """The prices whose as-of date is more than `max_age_days` before `today`, in catalog order."""
    if max_age_days < 0:
        raise ValueError(f"max_age_days must be >= 0, got {max_age_days}")
    return [p for p in prices if (today - p.as_of).days > max_age_days]
