"""FOCUS bill exports (FinOps Open Cost and Usage Specification 1.0-1.2) → GPU cost lines.

One path reads every cloud's bill: AWS Data Exports, Google Cloud's FOCUS view, Azure Cost Management
exports and OCI all write FOCUS. A GPU line is recognised by its instance type or accelerator SKU
(`GpuMatcher`: the instance families and SKUs of the price catalog and config), and GPU rows are summed
per line (billing period × charge period × account × resource × usage type × SKU × categories): costs
and quantities as `Decimal`, exact, never float.

A large account's month is millions of rows, of which a few percent are GPU compute: such a file
streams through Arrow (`collectors.focus_arrow`), which filters and sums it without a Python object per
row. A short CSV is read here, row by row (`FocusImport.add_row`, the path BigQuery's rows take), without
pyarrow's start-up. Both give the same lines (`tests/test_focus_arrow.py`).

A file missing a required column, or a GPU row with a malformed number or date, raises `FocusError`
naming the file and the row; nothing of it is returned, so nothing is half-imported. Negative lines
(credits, refunds) are kept. A bill in another currency than USD needs its rate (`billing.currency_rates`).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Context, Decimal, InvalidOperation
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo

from auditor.errors import BadInputError
from auditor.gpu_prices import GpuPrice
from auditor.model import COST_LINE_FIELDS, CostBasis, CostLine, cost_line_from_fields

if TYPE_CHECKING:
    import pyarrow as pa

REQUIRED_COLUMNS = (
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "BillingCurrency",
    "BillingAccountId",
    "BillingPeriodStart",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ChargeCategory",
)
"""Mandatory in FOCUS 1.0-1.2 and needed here: the costs, their currency, the periods, the account."""

OPTIONAL_COLUMNS = (
    "BillingPeriodEnd",
    "PricingCategory",
    "CommitmentDiscountId",
    "ProviderName",
    "ServiceProviderName",
    "SubAccountId",
    "RegionId",
    "ResourceId",
    "ResourceType",
    "SkuId",
    "SkuMeter",
    "ChargeDescription",
    "ConsumedQuantity",
    "ConsumedUnit",
    "PricingQuantity",
    "PricingUnit",
    "Tags",
    "x_UsageType",
)
"""Read where present: 1.0 names the provider `ProviderName`, 1.2 `ServiceProviderName`; `SkuMeter`
(1.1+) and AWS's `x_UsageType` name the instance type when the description does not."""

DESCRIBING_COLUMNS = ("ChargeDescription", "SkuMeter", "x_UsageType", "SkuId")
"""The columns a GPU line is recognised by (instance type or accelerator SKU in their text)."""

_AWS_GPU_FAMILIES = (
    *("p2", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200", "p6e-gb200"),
    *("g3", "g3s", "g4dn", "g4ad", "g5", "g5g", "g6", "g6e", "g6f", "gr6", "g7e"),
)
"""EC2 GPU instance families, besides those the price catalog lists."""
_OTHER_GPU_PATTERNS = (
    r"(?:a2|a3|a4)-(?:high|ultra|mega|edge)gpu-[0-9]+g",  # GCP accelerator-optimized machine types
    r"g2-standard-[0-9]+",
    r"Standard_N[CDVG][0-9]+[A-Za-z0-9_]*",  # Azure N-series
    r"BM\.GPU[A-Za-z0-9.]*|VM\.GPU[A-Za-z0-9.]*",  # OCI GPU shapes
)
DEFAULT_GPU_KEYWORDS = ("GPU", "Nvidia", "Tesla")


def _sizes(families: str, counts: dict[str, int]) -> dict[str, int]:
    return {f"{family}.{size}": n for family in families.split() for size, n in counts.items()}


KNOWN_GPU_COUNTS = {
    **_sizes("g4dn g5 g6 g6e", {"xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1}),
    **_sizes("g4dn g5 g6 g6e", {"12xlarge": 4, "24xlarge": 4, "48xlarge": 8}),
    **_sizes("g3", {"4xlarge": 1, "8xlarge": 2, "16xlarge": 4}),
    "g3s.xlarge": 1,
    **_sizes("p3", {"2xlarge": 1, "8xlarge": 4, "16xlarge": 8}),
    **_sizes("p3dn p4d p4de p5 p5e p5en", {"24xlarge": 8, "48xlarge": 8}),
    "p5.4xlarge": 1,
}
"""GPUs per EC2 instance for the sizes the price catalog may not list (AWS's instance type pages)."""
_HOURS_UNITS = frozenset({"hours", "hour", "hrs", "hr", "h"})
FOCUS_TIME = "%Y-%m-%d %H:%M:%S"


RESTATED_WITHIN_S = 14 * 86_400
"""A bill's lines stay *estimated* until two weeks after their billing period ends: AWS restates a
closed month for about that long (refunds, credits, late usage); other clouds settle sooner, so this
errs on the side of saying "may still change"."""

SMALL_CSV_BYTES = 8 << 20
"""A plain CSV bill up to this size is read row by row here (a small account's month, the demo's):
Python's csv module takes it in a fraction of the half second that importing pyarrow (and the pandas its
conversions import) would cost. Bigger files, CSV.gz and Parquet stream through Arrow."""

MAX_VALUE = Decimal(10) ** 12
"""Bound on a cost or quantity (exclusive): the Arrow path hands anything bigger to the row-by-row
path, which refuses it naming the row."""
_LINE_FIELDS = (
    *("day", "source", "account", "resource", "usage_type", "amount_usd", "deployment", "usage_hours"),
    *("gpu_hours", "basis", "estimated", "charge_period_start_ts", "charge_period_end_ts"),
    *("billing_period_start_ts", "billed_cost", "effective_cost", "list_cost", "billing_currency"),
    *("usd_rate", "charge_category", "pricing_category", "commitment_discount_id", "provider"),
    *("sub_account", "region", "sku_id", "tags_json", "line_key"),
)
"""The order `FocusImport._line` gives a line's fields in: `CostLine`'s own, checked when this is imported."""
if _LINE_FIELDS != COST_LINE_FIELDS:
    raise ImportError(
        f"collectors.focus builds CostLine from fields {_LINE_FIELDS}, it has {COST_LINE_FIELDS}"
    )
_AMORTIZED = CostBasis.AMORTIZED
_ONE = Decimal(1)
_EXACT = Context(prec=60)
"""Sums and GPU-hours of bill rows, exact as Arrow's decimal128(38, 18) is: the default context keeps
28 digits, and 10^10 dollars to 18 places is already 29. Sixty digits hold any sum of ten million rows
under `MAX_VALUE` to 18 places (37 digits) with room for bills that give more places."""


class FocusError(BadInputError):
    """A bill file that cannot be imported; the message names the file and, where it applies, the row."""


@dataclass(frozen=True, slots=True)
class GpuMatcher:
    """Recognises GPU compute lines: one regular expression (RE2 and Python alike) over the describing
    columns, and the GPUs per instance of the instance types the catalog knows."""

    pattern: str
    gpus_by_type: Mapping[str, int]
    _type_re: re.Pattern[str] = field(repr=False, compare=False)
    per_column: bool = True
    """No alternative can match a space, so matching each describing column alone finds what matching
    them joined by spaces finds (a configured keyword `Tesla T4` could span two columns: not then)."""

    @classmethod
    def build(
        cls,
        catalog: Sequence[GpuPrice],
        extra_types: Iterable[str] = (),
        extra_keywords: Iterable[str] = (),
    ) -> GpuMatcher:
        families = set(_AWS_GPU_FAMILIES)
        exact = set()
        gpus: dict[str, int] = dict(KNOWN_GPU_COUNTS)
        for row in catalog:
            gpus[row.instance_type.lower()] = row.gpus
            if row.provider == "aws" and "." in row.instance_type:
                families.add(row.instance_type.split(".")[0])
            else:
                exact.add(row.instance_type)
        for extra in extra_types:
            (exact if "." in extra or "-" in extra or "_" in extra else families).add(extra)
        type_alternatives = [
            r"(?:"
            + "|".join(re.escape(f) for f in sorted(families, key=len, reverse=True))
            + r")\.[0-9]*x?large",
            *(re.escape(e) for e in sorted(exact, key=len, reverse=True)),
            *_OTHER_GPU_PATTERNS,
        ]
        type_pattern = r"\b(" + "|".join(type_alternatives) + r")\b"
        keywords = [*DEFAULT_GPU_KEYWORDS, *extra_keywords]
        keyword_pattern = r"\b(?:" + "|".join(re.escape(k) for k in keywords) + r")\b"
        pattern = f"(?i){type_pattern}|{keyword_pattern}"
        words = (*families, *exact, *keywords)
        per_column = not any(ch.isspace() for word in words for ch in word)
        return cls(pattern, gpus, re.compile(f"(?i){type_pattern}"), per_column)

    def instance_type(self, text: str) -> str | None:
        """The instance type named in a line's text (`g5.4xlarge`), if any."""
        found = self._type_re.search(text)
        return found.group(1) if found else None

    def gpus(self, instance_type: str | None) -> int | None:
        return None if instance_type is None else self.gpus_by_type.get(instance_type.lower())


@dataclass(slots=True)
class _Sums:
    billed: Decimal
    effective: Decimal
    listed: Decimal
    hours: Decimal | None
    gpu_hours: Decimal | None
    tags_json: str | None
    estimated: bool

    def values(self) -> tuple[Decimal, Decimal, Decimal, Decimal | None, Decimal | None, str | None, bool]:
        return (
            self.billed,
            self.effective,
            self.listed,
            self.hours,
            self.gpu_hours,
            self.tags_json,
            self.estimated,
        )

    def written(self) -> tuple[Decimal, Decimal, Decimal, Decimal | None, Decimal | None, str | None, bool]:
        """The sums as the Arrow path writes them (`collectors.focus_arrow._decimals`): a bill's figures
        are the same in every output whichever path read them."""
        return (
            _as_arrow_writes(self.billed),
            _as_arrow_writes(self.effective),
            _as_arrow_writes(self.listed),
            None if self.hours is None else _as_arrow_writes(self.hours),
            None if self.gpu_hours is None else _as_arrow_writes(self.gpu_hours),
            self.tags_json,
            self.estimated,
        )

    def add(self, other: _Sums) -> None:
        self.billed = _EXACT.add(self.billed, other.billed)
        self.effective = _EXACT.add(self.effective, other.effective)
        self.listed = _EXACT.add(self.listed, other.listed)
        self.hours = _plus(self.hours, other.hours)
        self.gpu_hours = _plus(self.gpu_hours, other.gpu_hours)
        self.tags_json = self.tags_json or other.tags_json
        self.estimated = self.estimated or other.estimated


@dataclass
class FocusImport:
    """Lines read from bills, not yet attributed: per billing period (`BillingPeriodStart`, UTC epoch
    seconds), GPU lines summed per charge period × account × resource × SKU × category."""

    source: str
    tz: ZoneInfo
    currency_rates: Mapping[str, Decimal]
    matcher: GpuMatcher
    now_ts: float
    rows_read: int = 0
    gpu_rows: int = 0
    rows_by_row: int = 0
    """GPU rows of files that Arrow could not sum exactly (a malformed or out-of-range value, a currency
    without its rate): read one by one, as BigQuery's rows are."""
    periods: set[int] = field(default_factory=set)
    """Every billing period the files hold, GPU lines or not: each replaces its old lines whole."""
    origins: list[str] = field(default_factory=list)
    _sums: dict[tuple[Any, ...], _Sums] = field(default_factory=dict)
    _types: dict[str, str | None] = field(default_factory=dict)
    _groups: list[pa.Table] = field(default_factory=list)
    """Per batch, its GPU rows summed in Arrow per line (`GROUP_KEYS`); `lines` sums them once more."""
    _days: dict[int, date] = field(default_factory=dict)
    _texts: list[str] = field(default_factory=list)
    """The distinct texts of the summed lines (accounts, resources, SKUs, tags...): the Arrow groups
    hold their codes (int32, an index here), small to keep and quick to hash, and each text becomes one
    shared Python string."""
    _text_codes: dict[str, int] = field(default_factory=dict)

    def add_period(self, value: object, where: str) -> None:
        self.periods.add(_epoch(value, "BillingPeriodStart", where))

    def add_row(self, row: Mapping[str, Any], where: str) -> None:
        """One GPU row of a bill (values as strings, or typed as BigQuery returns them)."""
        self.gpu_rows += 1
        currency = _text(row.get("BillingCurrency")) or "USD"
        if currency != "USD" and currency not in self.currency_rates:
            raise FocusError(
                f"{where}: BillingCurrency is {currency}, and billing.currency_rates has no rate for it; "
                f"add `currency_rates = {{ {currency} = <USD per {currency}> }}` under [billing]"
            )
        billed = _money(row.get("BilledCost"), "BilledCost", where)
        effective = _money(row.get("EffectiveCost"), "EffectiveCost", where)
        listed = _money(row.get("ListCost"), "ListCost", where)
        period = _epoch(row.get("BillingPeriodStart"), "BillingPeriodStart", where)
        start = _epoch(row.get("ChargePeriodStart"), "ChargePeriodStart", where)
        end = _epoch(row.get("ChargePeriodEnd"), "ChargePeriodEnd", where)
        if end <= start:
            raise FocusError(f"{where}: ChargePeriodEnd is not after ChargePeriodStart")
        period_end = row.get("BillingPeriodEnd")
        estimated = (
            _epoch(period_end, "BillingPeriodEnd", where) + RESTATED_WITHIN_S > self.now_ts
            if _text(period_end)
            else False
        )
        description = " ".join(_text(row.get(c)) or "" for c in DESCRIBING_COLUMNS)
        if description in self._types:
            instance_type = self._types[description]
        else:
            instance_type = self._types[description] = self.matcher.instance_type(description)
        usage_type = (
            _text(row.get("x_UsageType"))
            or instance_type
            or _text(row.get("SkuMeter"))
            or (_text(row.get("ChargeDescription")) or "")[:255]
        )
        hours = _hours(row, where)
        gpus = self.matcher.gpus(instance_type)
        category = _text(row.get("ChargeCategory")) or ""
        gpu_hours: Decimal | None = None
        if hours is not None and category == "Usage":
            if gpus is not None:
                gpu_hours = _EXACT.multiply(hours, gpus)
            elif instance_type is None:  # an accelerator SKU ("Nvidia H100 80GB GPU"): billed per GPU-hour
                gpu_hours = hours
        key = (
            period,
            start,
            end,
            _text(row.get("BillingAccountId")) or "",
            _text(row.get("SubAccountId")),
            _text(row.get("ResourceId")) or "",
            usage_type,
            _text(row.get("SkuId")),
            category,
            _text(row.get("PricingCategory")),
            _text(row.get("CommitmentDiscountId")),
            _text(row.get("ServiceProviderName")) or _text(row.get("ProviderName")),
            _text(row.get("RegionId")),
            currency,
        )
        summed = _Sums(billed, effective, listed, hours, gpu_hours, _tags(row.get("Tags"), where), estimated)
        known = self._sums.get(key)
        if known is None:
            self._sums[key] = summed
        else:
            known.add(summed)

    def lines(self) -> dict[int, list[CostLine]]:
        """The summed lines, per billing period (every period read, an empty list where no GPU line)."""
        out: dict[int, list[CostLine]] = {period: [] for period in self.periods}
        slow = dict(self._sums)  # rows the row-by-row path summed (BigQuery rows, batches Arrow refused)
        if self._groups:
            from collectors.focus_arrow import group_lines

            group_lines(self, slow, out)
        for key, summed in slow.items():
            out.setdefault(key[0], []).append(self._line(key, summed.written()))
        if slow:  # else Arrow has sorted them already
            for lines in out.values():
                lines.sort(key=lambda x: (x.charge_period_start_ts or 0, x.resource, x.usage_type))
        return out

    def _line(
        self,
        key: tuple[Any, ...],
        sums: tuple[Decimal, Decimal, Decimal, Decimal | None, Decimal | None, str | None, bool],
        line_key: str = "",
    ) -> CostLine:
        """The line of a group (`GROUP_KEYS` values) and its sums (billed, effective, listed, hours,
        GPU-hours, tags, estimated); its key computed unless given."""
        (
            period,
            start,
            end,
            account,
            sub,
            resource,
            usage,
            sku,
            category,
            pricing,
            cd,
            provider,
            region,
            cur,
        ) = key
        billed, effective, listed, hours, gpu_hours, tags_json, estimated = sums
        rate = _ONE if cur == "USD" else self.currency_rates[cur]
        values = (
            self._day(start),
            self.source,
            account,
            resource,
            usage,
            effective if cur == "USD" else effective * rate,  # amount_usd
            None,  # deployment: attribution's part
            hours,
            gpu_hours,
            _AMORTIZED,
            estimated,
            start,
            end,
            period,
            billed,
            effective,
            listed,
            cur,
            rate,
            category or None,
            pricing,
            cd,
            provider,
            sub,
            region,
            sku,
            tags_json,
        )
        if not line_key:
            return CostLine(*values)  # COST_LINE_FIELDS order, checked on import
        return cost_line_from_fields((*values, line_key))

    def _day(self, start: int) -> date:
        day = self._days.get(start)
        if day is None:
            day = self._days[start] = _local_day(start, self.tz)
        return day

    # -- files --------------------------------------------------------------------------------------

    def read_file(self, path: Path, *, name: str | None = None) -> None:
        """Read one FOCUS file (CSV, CSV.gz or Parquet) into this import; FocusError names what is wrong.

        A short plain CSV (`SMALL_CSV_BYTES`, ASCII) is read here, row by row; any other file goes
        through the Arrow path (`collectors.focus_arrow`), which streams it in bounded memory."""
        shown = name or str(path)
        records = self._small_csv(path, shown)
        if records is None:
            from collectors.focus_arrow import read_arrow_file

            read_arrow_file(self, path, shown)
        else:
            self._read_records(records, shown)
        self.origins.append(shown)

    def _small_csv(self, path: Path, shown: str) -> list[list[str]] | None:
        """The records (header first, blank lines skipped) of a plain CSV file of at most
        `SMALL_CSV_BYTES`, if it and the GPU pattern are ASCII (there Python's `re` and Arrow's RE2 read
        the pattern alike: word boundaries and case folding differ only beyond ASCII). A file the csv
        module cannot parse (a field over its 128 KiB limit) is left to Arrow, so that a file is taken
        or refused alike whatever its size."""
        if not path.name.lower().endswith(".csv") or not self.matcher.pattern.isascii():
            return None
        try:
            if path.stat().st_size > SMALL_CSV_BYTES:
                return None
            data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
        except OSError as exc:
            raise FocusError(f"{shown}: cannot be read as a FOCUS CSV file: {exc}") from None
        if not data.isascii():
            return None
        try:
            return [values for values in csv.reader(io.StringIO(data.decode("ascii"), newline="")) if values]
        except csv.Error:
            return None

    def _read_records(self, records: list[list[str]], shown: str) -> None:
        """A CSV bill's records, as the Arrow path reads them: `NULL` and empty values are nulls, and a
        row is named by its record number (the header is row 1)."""
        header = records[0] if records else []
        at = {c: header.index(c) for c in _project(header, shown)}
        describing = [at[c] for c in DESCRIBING_COLUMNS if c in at]
        period_at = at["BillingPeriodStart"]
        pattern = re.compile(self.matcher.pattern)
        per_column = self.matcher.per_column
        gpu_by_text: dict[tuple[str, ...], bool] = {}
        periods: set[str] = set()
        for number, values in enumerate(records[1:], start=2):
            if len(values) != len(header):
                raise FocusError(
                    f"{shown}: cannot be read as a FOCUS CSV file: row {number} has {len(values)} "
                    f"fields, the header {len(header)}"
                )
            self.rows_read += 1
            period = values[period_at]
            if period not in periods:
                periods.add(period)
                if _text(period) is not None:
                    self.add_period(period, f"{shown} (BillingPeriodStart {period!r})")
            if not describing:
                continue
            described = tuple(values[i] for i in describing)
            gpu = gpu_by_text.get(described)
            if gpu is None:
                if per_column:
                    gpu = any(pattern.search(t) for t in described if _text(t) is not None)
                else:  # a configured keyword with a space may span two columns
                    gpu = pattern.search(" ".join(_text(t) or "" for t in described)) is not None
                gpu_by_text[described] = gpu
            if gpu:
                self.add_row({c: values[i] for c, i in at.items()}, f"{shown} row {number}")


def _project(names: Sequence[str], shown: str) -> list[str]:
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise FocusError(
            f"{shown}: not a FOCUS export: missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (FOCUS 1.0-1.2 has them)"
        )
    wanted = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    return [c for c in names if c in wanted]


def _csv_header(path: Path) -> list[str]:
    opened = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")  # noqa: SIM115
    with opened as raw, io.TextIOWrapper(cast("IO[bytes]", raw), encoding="utf-8-sig", newline="") as text:
        return next((record for record in csv.reader(text) if record), [])


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return None if text == "" or text == "NULL" else text


def _money(value: object, column: str, where: str) -> Decimal:
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        amount = Decimal(repr(value))
    else:
        text = _text(value)
        if text is None:
            return Decimal(0)  # FOCUS costs are never null; an anonymised NULL reads as nothing spent
        try:
            amount = Decimal(text.strip())
        except InvalidOperation:
            raise FocusError(f"{where}: {column} is not a number: {text[:40]!r}") from None
    if not amount.is_finite():
        raise FocusError(f"{where}: {column} is not a finite number: {value!r}")
    if abs(amount) >= MAX_VALUE:  # stored, it would make every later report fail
        raise FocusError(f"{where}: {column} is {amount:.3e}, not a bill line's figure (at most ±10^12)")
    return amount


_EPOCHS: dict[str, int] = {}
"""Parsed times by their text: a month's bill has a few hundred distinct hours over millions of rows."""
_TAGS: dict[str, str | None] = {}
_CACHE_MAX = 100_000


def _epoch(value: object, column: str, where: str) -> int:
    if isinstance(value, str):
        known = _EPOCHS.get(value)
        if known is not None:
            return known
        parsed = _parse_epoch(value, column, where)
        if len(_EPOCHS) < _CACHE_MAX:
            _EPOCHS[value] = parsed
        return parsed
    return _parse_epoch(value, column, where)


def _parse_epoch(value: object, column: str, where: str) -> int:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
    else:
        text = _text(value)
        if text is None:
            raise FocusError(f"{where}: {column} is empty")
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise FocusError(f"{where}: {column} is not a date and time: {text[:40]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # FOCUS times are UTC
    return int(moment.timestamp())


def _hours(row: Mapping[str, Any], where: str) -> Decimal | None:
    for quantity, unit in (("ConsumedQuantity", "ConsumedUnit"), ("PricingQuantity", "PricingUnit")):
        unit_text = (_text(row.get(unit)) or "").strip().lower()
        if unit_text in _HOURS_UNITS and _text(row.get(quantity)) is not None:
            return _money(row.get(quantity), quantity, where)
    return None


def _tags(value: object, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value in _TAGS:
            return _TAGS[value]
        parsed = _parse_tags(value, where)
        if len(_TAGS) < _CACHE_MAX:
            _TAGS[value] = parsed
        return parsed
    return _parse_tags(value, where)


def _parse_tags(value: object, where: str) -> str | None:
    if isinstance(value, str):
        text = _text(value)
        if text is None:
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise FocusError(f"{where}: Tags is not JSON: {text[:40]!r}") from None
        if value is None:
            return None
    if isinstance(value, Mapping):
        tags = {str(k): "" if v is None else str(v) for k, v in value.items()}
    elif isinstance(value, list):  # Parquet map<string,string> (pairs) or BigQuery ARRAY<STRUCT<key, value>>
        tags = {}
        for item in value:
            if isinstance(item, Mapping):
                tags[str(item.get("key"))] = str(item.get("value"))
            elif isinstance(item, list | tuple) and len(item) == 2:
                tags[str(item[0])] = str(item[1])
            else:
                raise FocusError(f"{where}: Tags is neither a JSON object nor key-value pairs")
    else:
        raise FocusError(f"{where}: Tags is not a JSON object: {str(value)[:40]!r}")
    return json.dumps(tags, sort_keys=True, separators=(",", ":")) if tags else None


_TRAILING_ZEROS = re.compile(r"^(-?[0-9]+)(?:\.0+|(\.[0-9]*[1-9])0+)$")


def _as_arrow_writes(value: Decimal) -> Decimal:
    """`value` written as decimal128(38, 18) reads back through Arrow's text: without trailing zeros
    (`1.5`, not `1.500`; `100`, not `1E+2`), and in exponent form below 10^-6 (`8E-7`), where Arrow and
    Python's decimal both switch to it. A value with more decimals than 18 never went through Arrow: as
    it is."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -18:
        return value
    if not value:
        return Decimal(0)
    if value.adjusted() < -6:
        return value.normalize()
    return Decimal(_TRAILING_ZEROS.sub(r"\1\2", f"{value:f}"))


def _plus(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    if a is None:
        return b
    return a if b is None else _EXACT.add(a, b)


def _local_day(ts: int, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(ts, tz).date()


def focus_files(paths: Iterable[Path]) -> list[Path]:
    """The bill files named: files as given, folders searched for CSV, CSV.gz and Parquet files."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file() and p.name.lower().endswith((".csv", ".csv.gz", ".parquet"))
                )
            )
        else:
            found.append(path)
    return found
