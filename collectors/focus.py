"""FOCUS bill exports (FinOps Open Cost and Usage Specification 1.0-1.2) → GPU cost lines.

One path reads every cloud's bill: AWS Data Exports, Google Cloud's FOCUS view, Azure Cost Management
exports and OCI all write FOCUS. A large account's month is millions of rows, of which a few percent
are GPU compute, so a file is read in batches of projected columns (pyarrow's streaming CSV and Parquet
readers, text columns dictionary-encoded: memory does not grow with the file), each batch filtered to
GPU lines in Arrow (the instance families and accelerator SKUs of the price catalog and config, matched
on each column's dictionary), and its GPU rows converted and summed per line (billing period × charge
period × account × resource × usage type × SKU × categories, `GROUP_KEYS`) in Arrow too: costs and
quantities as decimal128(38, 18), exact, never float; times and tags parsed once per distinct value.
Python sees each summed line once (as `CostLine`, its amounts as `Decimal`), never each bill row. A batch
Arrow cannot convert exactly (a malformed value, a number out of decimal128's range, a currency without
its rate) is read row by row instead (`add_row`, the path BigQuery's rows take): same sums, and the bad
row named.

A file missing a required column, or a GPU row with a malformed number or date, raises `FocusError`
naming the file and the row; nothing of it is returned, so nothing is half-imported. Negative lines
(credits, refunds) are kept. A bill in another currency than USD needs its rate (`billing.currency_rates`).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, cast
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from auditor.errors import BadInputError
from auditor.gpu_prices import GpuPrice
from auditor.model import COST_LINE_FIELDS, CostBasis, CostLine, cost_line_from_fields

BATCH_ROWS = 65_536
"""Rows per batch: a batch of ~20 string columns is a few tens of MiB at most."""

NUMBER_COLUMNS = ("BilledCost", "EffectiveCost", "ListCost", "ConsumedQuantity", "PricingQuantity")
"""Read as plain text (every row differs); the other text columns are read dictionary-encoded (a
month's bill repeats a few thousand descriptions, accounts, SKUs and hours over millions of rows)."""

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

    def add(self, other: _Sums) -> None:
        self.billed += other.billed
        self.effective += other.effective
        self.listed += other.listed
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

    def codes(self, texts: pa.Array) -> pa.Array:
        """Texts as codes into `_texts` (nulls stay null), each distinct text looked up once a batch."""
        encoded = pc.dictionary_encode(texts)
        known = self._text_codes
        codes = []
        for text in encoded.dictionary.to_pylist():
            code = known.get(text)
            if code is None:
                code = known[text] = len(self._texts)
                self._texts.append(text)
            codes.append(code)
        return pa.array(codes, pa.int32()).take(encoded.indices)

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
            groups = _regroup(pa.concat_tables(self._groups))
            self._groups = [groups]
            self._line_groups(groups, slow, out)
        for key, summed in slow.items():
            out.setdefault(key[0], []).append(self._line(key, summed.values()))
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

    def _decoded(self, codes: pa.ChunkedArray) -> list[str | None]:
        texts = self._texts
        return [None if c is None else texts[c] for c in codes.to_pylist()]

    def _day(self, start: int) -> date:
        day = self._days.get(start)
        if day is None:
            day = self._days[start] = _local_day(start, self.tz)
        return day

    def _line_groups(
        self, groups: pa.Table, slow: dict[tuple[Any, ...], _Sums], out: dict[int, list[CostLine]]
    ) -> None:
        """One line per group Arrow summed: Python sees each group once, never each bill row. Groups
        are converted a slice at a time, and repeated values (accounts, SKUs, hours, amounts) become one
        shared Python object each, so the lines cost little more memory than their distinct amounts."""
        # The order the row-by-row path sorts by: charge period, resource, usage type (as text).
        by_text = sorted(range(len(self._texts)), key=self._texts.__getitem__)
        rank = pc.sort_indices(pa.array(by_text, pa.int32()))  # the inverse permutation: code -> rank
        groups = groups.append_column("resource_rank", rank.take(groups.column("resource")))
        groups = groups.append_column("usage_rank", rank.take(groups.column("usage")))
        # Ties as the row-by-row path leaves them: the line first seen first (Arrow's group order is
        # not the order groups are first seen in).
        order = [(k, "ascending") for k in ("period", "start", "resource_rank", "usage_rank", "seen")]
        groups = groups.sort_by(order)
        texts = pa.array(self._texts, pa.string())
        for offset in range(0, groups.num_rows, LINES_AT_ONCE):
            part = groups.slice(offset, LINES_AT_ONCE)
            starts = _shared(part.column("start"))
            day_of = {start: self._day(start) for start in set(starts)}
            iso = {start: day.isoformat() for start, day in day_of.items()}
            line_keys = _line_keys(part, texts, pa.array([iso[start] for start in starts], pa.string()))
            columns = [
                starts
                if k == "start"
                else _shared(part.column(k))
                if k in ("period", "end")
                else self._decoded(part.column(k))
                for k in GROUP_KEYS
            ]
            amounts = [_decimals(part.column(c)) for c in _SUMS]
            tags = self._decoded(part.column("tags"))
            flags = _shared(part.column("estimated"))
            for key, line_key, billed, effective, listed, hours, gpu_hours, tags_json, estimated in zip(
                zip(*columns, strict=True), line_keys, *amounts, tags, flags, strict=True
            ):
                sums = (billed, effective, listed, hours, gpu_hours, tags_json, bool(estimated))
                if slow and key in slow:  # the same line also had rows the row-by-row path summed
                    slow[key].add(_Sums(*sums))
                    continue
                out[key[0]].append(self._line(key, sums, line_key))

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
        # 1 MiB blocks, in this thread: Arrow's streaming reader holds more blocks ahead the bigger they
        # are (8 MiB blocks: 330 MiB at 5M rows; 1 MiB: 30 MiB). Its small batches are joined into
        # batches of `BATCH_ROWS` (their dictionaries unified) for the GPU filter and the sums.
        reader = pacsv.open_csv(
            pa.input_stream(str(path)),  # compression from the name (.gz)
            read_options=pacsv.ReadOptions(block_size=1 << 20, use_threads=False),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns,
                column_types={c: pa.string() if c in NUMBER_COLUMNS else _DICTIONARY for c in columns},
                null_values=["NULL", ""],
                strings_can_be_null=True,
            ),
        )
        row = 0
        pending: list[pa.RecordBatch] = []
        size = 0
        for batch in reader:
            pending.append(batch)
            size += batch.num_rows
            if size >= BATCH_ROWS:
                yield _joined(pending), row
                row, pending, size = row + size, [], 0
        if pending:
            yield _joined(pending), row

    def _parquet_batches(self, path: Path, shown: str) -> Iterator[tuple[pa.RecordBatch, int]]:
        schema = pq.read_schema(str(path))
        columns = _project(schema.names, shown)
        texts = [
            c
            for c in columns
            if c not in NUMBER_COLUMNS
            and (pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type))
        ]
        # Column chunks read as they are decoded (no pre-buffered row group), in this thread: a row
        # group's worth of compressed pages is not held at once, and RSS stays flat on 2 shared cores.
        parquet = pq.ParquetFile(str(path), read_dictionary=texts, pre_buffer=False, buffer_size=1 << 20)
        row = 0
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=False):
            yield batch, row
            row += batch.num_rows

    def _take_batch(self, batch: pa.RecordBatch, first_row: int, shown: str, header_rows: int) -> None:
        self.rows_read += batch.num_rows
        for value in _distinct(batch.column("BillingPeriodStart")):
            if value is not None:
                self.add_period(value, f"{shown} (BillingPeriodStart {value!r})")
        mask = self._gpu_mask(batch)
        if mask is None:
            return
        picked = batch.filter(mask)
        if picked.num_rows == 0:
            return
        try:
            groups = _group_batch(self, picked)
        except (_RowByRow, pa.ArrowInvalid, pa.ArrowNotImplementedError, FocusError):
            # Not exactly convertible in Arrow (a malformed value, a foreign currency without its rate, a
            # number beyond decimal128's range...): the row-by-row path takes the batch, exact, and names
            # the bad row if there is one.
            self.rows_by_row += picked.num_rows
            indices = pc.indices_nonzero(mask).to_pylist()
            for index, row in zip(indices, picked.to_pylist(), strict=True):
                self.add_row(row, f"{shown} row {first_row + index + 1 + header_rows}")
            return
        self.gpu_rows += picked.num_rows
        self._groups.append(groups)

    def _gpu_mask(self, batch: pa.RecordBatch) -> pa.Array | None:
        """Which rows are GPU compute: the matcher's regex over the describing columns, run on each
        column's dictionary (a few thousand distinct texts) rather than on every row."""
        names = batch.schema.names
        present = [batch.column(c) for c in DESCRIBING_COLUMNS if c in names]
        if not present:
            return None
        pattern = self.matcher.pattern
        if not self.matcher.per_column:  # a configured keyword with a space may span two columns
            parts = [pc.fill_null(_as_text(column), "") for column in present]
            return pc.fill_null(
                pc.match_substring_regex(pc.binary_join_element_wise(*parts, " "), pattern), False
            )
        mask: pa.Array | None = None
        for column in present:
            if pa.types.is_dictionary(column.type):
                found = pc.match_substring_regex(_as_text(column.dictionary), pattern).take(column.indices)
            else:
                found = pc.match_substring_regex(_as_text(column), pattern)
            found = pc.fill_null(found, False)
            mask = found if mask is None else pc.or_(mask, found)
        return mask


def _as_text(column: pa.Array) -> pa.Array:
    return column if column.type == pa.string() else pc.cast(column, pa.string())


# -- the Arrow path: a batch's GPU rows summed per line without a Python object per row -------------

GROUP_KEYS = (
    "period",
    "start",
    "end",
    "account",
    "sub",
    "resource",
    "usage",
    "sku",
    "category",
    "pricing",
    "cd",
    "provider",
    "region",
    "currency",
)
"""What identifies a summed line (the same fields, in the same order, as `FocusImport.add_row`'s key)."""
_MONEY = pa.decimal128(38, 18)
"""Costs and quantities, exact: 20 integer digits and 18 decimals, as the store's NUMERIC(38, 18)."""
_FACTOR = pa.decimal128(3, 0)
"""GPUs per instance, as int8 (a count over 127 goes row by row)."""
_HOURS = pa.decimal128(34, 18)
"""Hours to multiply by GPUs: decimal128(34, 18) × decimal128(3, 0) is still decimal128(38, 18)."""
MAX_VALUE = Decimal(10) ** 12
"""Bound on a cost or quantity (exclusive): the Arrow path hands anything bigger to the row-by-row
path, which refuses it naming the row. With `MAX_ROWS`, no Arrow sum can reach decimal128(38, 18)'s
10^20, so none can overflow."""
MAX_ROWS = 10**7
_DICTIONARY = pa.dictionary(pa.int32(), pa.string())
_TEXT_NULLS = pa.array(["NULL", ""])
_SUMS = ("billed", "effective", "listed", "hours", "gpu_hours")
_LINE_FIELDS = (
    *("day", "source", "account", "resource", "usage_type", "amount_usd", "deployment", "usage_hours"),
    *("gpu_hours", "basis", "estimated", "charge_period_start_ts", "charge_period_end_ts"),
    *("billing_period_start_ts", "billed_cost", "effective_cost", "list_cost", "billing_currency"),
    *("usd_rate", "charge_category", "pricing_category", "commitment_discount_id", "provider"),
    *("sub_account", "region", "sku_id", "tags_json", "line_key"),
)
"""The order `_line_groups` gives a line's fields in: `CostLine`'s own, checked when this is imported."""
if _LINE_FIELDS != COST_LINE_FIELDS:
    raise ImportError(
        f"collectors.focus builds CostLine from fields {_LINE_FIELDS}, it has {COST_LINE_FIELDS}"
    )
LINES_AT_ONCE = 65_536
"""Summed lines turned into Python objects a slice at a time (the transient lists stay small)."""
_AMORTIZED = CostBasis.AMORTIZED
_ONE = Decimal(1)


class _RowByRow(Exception):  # noqa: N818  (a signal, not an error: the batch is taken row by row)
    """A batch the Arrow path cannot convert exactly."""


def _distinct(column: pa.Array) -> list[Any]:
    """The distinct values of a column (of a dictionary column, those its rows use)."""
    if pa.types.is_dictionary(column.type):
        return cast("list[Any]", column.dictionary.take(pc.unique(column.indices)).to_pylist())
    return cast("list[Any]", pc.unique(column).to_pylist())


def _clean_text(column: pa.Array | None, rows: int) -> pa.Array:
    """A column as text, with FOCUS's `NULL` and empty strings as nulls (what `_text` reads as None)."""
    if column is None:
        return pa.nulls(rows, pa.string())
    if pa.types.is_dictionary(column.type):
        return _clean_text(column.dictionary, len(column.dictionary)).take(column.indices)
    text = _as_text(column)
    return pc.if_else(pc.is_in(text, value_set=_TEXT_NULLS), pa.scalar(None, pa.string()), text)


def _by_value(column: pa.Array, convert: Callable[[Any], Any], kind: pa.DataType) -> pa.Array:
    """`convert` applied once per distinct value (nulls stay null): bills repeat their texts."""
    encoded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
    converted = pa.array([convert(v) for v in encoded.dictionary.to_pylist()], type=kind)
    return converted.take(encoded.indices)


def _amounts(column: pa.Array | None, rows: int) -> pa.Array:
    """Exact decimals from text (or from Parquet numbers); raises where Arrow cannot convert exactly."""
    if column is None:
        return pa.nulls(rows, _MONEY)
    kind = column.type
    if pa.types.is_dictionary(kind):
        return _amounts(column.dictionary, len(column.dictionary)).take(column.indices)
    if pa.types.is_decimal(kind) or pa.types.is_integer(kind):
        amounts = pc.cast(column, _MONEY)
    elif pa.types.is_floating(kind):  # the shortest text that reads back as the float, as `_money`
        amounts = pc.cast(pc.cast(column, pa.string()), _MONEY)
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        amounts = pc.cast(_clean_text(column, rows), _MONEY)
    else:
        raise _RowByRow
    extremes = pc.min_max(amounts)
    low, high = extremes["min"].as_py(), extremes["max"].as_py()
    if (low is not None and low <= -MAX_VALUE) or (high is not None and high >= MAX_VALUE):
        raise _RowByRow
    return amounts


def _epochs(column: pa.Array | None, name: str, rows: int) -> pa.Array:
    """UTC epoch seconds, each distinct time parsed once by `_epoch` (FOCUS times repeat by the hour)."""
    if column is None:
        return pa.nulls(rows, pa.int64())
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        column = _clean_text(column, rows)
    return _by_value(column, lambda v: _epoch(v, name, name), pa.int64())


def _group_batch(read: FocusImport, picked: pa.RecordBatch) -> pa.Table:
    """A batch's GPU rows summed per line, all in Arrow (decimal128, never float): what `add_row` does
    row by row. Raises (`_RowByRow`, an Arrow error, `FocusError`) where it cannot do it exactly."""
    rows = picked.num_rows
    names = set(picked.schema.names)
    if read.gpu_rows + rows > MAX_ROWS:
        raise _RowByRow

    def column(name: str) -> pa.Array | None:
        return picked.column(name) if name in names else None

    def text(name: str) -> pa.Array:
        return _clean_text(column(name), rows)

    currency = pc.fill_null(text("BillingCurrency"), "USD")
    if any(c != "USD" and c not in read.currency_rates for c in _distinct(currency)):
        raise _RowByRow  # the row-by-row path names the row and the missing rate
    period = _epochs(column("BillingPeriodStart"), "BillingPeriodStart", rows)
    start = _epochs(column("ChargePeriodStart"), "ChargePeriodStart", rows)
    end = _epochs(column("ChargePeriodEnd"), "ChargePeriodEnd", rows)
    if period.null_count or start.null_count or end.null_count or pc.any(pc.less_equal(end, start)).as_py():
        raise _RowByRow
    period_end = _epochs(column("BillingPeriodEnd"), "BillingPeriodEnd", rows)
    estimated = pc.fill_null(pc.greater(period_end, read.now_ts - RESTATED_WITHIN_S), False)

    parts = [pc.fill_null(text(c), "") for c in DESCRIBING_COLUMNS]
    described = pc.binary_join_element_wise(*parts, " ")

    def instance_type(description: str) -> str | None:
        if description not in read._types:
            read._types[description] = read.matcher.instance_type(description)
        return read._types[description]

    instance = _by_value(described, instance_type, pa.string())
    short_description = _by_value(text("ChargeDescription"), lambda d: d[:255], pa.string())
    usage = pc.coalesce(text("x_UsageType"), instance, text("SkuMeter"), short_description, pa.scalar(""))
    category = pc.fill_null(text("ChargeCategory"), "")

    def hours_in(quantity: str, unit: str) -> tuple[pa.Array, pa.Array]:
        is_hours = _by_value(text(unit), lambda u: u.strip().lower() in _HOURS_UNITS, pa.bool_())
        amounts = _amounts(column(quantity), rows)
        return pc.and_(pc.fill_null(is_hours, False), amounts.is_valid()), amounts

    consumed, consumed_hours = hours_in("ConsumedQuantity", "ConsumedUnit")
    priced, priced_hours = hours_in("PricingQuantity", "PricingUnit")
    hours = pc.if_else(consumed, consumed_hours, pc.if_else(priced, priced_hours, pa.scalar(None, _MONEY)))
    gpus = _by_value(instance, read.matcher.gpus, pa.int32())
    # GPUs per instance where the type is known; 1 for an accelerator SKU (billed per GPU-hour); none
    # for an instance type whose GPU count nobody knows; and only usage bills GPU-hours.
    factor = pc.if_else(gpus.is_valid(), gpus, pc.if_else(instance.is_null(), 1, pa.scalar(None, pa.int32())))
    factor = pc.if_else(pc.equal(category, "Usage"), factor, pa.scalar(None, pa.int32()))
    gpu_hours = pc.cast(
        pc.multiply(pc.cast(hours, _HOURS), pc.cast(pc.cast(factor, pa.int8()), _FACTOR)), _MONEY
    )

    tags_column = column("Tags")
    if tags_column is None:
        tags = pa.nulls(rows, pa.string())
    elif pa.types.is_dictionary(tags_column.type) or pa.types.is_string(tags_column.type):
        tags = _by_value(text("Tags"), lambda v: _tags(v, "Tags"), pa.string())
    else:  # Parquet map<string, string> or a list of pairs: few GPU rows, converted one by one
        tags = pa.array([_tags(v, "Tags") for v in tags_column.to_pylist()], pa.string())
    zero = pa.scalar(Decimal(0), _MONEY)
    table = pa.table(
        {
            "period": period,
            "start": start,
            "end": end,
            "account": read.codes(pc.fill_null(text("BillingAccountId"), "")),
            "sub": read.codes(text("SubAccountId")),
            "resource": read.codes(pc.fill_null(text("ResourceId"), "")),
            "usage": read.codes(usage),
            "sku": read.codes(text("SkuId")),
            "category": read.codes(category),
            "pricing": read.codes(text("PricingCategory")),
            "cd": read.codes(text("CommitmentDiscountId")),
            "provider": read.codes(pc.coalesce(text("ServiceProviderName"), text("ProviderName"))),
            "region": read.codes(text("RegionId")),
            "currency": read.codes(currency),
            "billed": pc.fill_null(_amounts(column("BilledCost"), rows), zero),
            "effective": pc.fill_null(_amounts(column("EffectiveCost"), rows), zero),
            "listed": pc.fill_null(_amounts(column("ListCost"), rows), zero),
            "hours": hours,
            "gpu_hours": gpu_hours,
            "tags": read.codes(tags),
            "estimated": estimated,
            "seen": pa.array(np.arange(read.gpu_rows, read.gpu_rows + rows, dtype=np.int64)),
        }
    )
    return _regroup(table)


def _regroup(table: pa.Table) -> pa.Table:
    """Sum rows (or already summed groups) per line: sums skip nulls and stay null where all are (as
    `_plus`), the first tags in row order win, a line is estimated if any of its rows is."""
    some = pc.ScalarAggregateOptions(skip_nulls=True, min_count=1)
    summed = table.group_by(list(GROUP_KEYS), use_threads=False).aggregate(
        [
            *((c, "sum", some) for c in _SUMS),
            ("tags", "first"),
            ("estimated", "any"),
            ("seen", "min"),
        ]
    )
    names = {
        **{f"{c}_sum": c for c in _SUMS},
        "tags_first": "tags",
        "estimated_any": "estimated",
        "seen_min": "seen",
    }
    return summed.rename_columns([names.get(n, n) for n in summed.schema.names])


def _line_keys(groups: pa.Table, texts: pa.Array, days: pa.Array) -> list[str]:
    """`auditor.model.cost_line_key` of each group's line (no deployment yet, basis amortized), the
    identity joined in Arrow: Python only hashes one string a line."""

    def part(name: str) -> pa.Array:
        column = groups.column(name).combine_chunks()
        return pc.fill_null(texts.take(column) if name not in ("start", "end") else _as_text(column), "")

    joined = pc.binary_join_element_wise(
        part("account"),
        part("sub"),
        days,
        part("start"),
        part("end"),
        part("resource"),
        part("usage"),
        part("sku"),
        part("category"),
        part("pricing"),
        part("cd"),
        "",
        _AMORTIZED.value,
        part("provider"),
        part("region"),
        part("currency"),
        "\x1f",
    )
    return [hashlib.blake2b(j.encode(), digest_size=16).hexdigest() for j in joined.to_pylist()]


def _shared(column: pa.ChunkedArray | pa.Array, convert: Callable[[Any], Any] | None = None) -> list[Any]:
    """A column's values as Python objects (`convert`ed), one object per distinct value, where
    `to_pylist` would make one per row."""
    whole = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    encoded = pc.dictionary_encode(whole)
    values = encoded.dictionary.to_pylist()
    if convert is not None:
        values = [convert(v) for v in values]
    return [None if i is None else values[i] for i in encoded.indices.to_pylist()]


def _decimals(column: pa.ChunkedArray | pa.Array) -> list[Decimal | None]:
    """Arrow decimals as Python `Decimal`s without decimal128's padding zeros (`1.5`, not
    `1.500000000000000000`; `100`, not `1E+2`; Arrow writes tiny ones as `8.000E-7`: normalized)."""
    text = pc.replace_substring_regex(
        pc.cast(column, pa.string()), pattern=r"^(-?[0-9]+)(?:\.0+|(\.[0-9]*[1-9])0+)$", replacement=r"\1\2"
    )
    return _shared(text, lambda v: Decimal(v).normalize() if "E" in v else Decimal(v))


def _project(names: Sequence[str], shown: str) -> list[str]:
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise FocusError(
            f"{shown}: not a FOCUS export: missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (FOCUS 1.0-1.2 has them)"
        )
    wanted = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    return [c for c in names if c in wanted]


def _joined(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    table = pa.Table.from_batches(batches).unify_dictionaries().combine_chunks()
    return table.to_batches()[0]


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
