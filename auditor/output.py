"""One output layer: every command computes one typed, immutable result and renders it here.

A command builds its result (a frozen dataclass: `auditor.results`, or the report's `MonthReport`)
and hands it to `emit` with the text renderer of that result (`reports.terminal`); `--json` renders
the same result with `render_json`. Nothing renders a figure that is not in the result, so the
terminal and JSON cannot disagree about it.

**The rounding convention (the only one; the docs point here).**

- *Machine formats* (JSON, CSV) carry every figure exactly as computed: money is the exact
  `Decimal` (in JSON a number with all its digits: parse it with `parse_float=Decimal` to keep
  them), shares, hours and rates are the float computed (shortest repr), token counts are integers.
  Nothing is rounded, so every derived figure can be recomputed from the ones beside it.
- *Human formats* (the terminal, Markdown, HTML, Slack, the digest) round once, for display: money
  to the cent, half-even (`units.cents`, `units.format_usd`); the parts shown of a total by largest
  remainder so that they sum to the total shown (`units.allocate_cents`, `reports.labels`); shares
  to 0.1% (`units.format_share`); token counts grouped (`units.format_tokens`).
- Unknown is `null` in JSON, empty in CSV and `—` (or words) on screen: never 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal
from enum import Enum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from rich.console import Console

R = TypeVar("R")

TextRenderer = Callable[[R, "Console"], None]
"""Writes a result for a person; rounds only as the convention above says."""


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


def to_data(value: Any) -> Any:
    """A result as JSON-ready data (Decimals kept exact): dataclasses by field, in field order.

    A dataclass field whose metadata says `{"json": False}` is left out (a convenience for the text
    renderer that JSON does not need); an enum is its value; dates and times are ISO 8601."""
    if value is None or isinstance(value, (bool, int, str, Decimal)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a number JSON can hold")
        return value
    if isinstance(value, Enum):
        return to_data(value.value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_data(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.metadata.get("json", True)
        }
    if isinstance(value, Mapping):
        return {str(k): to_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_data(v) for v in value]
    raise TypeError(f"no JSON form for {type(value).__name__}")


def _write(data: Any, depth: int) -> str:
    """JSON as `json.dumps(indent=2)` writes it, but a Decimal is a number with all its digits."""
    if isinstance(data, Decimal):
        if not data.is_finite():
            raise ValueError(f"{data} is not a number JSON can hold")
        return format(data, "f")
    inner = "  " * (depth + 1)
    if isinstance(data, dict) and data:
        items = [f"{inner}{json.dumps(str(k))}: {_write(v, depth + 1)}" for k, v in data.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"
    if isinstance(data, list) and data:
        return "[\n" + ",\n".join(inner + _write(v, depth + 1) for v in data) + "\n" + "  " * depth + "]"
    return json.dumps(data, allow_nan=False)


def render_json(result: Any) -> str:
    """The machine form of a result (or of data already made by `to_data`): money exact."""
    return _write(to_data(result), 0)


def emit(result: R, fmt: OutputFormat, text: TextRenderer[R], out: Console | None = None) -> None:
    """Print a command's result in the format asked for: JSON to stdout, or text to the console."""
    if fmt is OutputFormat.JSON:
        sys.stdout.write(render_json(result) + "\n")
        return
    if out is None:
        from rich.console import Console

        # A pipe or a file gets a width that fits the tables, not the 80 columns rich assumes.
        out = Console() if sys.stdout.isatty() else Console(width=160)
    text(result, out)


def output_format(as_json: bool) -> OutputFormat:
    return OutputFormat.JSON if as_json else OutputFormat.TEXT
