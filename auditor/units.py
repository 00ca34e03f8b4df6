"""Parsing and showing quantities people type and read: token volumes, dollars, shares."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from auditor.costing import Saving

_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
CENT = Decimal("0.01")
MAX_TOKENS = 10**18
"""A billion billion tokens: beyond any fleet's volume, and within exact arithmetic."""
MAX_USD = Decimal(10**12)
MAX_GPUS = 10**6
"""A million GPUs: more than any fleet; a larger count is a typo."""
MAX_TOKENS_PER_S = 1e12
"""The same bound as `capacity_tokens_per_s` in the config."""


def parse_token_count(text: str) -> int:
    """`100M`, `1.5B`, `2e9`, `120000000`, `120_000_000` → a whole, non-negative number of tokens.

    ValueError says what was wrong and how to write it."""
    cleaned = text.strip().replace("_", "").replace(",", "")
    suffix = cleaned[-1:].upper() if cleaned[-1:].isalpha() and cleaned[-1:].upper() in _SUFFIXES else ""
    number = cleaned[: -len(suffix)] if suffix else cleaned
    try:
        value = Decimal(number) * _SUFFIXES[suffix]
    except ArithmeticError:  # InvalidOperation, or Overflow past the exponent range
        raise ValueError(f"{text!r} is not a token count; write e.g. 100M, 1.5B, 2e9 or 120000000") from None
    if not value.is_finite():
        raise ValueError(f"{text!r} is not a finite token count")
    if value < 0:
        raise ValueError(f"{text!r} is negative; token counts are 0 or more")
    if value > MAX_TOKENS:
        raise ValueError(f"{text!r} is more than 10^18 tokens; give a realistic volume")
    if value != value.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of tokens")
    return int(value)


def parse_usd(text: str, *, allow_zero: bool = True) -> Decimal:
    """`2.50`, `$2.50`, `25,000` → an exact, non-negative Decimal."""
    cleaned = text.strip().removeprefix("$").replace("_", "").replace(",", "")
    try:
        value = Decimal(cleaned)
    except ArithmeticError:  # InvalidOperation, or Overflow past the exponent range
        raise ValueError(f"{text!r} is not an amount in USD; write e.g. 2.50") from None
    if not value.is_finite() or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{text!r} must be {'0 or more' if allow_zero else 'more than 0'} USD")
    if value > MAX_USD:
        raise ValueError(f"{text!r} is more than $10^12; give a realistic amount")
    return value


def parse_positive(text: str, unit: str, maximum: Decimal | None = None) -> Decimal:
    """A number more than 0 of `unit` (hours, say), exactly, and at most `maximum` when given."""
    try:
        value = Decimal(text.strip().replace("_", "").replace(",", ""))
    except ArithmeticError:  # InvalidOperation, or Overflow past the exponent range
        raise ValueError(f"{text!r} is not a number of {unit}") from None
    if not value.is_finite() or value <= 0:
        raise ValueError(f"{text!r} must be more than 0 {unit}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{text!r} is more than {maximum} {unit}")
    return value


def cents(amount: Decimal) -> Decimal:
    """Round to the cent for display (banker's rounding, as accounting systems do)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def format_usd(amount: Decimal | None) -> str:
    if amount is None:
        return "—"
    rounded = cents(amount)
    sign = "-" if rounded < 0 else ""
    return f"{sign}${abs(rounded):,.2f}"


def format_tokens(count: float | Decimal | None) -> str:
    """1,500,000,000 → `1.50B`; small counts in full."""
    if count is None:
        return "—"
    value = float(count)
    for factor, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:,.2f}{suffix}"
    return f"{value:,.0f}"


def format_share(share: float | Decimal | None) -> str:
    if share is None:
        return "—"
    percent = float(share) * 100
    return f"{percent:,.2f}%" if abs(percent) < 1 else f"{percent:,.1f}%"


def format_saving(saving: Saving) -> str:
    """The one savings figure in words, with what it is over: `$312.23 in 2026-10`, `$301.81/month at
    the last 7 days' rate (to …), over a 744-hour month`. The sign is the caller's verb (save / cost)."""
    amount = format_usd(abs(saving.usd))
    return f"{amount}/month {saving.basis}" if saving.per_month else f"{amount} in {saving.basis}"


def allocate_cents(parts: Sequence[Decimal]) -> tuple[list[Decimal], Decimal]:
    """Round parts and their total to the cent so that the parts shown sum to the total shown.

    The total is the exact sum rounded once (half-even, as `cents`); each part is its exact amount
    floored to the cent, and the cents still missing go, one each, to the parts with the largest
    remainders (the largest-remainder method; ties to the earlier part). Every part moves by less
    than a cent."""
    total = cents(sum(parts, Decimal(0)))
    floors = [p.quantize(CENT, rounding=ROUND_FLOOR) for p in parts]
    missing = int((total - sum(floors, Decimal(0))) / CENT)
    order = sorted(range(len(parts)), key=lambda i: (-(parts[i] - floors[i]), i))
    shown = list(floors)
    for i in order[:missing]:
        shown[i] += CENT
    return shown, total
