"""FOCUS bill exports (FinOps Open Cost and Usage Specification 1.0-1.2) → GPU cost lines.

One path reads every cloud's bill: AWS Data Exports, Google Cloud's FOCUS view, Azure Cost Management
exports and OCI all write FOCUS. A large account's month is millions of rows, of which a few percent
are GPU compute, so a file is read in batches of projected columns (pyarrow's streaming CSV and Parquet
readers: memory does not grow with the file), each batch filtered to GPU lines in Arrow (instance
families and accelerator SKUs, from the price catalog and config), and only those rows are parsed, as
exact `Decimal`s, and summed per billing period × charge period × resource × SKU.

A file missing a required column, or a GPU row with a malformed number or date, raises `FocusError`
naming the file and the row; nothing of it is returned, so nothing is half-imported. Negative lines
(credits, refunds) are kept. A bill in another currency than USD needs its rate (`billing.currency_rates`).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, cast
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from auditor.errors import BadInputError
from auditor.gpu_prices import GpuPrice
from auditor.model import CostBasis, CostLine

BATCH_ROWS = 65_536
"""Rows per batch: a batch of ~20 string columns is a few tens of MiB at most."""

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


class FocusError(BadInputError):
    """A bill file that cannot be imported; the message names the file and, where it applies, the row."""


@dataclass(frozen=True, slots=True)
class GpuMatcher:
    """Recognises GPU compute lines: one regular expression (RE2 and Python alike) over the describing
    columns, and the GPUs per instance of the instance types the catalog knows."""

    pattern: str
    gpus_by_type: Mapping[str, int]
    _type_re: re.Pattern[str] = field(repr=False, compare=False)

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
        return cls(pattern, gpus, re.compile(f"(?i){type_pattern}"))

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
    periods: set[int] = field(default_factory=set)
    """Every billing period the files hold, GPU lines or not: each replaces its old lines whole."""
    origins: list[str] = field(default_factory=list)
    _sums: dict[tuple[Any, ...], _Sums] = field(default_factory=dict)
    _types: dict[str, str | None] = field(default_factory=dict)

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
            _epoch(period_end, "BillingPeriodEnd", where) > self.now_ts if _text(period_end) else False
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
                gpu_hours = hours * gpus
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
        tags = _tags(row.get("Tags"), where)
        known = self._sums.get(key)
        if known is None:
            self._sums[key] = _Sums(billed, effective, listed, hours, gpu_hours, tags, estimated)
            return
        known.billed += billed
        known.effective += effective
        known.listed += listed
        known.hours = _plus(known.hours, hours)
        known.gpu_hours = _plus(known.gpu_hours, gpu_hours)
        known.tags_json = known.tags_json or tags
        known.estimated = known.estimated or estimated

    def lines(self) -> dict[int, list[CostLine]]:
        """The summed lines, per billing period (every period read, an empty list where no GPU line)."""
        out: dict[int, list[CostLine]] = {period: [] for period in self.periods}
        for key, sums in self._sums.items():
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
            rate = Decimal(1) if cur == "USD" else self.currency_rates[cur]
            out.setdefault(period, []).append(
                CostLine(
                    day=_local_day(start, self.tz),
                    source=self.source,
                    account=account,
                    resource=resource,
                    usage_type=usage,
                    amount_usd=sums.effective * rate,
                    usage_hours=sums.hours,
                    gpu_hours=sums.gpu_hours,
                    basis=CostBasis.AMORTIZED,
                    estimated=sums.estimated,
                    charge_period_start_ts=start,
                    charge_period_end_ts=end,
                    billing_period_start_ts=period,
                    billed_cost=sums.billed,
                    effective_cost=sums.effective,
                    list_cost=sums.listed,
                    billing_currency=cur,
                    usd_rate=rate,
                    charge_category=category or None,
                    pricing_category=pricing,
                    commitment_discount_id=cd,
                    provider=provider,
                    sub_account=sub,
                    region=region,
                    sku_id=sku,
                    tags_json=sums.tags_json,
                )
            )
        for lines in out.values():
            lines.sort(key=lambda x: (x.charge_period_start_ts or 0, x.resource, x.usage_type))
        return out

    # -- files --------------------------------------------------------------------------------------

    def read_file(self, path: Path, *, name: str | None = None) -> None:
        """Read one FOCUS file (CSV, CSV.gz or Parquet) into this import; FocusError names what is wrong."""
        shown = name or str(path)
        parquet = path.name.lower().endswith((".parquet", ".parquet.snappy", ".snappy.parquet"))
        try:
            batches = self._parquet_batches(path, shown) if parquet else self._csv_batches(path, shown)
            for batch, first_row in batches:
                self._take_batch(batch, first_row, shown, header_rows=0 if parquet else 1)
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
            raise FocusError(
                f"{shown}: cannot be read as a FOCUS {'Parquet' if parquet else 'CSV'} file: {exc}"
            ) from None
        self.origins.append(shown)

    def _csv_batches(self, path: Path, shown: str) -> Iterator[tuple[pa.RecordBatch, int]]:
        header = _csv_header(path)
        columns = _project(header, shown)
        reader = pacsv.open_csv(
            pa.input_stream(str(path)),  # compression from the name (.gz)
            read_options=pacsv.ReadOptions(block_size=8 << 20),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns,
                column_types=dict.fromkeys(columns, pa.string()),
                null_values=["NULL", ""],
                strings_can_be_null=True,
            ),
        )
        row = 0
        for batch in reader:
            yield batch, row
            row += batch.num_rows

    def _parquet_batches(self, path: Path, shown: str) -> Iterator[tuple[pa.RecordBatch, int]]:
        parquet = pq.ParquetFile(str(path))
        columns = _project(parquet.schema_arrow.names, shown)
        row = 0
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            yield batch, row
            row += batch.num_rows

    def _take_batch(self, batch: pa.RecordBatch, first_row: int, shown: str, header_rows: int) -> None:
        self.rows_read += batch.num_rows
        for value in pc.unique(batch.column("BillingPeriodStart")).to_pylist():
            if value is not None:
                self.add_period(value, f"{shown} (BillingPeriodStart {value!r})")
        names = batch.schema.names
        parts = [pc.fill_null(_as_text(batch.column(c)), "") for c in DESCRIBING_COLUMNS if c in names]
        if not parts:
            return
        described = pc.binary_join_element_wise(*parts, " ")
        mask = pc.match_substring_regex(described, self.matcher.pattern)
        picked = pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist()
        if not picked:
            return
        rows = batch.take(pa.array(picked)).to_pylist()
        for index, row in zip(picked, rows, strict=True):
            self.add_row(row, f"{shown} row {first_row + index + 1 + header_rows}")


def _as_text(column: pa.Array) -> pa.Array:
    return column if column.type == pa.string() else pc.cast(column, pa.string())


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
        return next(csv.reader(text), [])


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


def _plus(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    if a is None:
        return b
    return a if b is None else a + b


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
