"""The FOCUS import's Arrow path: a bill file streamed in batches, filtered to GPU lines and summed per
line in Arrow, so that Python never holds a row of a million-row bill.

pyarrow's streaming CSV and Parquet readers read projected columns, text columns dictionary-encoded
(memory does not grow with the file); each batch is filtered to GPU lines on each column's dictionary
(the matcher's pattern, RE2 here, Python's `re` on the row-by-row path: the pattern is written to mean
the same in both), and its GPU rows converted and summed per line (`GROUP_KEYS`): costs and quantities
as decimal128(38, 18), exact, never float; times and tags parsed once per distinct value. Python sees
each summed line once (as `CostLine`, its amounts as `Decimal`). A batch Arrow cannot convert exactly (a
malformed value, a number out of decimal128's range, a currency without its rate) goes row by row
instead (`FocusImport.add_row`): same sums, and the bad row named. `tests/test_focus_arrow.py` checks
that the two paths give the same lines.

Imported only for a file this path reads: pyarrow, and the pandas its conversions import, cost half a
second of start-up that a small CSV bill (read row by row in `collectors.focus`) does not pay.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from auditor.model import CostLine
from collectors.focus import (
    _AMORTIZED,
    _HOURS_UNITS,
    _TRAILING_ZEROS,
    DESCRIBING_COLUMNS,
    MAX_VALUE,
    RESTATED_WITHIN_S,
    FocusError,
    FocusImport,
    GpuMatcher,
    _csv_header,
    _epoch,
    _project,
    _Sums,
    _tags,
)

BATCH_ROWS = 65_536
"""Rows per batch: a batch of ~20 string columns is a few tens of MiB at most."""

NUMBER_COLUMNS = ("BilledCost", "EffectiveCost", "ListCost", "ConsumedQuantity", "PricingQuantity")
"""Read as plain text (every row differs); the other text columns are read dictionary-encoded (a
month's bill repeats a few thousand descriptions, accounts, SKUs and hours over millions of rows)."""


def read_arrow_file(read: FocusImport, path: Path, shown: str) -> None:
    """Read one FOCUS file (CSV, CSV.gz or Parquet) into `read`, streamed in batches; FocusError names
    what is wrong."""
    parquet = path.name.lower().endswith((".parquet", ".parquet.snappy", ".snappy.parquet"))
    try:
        batches = _parquet_batches(path, shown) if parquet else _csv_batches(path, shown)
        for batch, first_row in batches:
            _take_batch(read, batch, first_row, shown, header_rows=0 if parquet else 1)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        raise FocusError(
            f"{shown}: cannot be read as a FOCUS {'Parquet' if parquet else 'CSV'} file: {exc}"
        ) from None


def _csv_batches(path: Path, shown: str) -> Iterator[tuple[pa.RecordBatch, int]]:
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


def _parquet_batches(path: Path, shown: str) -> Iterator[tuple[pa.RecordBatch, int]]:
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


def _take_batch(
    read: FocusImport, batch: pa.RecordBatch, first_row: int, shown: str, header_rows: int
) -> None:
    read.rows_read += batch.num_rows
    for value in _distinct(batch.column("BillingPeriodStart")):
        if value is not None:
            read.add_period(value, f"{shown} (BillingPeriodStart {value!r})")
    mask = _gpu_mask(read.matcher, batch)
    if mask is None:
        return
    picked = batch.filter(mask)
    if picked.num_rows == 0:
        return
    try:
        groups = _group_batch(read, picked)
    except (_RowByRow, pa.ArrowInvalid, pa.ArrowNotImplementedError, FocusError):
        # Not exactly convertible in Arrow (a malformed value, a foreign currency without its rate, a
        # number beyond decimal128's range...): the row-by-row path takes the batch, exact, and names
        # the bad row if there is one.
        read.rows_by_row += picked.num_rows
        indices = pc.indices_nonzero(mask).to_pylist()
        for index, row in zip(indices, picked.to_pylist(), strict=True):
            read.add_row(row, f"{shown} row {first_row + index + 1 + header_rows}")
        return
    read.gpu_rows += picked.num_rows
    read._groups.append(groups)


def _gpu_mask(matcher: GpuMatcher, batch: pa.RecordBatch) -> pa.Array | None:
    """Which rows are GPU compute: the matcher's regex over the describing columns, run on each
    column's dictionary (a few thousand distinct texts) rather than on every row."""
    names = batch.schema.names
    present = [batch.column(c) for c in DESCRIBING_COLUMNS if c in names]
    if not present:
        return None
    pattern = matcher.pattern
    if not matcher.per_column:  # a configured keyword with a space may span two columns
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
MAX_ROWS = 10**7
"""Bound on the GPU rows one import sums in Arrow (beyond it, row by row): with `MAX_VALUE`, no Arrow
sum can reach decimal128(38, 18)'s 10^20, so none can overflow."""
_DICTIONARY = pa.dictionary(pa.int32(), pa.string())
_TEXT_NULLS = pa.array(["NULL", ""])
_SUMS = ("billed", "effective", "listed", "hours", "gpu_hours")
LINES_AT_ONCE = 65_536
"""Summed lines turned into Python objects a slice at a time (the transient lists stay small)."""


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
            "account": _codes(read, pc.fill_null(text("BillingAccountId"), "")),
            "sub": _codes(read, text("SubAccountId")),
            "resource": _codes(read, pc.fill_null(text("ResourceId"), "")),
            "usage": _codes(read, usage),
            "sku": _codes(read, text("SkuId")),
            "category": _codes(read, category),
            "pricing": _codes(read, text("PricingCategory")),
            "cd": _codes(read, text("CommitmentDiscountId")),
            "provider": _codes(read, pc.coalesce(text("ServiceProviderName"), text("ProviderName"))),
            "region": _codes(read, text("RegionId")),
            "currency": _codes(read, currency),
            "billed": pc.fill_null(_amounts(column("BilledCost"), rows), zero),
            "effective": pc.fill_null(_amounts(column("EffectiveCost"), rows), zero),
            "listed": pc.fill_null(_amounts(column("ListCost"), rows), zero),
            "hours": hours,
            "gpu_hours": gpu_hours,
            "tags": _codes(read, tags),
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
        pc.cast(column, pa.string()), pattern=_TRAILING_ZEROS.pattern, replacement=r"\1\2"
    )
    return _shared(text, lambda v: Decimal(v).normalize() if "E" in v else Decimal(v))


def _codes(read: FocusImport, texts: pa.Array) -> pa.Array:
    """Texts as codes into `read._texts` (nulls stay null), each distinct text looked up once a batch."""
    encoded = pc.dictionary_encode(texts)
    known = read._text_codes
    codes = []
    for text in encoded.dictionary.to_pylist():
        code = known.get(text)
        if code is None:
            code = known[text] = len(read._texts)
            read._texts.append(text)
        codes.append(code)
    return pa.array(codes, pa.int32()).take(encoded.indices)


def _decoded(read: FocusImport, codes: pa.ChunkedArray) -> list[str | None]:
    texts = read._texts
    return [None if c is None else texts[c] for c in codes.to_pylist()]


def group_lines(
    read: FocusImport, slow: dict[tuple[Any, ...], _Sums], out: dict[int, list[CostLine]]
) -> None:
    """One line per group Arrow summed: Python sees each group once, never each bill row. Groups
    are converted a slice at a time, and repeated values (accounts, SKUs, hours, amounts) become one
    shared Python object each, so the lines cost little more memory than their distinct amounts.
    Lines the row-by-row path also summed (`slow`) take the Arrow sums into theirs."""
    groups = _regroup(pa.concat_tables(read._groups))
    read._groups = [groups]
    # The order the row-by-row path sorts by: charge period, resource, usage type (as text).
    by_text = sorted(range(len(read._texts)), key=read._texts.__getitem__)
    rank = pc.sort_indices(pa.array(by_text, pa.int32()))  # the inverse permutation: code -> rank
    groups = groups.append_column("resource_rank", rank.take(groups.column("resource")))
    groups = groups.append_column("usage_rank", rank.take(groups.column("usage")))
    # Ties as the row-by-row path leaves them: the line first seen first (Arrow's group order is
    # not the order groups are first seen in).
    order = [(k, "ascending") for k in ("period", "start", "resource_rank", "usage_rank", "seen")]
    groups = groups.sort_by(order)
    texts = pa.array(read._texts, pa.string())
    for offset in range(0, groups.num_rows, LINES_AT_ONCE):
        part = groups.slice(offset, LINES_AT_ONCE)
        starts = _shared(part.column("start"))
        day_of = {start: read._day(start) for start in set(starts)}
        iso = {start: day.isoformat() for start, day in day_of.items()}
        line_keys = _line_keys(part, texts, pa.array([iso[start] for start in starts], pa.string()))
        columns = [
            starts
            if k == "start"
            else _shared(part.column(k))
            if k in ("period", "end")
            else _decoded(read, part.column(k))
            for k in GROUP_KEYS
        ]
        amounts = [_decimals(part.column(c)) for c in _SUMS]
        tags = _decoded(read, part.column("tags"))
        flags = _shared(part.column("estimated"))
        for key, line_key, billed, effective, listed, hours, gpu_hours, tags_json, estimated in zip(
            zip(*columns, strict=True), line_keys, *amounts, tags, flags, strict=True
        ):
            sums = (billed, effective, listed, hours, gpu_hours, tags_json, bool(estimated))
            if slow and key in slow:  # the same line also had rows the row-by-row path summed
                slow[key].add(_Sums(*sums))
                continue
            out[key[0]].append(read._line(key, sums, line_key))


def _joined(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    table = pa.Table.from_batches(batches).unify_dictionaries().combine_chunks()
    return table.to_batches()[0]
