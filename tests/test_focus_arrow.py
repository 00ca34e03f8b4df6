"""The FOCUS import's Arrow path (GPU rows filtered, converted and summed per line in Arrow, in
decimal128) gives exactly the lines the row-by-row path gives (`FocusImport.add_row`, the path BigQuery
rows take): same keys, same amounts to the last digit, same hours, tags and flags; CSV and Parquet
alike, Parquet with typed columns too. What Arrow cannot convert exactly goes row by row, and still
names the file and row of a bad value."""

from __future__ import annotations

import csv
import json
import re
import tempfile
from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.gpu_prices import load_gpu_prices
from auditor.model import CostLine, cost_line_key
from collectors.focus import (
    DESCRIBING_COLUMNS,
    MAX_VALUE,
    SMALL_CSV_BYTES,
    FocusError,
    FocusImport,
    GpuMatcher,
)
from collectors.focus_arrow import read_arrow_file

CATALOG = load_gpu_prices()
NOW = datetime(2024, 9, 20, tzinfo=UTC).timestamp()
COLUMNS = (
    "BilledCost", "EffectiveCost", "ListCost", "BillingCurrency", "BillingAccountId", "BillingPeriodStart",
    "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd", "ChargeCategory", "ChargeDescription",
    "ConsumedQuantity", "ConsumedUnit", "PricingQuantity", "PricingUnit", "ResourceId", "SkuId",
    "SubAccountId", "PricingCategory", "ProviderName", "RegionId", "Tags", "x_UsageType",
)  # fmt: skip
DESCRIPTIONS = (
    "$1.006 per On Demand Linux g5.4xlarge Instance Hour",
    "$5.672 per On Demand Linux g5.12xlarge Instance Hour",
    "Savings Plan: p4d.24xlarge in us-east-1",
    "Nvidia H100 80GB GPU running in Americas",
    "$0.10 per GB-month of gp3 storage",
    "t3.large Linux instance hour",
    "NULL",
    "",
)
PERIODS = ("2024-08-01 00:00:00", "2024-09-01 00:00:00", "2024-09-01T00:00:00Z")
PERIOD_ENDS = ("2024-09-01 00:00:00", "2024-10-01 00:00:00", "NULL")


def amount(limit: str = "1000000") -> st.SearchStrategy[str]:
    number = st.decimals(
        min_value=-Decimal(limit), max_value=Decimal(limit), allow_nan=False, allow_infinity=False, places=12
    )
    texts = number.map(str) | number.map(lambda d: f"{d:f}") | number.map(lambda d: f"{d:.3E}")
    return texts | st.sampled_from(["NULL", "", "0", "2.000000000000000", "-0.5"])


row_strategy = st.fixed_dictionaries(
    {
        "BilledCost": amount(),
        "EffectiveCost": amount(),
        "ListCost": amount(),
        "BillingCurrency": st.sampled_from(["USD", "USD", "EUR", "NULL"]),
        "BillingAccountId": st.sampled_from(["111", "222", "NULL"]),
        "period": st.integers(0, len(PERIODS) - 1),
        "hour": st.integers(0, 3),
        "ChargeCategory": st.sampled_from(["Usage", "Usage", "Credit", "Tax", "NULL"]),
        "ChargeDescription": st.sampled_from(DESCRIPTIONS),
        "ConsumedQuantity": amount("100"),
        "ConsumedUnit": st.sampled_from(["Hours", " hrs ", "GB", "NULL"]),
        "PricingQuantity": amount("100"),
        "PricingUnit": st.sampled_from(["Hours", "Requests", "NULL"]),
        "ResourceId": st.sampled_from(["i-1", "i-2", "arn:node/Gpu-Node", "NULL"]),
        "SkuId": st.sampled_from(["SKU1", "SKU2", "NULL"]),
        "SubAccountId": st.sampled_from(["9", "NULL"]),
        "PricingCategory": st.sampled_from(["Standard", "Committed", "NULL"]),
        "ProviderName": st.sampled_from(["AWS", "NULL"]),
        "RegionId": st.sampled_from(["us-east-1", "NULL"]),
        "Tags": st.sampled_from(
            ['{"deployment":"a"}', '{"team":"x","deployment":"b"}', "{}", "null", "NULL", '{"k":null}']
        ),
        "x_UsageType": st.sampled_from(["BoxUsage:g5.4xlarge", "NULL", "NULL"]),
    }
)


def _rows(drawn: Sequence[dict[str, object]]) -> list[dict[str, str]]:
    rows = []
    for d in drawn:
        period = int(str(d["period"]))
        hour = int(str(d["hour"]))
        start = f"2024-0{8 + min(period, 1)}-01 {hour:02d}:00:00"
        row = {c: str(d[c]) for c in COLUMNS if c in d}
        row |= {
            "BillingPeriodStart": PERIODS[period],
            "BillingPeriodEnd": PERIOD_ENDS[period],
            "ChargePeriodStart": start,
            "ChargePeriodEnd": start.replace(f" {hour:02d}:", f" {hour + 1:02d}:"),
        }
        rows.append(row)
    return rows


def _matcher(keywords: Sequence[str] = ()) -> GpuMatcher:
    return GpuMatcher.build(CATALOG, (), keywords)


def _new(matcher: GpuMatcher) -> FocusImport:
    return FocusImport("s", ZoneInfo("America/New_York"), {"EUR": Decimal("1.0837")}, matcher, NOW)


def _row_by_row(rows: Sequence[dict[str, str]], matcher: GpuMatcher) -> FocusImport:
    """The truth: each GPU row (found by the matcher's pattern in Python) through `add_row`."""
    read = _new(matcher)
    pattern = re.compile(matcher.pattern)
    for number, row in enumerate(rows):
        read.add_period(row["BillingPeriodStart"], "file")
        described = " ".join("" if row.get(c) in (None, "NULL") else row[c] for c in DESCRIBING_COLUMNS)
        if pattern.search(described):
            read.add_row(row, f"file row {number}")
    read.rows_read = len(rows)
    return read


def _write_csv(path: Path, rows: Sequence[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_parquet(path: Path, rows: Sequence[dict[str, str]]) -> Path:
    pq.write_table(pa.table({c: [r[c] for r in rows] for c in COLUMNS}), path)
    return path


def _arrow(read: FocusImport, path: Path) -> FocusImport:
    """`path` read by the Arrow path, whatever its size (`read_file` reads a short CSV row by row)."""
    read_arrow_file(read, path, path.name)
    return read


def _same(got: dict[int, list[CostLine]], truth: dict[int, list[CostLine]]) -> None:
    assert got.keys() == truth.keys()
    for period, lines in truth.items():
        # Every field (Decimals by value, to the last digit), in the same order. (Lines differing only
        # in region, provider or currency share a line key: compared by position, not by key.)
        assert got[period] == lines
        assert all(x.line_key == cost_line_key(x) for x in got[period])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=st.lists(row_strategy, min_size=1, max_size=60), parquet=st.booleans(), keyword=st.booleans())
def test_the_arrow_path_sums_exactly_what_the_row_by_row_path_sums(
    drawn: list[dict[str, object]], parquet: bool, keyword: bool
) -> None:
    rows = _rows(drawn)
    # A keyword with a space may span two describing columns: then the columns are matched joined.
    matcher = _matcher(["Gpu-Node", "Linux instance"] if keyword else ["Gpu-Node"])
    assert matcher.per_column is not keyword
    with tempfile.TemporaryDirectory() as scratch:
        path = (_write_parquet if parquet else _write_csv)(
            Path(scratch) / f"b.{'parquet' if parquet else 'csv'}", rows
        )
        read = _arrow(_new(matcher), path)
        short = _new(matcher)
        short.read_file(path)  # a short CSV: read row by row, without Arrow
    truth = _row_by_row(rows, matcher)
    lines = read.lines()
    _same(lines, truth.lines())
    assert (read.rows_read, read.gpu_rows, read.periods) == (len(rows), truth.gpu_rows, truth.periods)
    assert read.rows_by_row == 0  # all of it summed in Arrow
    if not parquet:
        # The two paths agree to the written figure, not only the value: one figure, every output.
        assert [[_figures(x) for x in group] for group in short.lines().values()] == [
            [_figures(x) for x in group] for group in lines.values()
        ]
        assert (short.rows_read, short.gpu_rows, short.periods) == (len(rows), truth.gpu_rows, truth.periods)
        assert short.origins == [str(path)]


def _figures(line: CostLine) -> tuple[str, ...]:
    return tuple(str(getattr(line, f.name)) for f in fields(line))


def test_values_arrow_cannot_take_exactly_go_row_by_row_with_the_same_result(tmp_path: Path) -> None:
    gpu = dict.fromkeys(COLUMNS, "NULL") | {
        "BillingPeriodStart": PERIODS[1],
        "ChargePeriodStart": "2024-09-01 00:00:00",
        "ChargePeriodEnd": "2024-09-01 01:00:00",
        "ChargeDescription": DESCRIPTIONS[0],
        "ChargeCategory": "Usage",
    }
    rows = [
        gpu | {"BilledCost": "1.5", "EffectiveCost": "2.25", "ListCost": "3"},
        gpu | {"BilledCost": "0.0000000000000000001", "EffectiveCost": " 1 ", "ListCost": "1"},  # 19 places
    ]
    matcher = _matcher()
    read = _arrow(_new(matcher), _write_csv(tmp_path / "b.csv", rows))
    assert read.rows_by_row == 2
    _same(read.lines(), _row_by_row(rows, matcher).lines())
    bad = _new(matcher)
    with pytest.raises(FocusError, match=r"b\.csv row 3: ListCost is not a number: 'x1'"):
        _arrow(bad, _write_csv(tmp_path / "b.csv", [rows[0], gpu | {"ListCost": "x1"}]))
    # Beyond the Arrow guard is beyond any bill line: refused by name, before anything is stored (a
    # stored 10^13 would make every later report fail as too large to compute).
    huge = gpu | {"BilledCost": str(MAX_VALUE * 10), "EffectiveCost": "1", "ListCost": "1"}
    with pytest.raises(FocusError, match=r"b\.csv row 3: BilledCost is 1\.000e\+13, not a bill line"):
        _arrow(_new(matcher), _write_csv(tmp_path / "b.csv", [rows[0], huge]))


def test_typed_parquet_columns_read_as_their_text_would(tmp_path: Path) -> None:
    """Parquet writers type their columns: float or decimal costs, timestamps, a map of tags."""
    hours = [datetime(2024, 9, 1, h, tzinfo=UTC) for h in (0, 0, 1)]
    n = len(hours)
    typed = pa.table(
        {
            "BilledCost": pa.array([Decimal("1.25"), Decimal("2.5"), Decimal(-1)], pa.decimal128(20, 6)),
            "EffectiveCost": pa.array([0.1, 0.2, 7.0]),
            "ListCost": pa.array(["3", "1E-7", "0"]),
            "BillingCurrency": ["USD"] * n,
            "BillingAccountId": pa.array([1234] * n, pa.int64()),
            "BillingPeriodStart": pa.array([datetime(2024, 9, 1, tzinfo=UTC)] * n, pa.timestamp("ms", "UTC")),
            "BillingPeriodEnd": pa.array(
                [datetime(2024, 10, 1, tzinfo=UTC).replace(tzinfo=None)] * n, pa.timestamp("us")
            ),
            "ChargePeriodStart": pa.array(hours, pa.timestamp("s", "UTC")),
            "ChargePeriodEnd": pa.array(
                [h.replace(hour=h.hour + 1) for h in hours], pa.timestamp("s", "UTC")
            ),
            "ChargeCategory": ["Usage"] * n,
            "ChargeDescription": [DESCRIPTIONS[1]] * n,
            "ConsumedQuantity": pa.array([1.0, 0.5, 0.25]),
            "ConsumedUnit": ["Hours"] * n,
            "ResourceId": ["i-1"] * n,
            "Tags": pa.array(
                [[("deployment", "a")], [("team", "x")], None], pa.map_(pa.string(), pa.string())
            ),
        }
    )
    pq.write_table(typed, tmp_path / "typed.parquet")
    matcher = _matcher()
    read = _new(matcher)
    read.read_file(tmp_path / "typed.parquet")
    assert read.rows_by_row == 0
    truth = _new(matcher)
    for row in typed.to_pylist():
        truth.add_period(row["BillingPeriodStart"], "t")
        truth.add_row(row, "t")
    lines = read.lines()
    _same(lines, truth.lines())
    first, second = sorted(lines[int(hours[0].timestamp())], key=lambda x: x.charge_period_start_ts or 0)
    assert first.billed_cost == Decimal("3.75") and first.effective_cost == Decimal("0.3")
    assert first.gpu_hours == Decimal(6)  # 1.5 instance-hours of a 4-GPU g5.12xlarge
    assert str(first.billed_cost) == "3.75"  # no decimal128 padding
    assert first.tags_json == '{"deployment":"a"}' and first.account == "1234" and first.estimated
    assert second.billed_cost == Decimal(-1) and second.list_cost == Decimal(0)


def _gpu_row(**values: str) -> dict[str, str]:
    return dict.fromkeys(COLUMNS, "NULL") | {
        "BillingPeriodStart": PERIODS[1],
        "ChargePeriodStart": "2024-09-01 00:00:00",
        "ChargePeriodEnd": "2024-09-01 01:00:00",
        "ChargeDescription": DESCRIPTIONS[1],
        "ChargeCategory": "Usage",
        "BilledCost": "5.672",
        "EffectiveCost": "3.6301",
        "ListCost": "5.672",
        **values,
    }


def test_a_short_csv_is_read_row_by_row_and_a_long_or_non_ascii_one_through_arrow(tmp_path: Path) -> None:
    matcher = _matcher()
    rows = [_gpu_row(), _gpu_row(ResourceId="i-2"), _gpu_row(ChargeDescription=DESCRIPTIONS[4])]
    path = _write_csv(tmp_path / "b.csv", rows)
    short = _new(matcher)
    short.read_file(path)
    assert not short._groups and short.gpu_rows == 2 and short.rows_read == 3
    truth = _row_by_row(rows, matcher)
    _same(short.lines(), truth.lines())
    # A byte-order mark, blank lines and a gzip name change nothing but the path.
    text = path.read_text()
    marked = tmp_path / "marked.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + text.replace("\r\n", "\r\n\r\n", 2).encode())
    blank = _new(matcher)
    blank.read_file(marked)
    assert not blank._groups and blank.rows_read == 3
    _same(blank.lines(), truth.lines())
    # Non-ASCII text (where Python's word boundaries and case folding differ from RE2's) goes to Arrow.
    accented = _write_csv(tmp_path / "é.csv", [*rows, _gpu_row(ChargeDescription="Réservé g5.12xlarge")])
    foreign = _new(matcher)
    foreign.read_file(accented)
    assert foreign._groups and foreign.gpu_rows == 3
    # Blank lines before the header: both paths take the file (the header is the first record).
    for name, prefix in (("blank.csv", ""), ("blank-é.csv", "é")):
        leading = tmp_path / name
        leading.write_text("\r\n\n" + accented.read_text().replace("Réservé", prefix + "Reserved"))
        either = _new(matcher)
        either.read_file(leading)
        assert bool(either._groups) == (prefix != "") and either.gpu_rows == 3 and either.rows_read == 4
    # And a field beyond the csv module's limit (128 KiB), which Arrow takes: refused nowhere.
    tagged = _gpu_row(Tags=json.dumps({"deployment": "a", "notes": "x" * 200_000}))
    wide = _new(matcher)
    wide.read_file(_write_csv(tmp_path / "wide.csv", [*rows, tagged]))
    assert wide._groups and wide.gpu_rows == 3
    # So does a file beyond SMALL_CSV_BYTES.
    shortest = min(len(line) for line in text.splitlines()[1:])
    long_rows = rows * (SMALL_CSV_BYTES // shortest // len(rows) + 1)
    long = _new(matcher)
    long.read_file(_write_csv(tmp_path / "long.csv", long_rows))
    assert long._groups and long.rows_read == len(long_rows)
    assert sum(x.amount_usd for x in long.lines()[int(datetime(2024, 9, 1, tzinfo=UTC).timestamp())]) == (
        Decimal("3.6301") * 2 * (len(long_rows) // 3)
    )


def test_a_short_csv_names_the_row_it_cannot_read_and_keeps_nothing(tmp_path: Path) -> None:
    matcher = _matcher()
    path = _write_csv(tmp_path / "b.csv", [_gpu_row(), _gpu_row(ResourceId="i-2")])
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:2], lines[2] + ",extra"]) + "\n")
    read = _new(matcher)
    with pytest.raises(FocusError, match=r"b\.csv: cannot be read as a FOCUS CSV file: row 3 has 24 fields"):
        read.read_file(path)
    assert read.origins == []
    bad = _write_csv(tmp_path / "c.csv", [_gpu_row(), _gpu_row(ChargePeriodStart="yesterday")])
    with pytest.raises(
        FocusError, match=r"c\.csv row 3: ChargePeriodStart is not a date and time: 'yesterday'"
    ):
        _new(matcher).read_file(bad)
    with pytest.raises(FocusError, match=r"nothing\.csv: cannot be read as a FOCUS CSV file: .*No such file"):
        _new(matcher).read_file(tmp_path / "nothing.csv")


def test_sums_keep_every_digit_on_both_paths(tmp_path: Path) -> None:
    """Python's default decimal context keeps 28 digits; a line of 10^10 dollars to 18 places needs 29.
    Both paths sum it exactly, as the bill wrote it."""
    big = "9999999999.999999999999999999"
    rows = [
        _gpu_row(BilledCost=big, EffectiveCost=big, ListCost=big, ConsumedQuantity=big, ConsumedUnit="Hours")
    ] * 2
    path = _write_csv(tmp_path / "b.csv", rows)
    matcher = _matcher()
    short = _new(matcher)
    short.read_file(path)
    assert not short._groups
    arrow = _arrow(_new(matcher), path)
    exact = Decimal("19999999999.999999999999999998")
    for read in (short, arrow):
        (line,) = [x for lines in read.lines().values() for x in lines]
        assert line.billed_cost == line.effective_cost == line.amount_usd == exact
        assert line.gpu_hours == Decimal("79999999999.999999999999999992")  # 4 GPUs (g5.12xlarge)
