"""The GPU price catalog: the packaged data, the loader's validation, lookups and staleness."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal, localcontext
from pathlib import Path

import pytest

from auditor.gpu_prices import (
    COLUMNS,
    KNOWN_GPU_TYPES,
    PRICING_KINDS,
    AmbiguousPriceError,
    GpuPrice,
    GpuPriceDataError,
    PriceNotListedError,
    UnknownInstanceError,
    find_gpu_price,
    load_gpu_prices,
    stale_prices,
)

HEADER = ",".join(COLUMNS)
GOOD_ROW = "aws,p5.48xlarge,H100,8,on_demand,55.04,us-east-1,2026-01-19,https://example.com/p5"


@pytest.fixture(scope="module")
def catalog() -> list[GpuPrice]:
    return load_gpu_prices()


def a_price(**changes: object) -> GpuPrice:
    base = GpuPrice(
        provider="aws",
        instance_type="p5.48xlarge",
        gpu_type="H100",
        gpus=8,
        pricing="on_demand",
        instance_hourly_usd=Decimal("55.04"),
        region="us-east-1",
        as_of=date(2026, 1, 19),
        source_url="https://example.com/p5",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def write_csv(tmp_path: Path, *rows: str, header: str = HEADER, name: str = "my_prices.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


# -- The packaged catalog ------------------------------------------------------------------------


REQUIRED_ROWS = [
    ("aws", "p4d.24xlarge", "on_demand", "us-east-1"),
    ("aws", "p5.48xlarge", "on_demand", "us-east-1"),
    ("aws", "g5.xlarge", "on_demand", "us-east-1"),
    ("aws", "g5.12xlarge", "on_demand", "us-east-1"),
    ("aws", "g5.48xlarge", "on_demand", "us-east-1"),
    ("aws", "g6.xlarge", "on_demand", "us-east-1"),
    ("aws", "g6.12xlarge", "on_demand", "us-east-1"),
    ("aws", "g6.48xlarge", "on_demand", "us-east-1"),
    ("gcp", "a2-highgpu-1g", "on_demand", "us-central1"),
    ("gcp", "a2-highgpu-8g", "on_demand", "us-central1"),
    ("gcp", "a2-ultragpu-1g", "on_demand", "us-central1"),
    ("gcp", "a2-ultragpu-8g", "on_demand", "us-central1"),
    ("gcp", "a3-highgpu-8g", "on_demand", "us-central1"),
    ("lambda", "gpu_1x_h100_sxm5", "on_demand", "-"),
]


@pytest.mark.parametrize(("provider", "instance_type", "pricing", "region"), REQUIRED_ROWS)
def test_packaged_catalog_has_the_required_rows(
    catalog: list[GpuPrice], provider: str, instance_type: str, pricing: str, region: str
) -> None:
    price = find_gpu_price(catalog, instance_type, pricing=pricing, provider=provider)
    assert price.region == region


def test_packaged_catalog_covers_h100_and_a100_beyond_the_hyperscalers(catalog: list[GpuPrice]) -> None:
    for provider in ("lambda", "coreweave", "runpod", "azure"):
        gpu_types = {p.gpu_type for p in catalog if p.provider == provider}
        assert "H100" in gpu_types, provider
    a100_providers = {p.provider for p in catalog if p.gpu_type.startswith("A100")}
    assert a100_providers >= {"aws", "gcp", "lambda", "runpod"}


def test_packaged_catalog_is_normalised(catalog: list[GpuPrice]) -> None:
    for p in catalog:
        assert p.gpu_type in KNOWN_GPU_TYPES, p
        assert p.pricing in PRICING_KINDS, p
        assert p.provider == p.provider.lower(), p
        assert p.source_url.startswith("https://"), p
        assert p.as_of <= date(2026, 11, 23), f"{p.instance_type}: as_of after the catalog was written"


def test_packaged_catalog_has_committed_use_rows(catalog: list[GpuPrice]) -> None:
    kinds = {p.pricing for p in catalog}
    assert {"reserved_1y", "reserved_3y", "spot"} <= kinds


def test_discounted_prices_are_below_on_demand(catalog: list[GpuPrice]) -> None:
    on_demand = {(p.provider, p.instance_type, p.region): p for p in catalog if p.pricing == "on_demand"}
    checked = 0
    for p in catalog:
        if p.pricing == "on_demand":
            continue
        base = on_demand.get((p.provider, p.instance_type, p.region)) or next(
            q for q in on_demand.values() if (q.provider, q.instance_type) == (p.provider, p.instance_type)
        )
        assert p.instance_hourly_usd < base.instance_hourly_usd, p
        checked += 1
    assert checked >= 5
    one_year = find_gpu_price(catalog, "a2-highgpu-8g", pricing="reserved_1y")
    three_years = find_gpu_price(catalog, "a2-highgpu-8g", pricing="reserved_3y")
    assert three_years.instance_hourly_usd < one_year.instance_hourly_usd


def test_the_designs_figures(catalog: list[GpuPrice]) -> None:
    p5 = find_gpu_price(catalog, "p5.48xlarge")
    assert p5.instance_hourly_usd == Decimal("55.04")
    assert p5.gpus == 8
    assert p5.gpu_hourly_usd == Decimal("6.88")
    assert p5.as_of >= date(2025, 6, 1), "the price after the June 2025 cut"

    p4d = find_gpu_price(catalog, "p4d.24xlarge")
    assert p4d.gpu_type == "A100-40GB"
    assert p4d.instance_hourly_usd.quantize(Decimal("0.01")) == Decimal("21.96")

    a100_sku = find_gpu_price(catalog, "nvidia-tesla-a100", provider="gcp")
    assert a100_sku.gpu_hourly_usd == Decimal("2.933908")
    assert a100_sku.as_of == date(2023, 3, 24)

    a3 = find_gpu_price(catalog, "a3-highgpu-8g")
    assert a3.gpus == 8
    assert abs(a3.instance_hourly_usd - Decimal("87.83")) < Decimal("0.01")

    lambda_h100 = find_gpu_price(catalog, "gpu_1x_h100_sxm5", provider="lambda")
    assert lambda_h100.instance_hourly_usd == Decimal("3.78")
    assert (lambda_h100.as_of.year, lambda_h100.as_of.month) == (2026, 5)


def test_gcp_a2_prices_are_the_sum_of_their_catalog_skus(catalog: list[GpuPrice]) -> None:
    # Compute Engine SKUs effective 2023-03-24 (Americas): A2 core, A2 RAM per GiB, A100 GPU, per hour.
    core, ram_gib, gpu = Decimal("0.031611"), Decimal("0.004237"), Decimal("2.933908")
    assert find_gpu_price(catalog, "a2-highgpu-1g").instance_hourly_usd == 12 * core + 85 * ram_gib + gpu
    assert find_gpu_price(catalog, "a2-highgpu-8g").instance_hourly_usd == 96 * core + 680 * ram_gib + 8 * gpu


# -- GpuPrice ------------------------------------------------------------------------------------


def test_gpu_hourly_usd_is_an_exact_decimal() -> None:
    price = a_price(instance_hourly_usd=Decimal("29.38708"), gpus=8)
    assert isinstance(price.gpu_hourly_usd, Decimal)
    assert price.gpu_hourly_usd == Decimal("3.673385")
    assert price.gpu_hourly_usd * 8 == price.instance_hourly_usd


def test_gpu_hourly_usd_ignores_the_callers_decimal_precision() -> None:
    price = a_price(instance_hourly_usd=Decimal("21.957642"), gpus=8)
    with localcontext() as ctx:
        ctx.prec = 3
        assert price.gpu_hourly_usd == Decimal("2.74470525")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gpus": 0}, "gpus must be > 0"),
        ({"pricing": "hourly"}, "pricing must be one of"),
        ({"instance_hourly_usd": Decimal("-1")}, "instance_hourly_usd must be finite and >= 0"),
        ({"instance_hourly_usd": Decimal("NaN")}, "instance_hourly_usd must be finite and >= 0"),
    ],
)
def test_a_gpu_price_refuses_impossible_values(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        a_price(**changes)


# -- Lookups -------------------------------------------------------------------------------------


def test_lookup_ignores_case_and_spaces(catalog: list[GpuPrice]) -> None:
    assert find_gpu_price(catalog, " P5.48XLARGE ").instance_type == "p5.48xlarge"
    azure = find_gpu_price(catalog, "standard_nd96isr_h100_v5", provider="Azure")
    assert azure.instance_type == "Standard_ND96isr_H100_v5"
    assert azure.gpus == 8


def test_lookup_by_pricing(catalog: list[GpuPrice]) -> None:
    price = find_gpu_price(catalog, "a2-highgpu-1g", pricing="reserved_1y")
    assert price.pricing == "reserved_1y"
    assert price.instance_hourly_usd == Decimal("2.31420704")
    spot = find_gpu_price(catalog, "nvidia-hgx-h100", pricing="spot")
    assert spot.provider == "coreweave"
    assert spot.instance_hourly_usd < find_gpu_price(catalog, "nvidia-hgx-h100").instance_hourly_usd


def test_unknown_instance_suggests_close_names(catalog: list[GpuPrice]) -> None:
    with pytest.raises(UnknownInstanceError) as caught:
        find_gpu_price(catalog, "p5.48xl")
    assert caught.value.suggestions[0] == "p5.48xlarge"
    assert str(caught.value).startswith("unknown instance type 'p5.48xl'; did you mean: p5.48xlarge")


def test_unknown_instance_far_from_every_name_lists_some_known_ones(catalog: list[GpuPrice]) -> None:
    with pytest.raises(UnknownInstanceError, match="known instance types include: ") as caught:
        find_gpu_price(catalog, "quantum-9000")
    assert caught.value.suggestions
    assert all(any(p.instance_type == s for p in catalog) for s in caught.value.suggestions)


def test_unknown_instance_message_forms() -> None:
    assert str(UnknownInstanceError("p5.48xl", ["p5.48xlarge"])) == (
        "unknown instance type 'p5.48xl'; did you mean: p5.48xlarge?"
    )
    assert "catalog is empty" in str(UnknownInstanceError("x", []))
    with pytest.raises(UnknownInstanceError):
        find_gpu_price([], "p5.48xlarge")


def test_known_instance_without_that_pricing_says_what_there_is(catalog: list[GpuPrice]) -> None:
    with pytest.raises(PriceNotListedError, match=r"no reserved_3y price for instance type 'g5.xlarge'") as e:
        find_gpu_price(catalog, "g5.xlarge", pricing="reserved_3y")
    assert e.value.listed == ["aws on_demand us-east-1"]
    with pytest.raises(PriceNotListedError, match=r"no on_demand price from aws for .*gcp on_demand"):
        find_gpu_price(catalog, "a2-highgpu-1g", provider="aws")


def test_several_matches_need_a_provider_or_region() -> None:
    prices = [a_price(), a_price(region="us-west-2", instance_hourly_usd=Decimal("56"))]
    with pytest.raises(AmbiguousPriceError, match="name a provider or region"):
        find_gpu_price(prices, "p5.48xlarge")
    assert find_gpu_price(prices, "p5.48xlarge", region="US-WEST-2").instance_hourly_usd == Decimal("56")


def test_lookup_rejects_an_unknown_pricing_kind(catalog: list[GpuPrice]) -> None:
    with pytest.raises(ValueError, match="pricing must be one of"):
        find_gpu_price(catalog, "p5.48xlarge", pricing="reserved")


# -- Loading a file ------------------------------------------------------------------------------


def test_a_users_file_loads_with_exact_amounts(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        GOOD_ROW,
        "",  # blank lines are skipped
        "onprem,rack-7,A100-80GB,4,reserved_3y,3.10,-,2026-10-01,https://example.com/quote",
    )
    prices = load_gpu_prices(path)
    assert [p.instance_type for p in prices] == ["p5.48xlarge", "rack-7"]
    assert prices[0].instance_hourly_usd == Decimal("55.04")
    assert str(prices[1].instance_hourly_usd) == "3.10"
    assert prices[1].as_of == date(2026, 10, 1)


def test_columns_may_come_in_any_order(tmp_path: Path) -> None:
    header = ",".join(reversed(COLUMNS))
    row = ",".join(reversed(GOOD_ROW.split(",")))
    reordered = load_gpu_prices(write_csv(tmp_path, row, header=header, name="reordered.csv"))
    assert reordered == load_gpu_prices(write_csv(tmp_path, GOOD_ROW))


BAD_FIELDS = [
    ("gpus", "0", "must be > 0"),
    ("gpus", "eight", "not a whole number"),
    ("gpus", "2.5", "not a whole number"),
    ("instance_hourly_usd", "-1.00", "must be >= 0"),
    ("instance_hourly_usd", "1e3", "not a plain decimal"),
    ("instance_hourly_usd", "$55.04", "not a plain decimal"),
    ("pricing", "hourly", "must be one of"),
    ("as_of", "2026-13-01", "not a real date"),
    ("as_of", "19/01/2026", "not an ISO date"),
    ("source_url", "http://example.com/p5", "https://"),
    ("provider", "AWS", "lower-case"),
    ("region", "", "missing value"),
]


@pytest.mark.parametrize(("column", "bad", "problem"), BAD_FIELDS)
def test_a_bad_value_names_the_file_row_column_and_value(
    tmp_path: Path, column: str, bad: str, problem: str
) -> None:
    fields = GOOD_ROW.split(",")
    fields[COLUMNS.index(column)] = bad
    path = write_csv(tmp_path, GOOD_ROW.replace("p5.48xlarge", "p5.4xlarge"), ",".join(fields))
    with pytest.raises(GpuPriceDataError) as caught:
        load_gpu_prices(path)
    error = caught.value
    assert (error.row, error.column) == (3, column)
    message = str(error)
    assert message.startswith(f"{path}: row 3, column {column!r}: ")
    assert problem in message
    if bad:
        assert repr(bad) in message


def test_a_missing_column_is_reported_on_the_header_row(tmp_path: Path) -> None:
    header = HEADER.replace(",as_of", "")
    with pytest.raises(GpuPriceDataError, match=r"my_prices\.csv: row 1, column 'as_of': missing column"):
        load_gpu_prices(write_csv(tmp_path, GOOD_ROW, header=header))


def test_an_unexpected_column_is_reported(tmp_path: Path) -> None:
    with pytest.raises(GpuPriceDataError, match=r"row 1, column 'currency': unexpected column"):
        load_gpu_prices(write_csv(tmp_path, GOOD_ROW + ",USD", header=HEADER + ",currency"))


def test_an_unquoted_comma_is_reported(tmp_path: Path) -> None:
    row = GOOD_ROW.replace("https://example.com/p5", "https://example.com/p5,extra")
    with pytest.raises(GpuPriceDataError, match=r"row 2, column 'source_url': the row has 10 fields") as e:
        load_gpu_prices(write_csv(tmp_path, row))
    assert e.value.value == "https://example.com/p5,extra"


def test_a_short_row_names_the_first_missing_column(tmp_path: Path) -> None:
    row = ",".join(GOOD_ROW.split(",")[:7])
    with pytest.raises(GpuPriceDataError, match=r"row 2, column 'as_of': missing value"):
        load_gpu_prices(write_csv(tmp_path, row))


def test_a_repeated_row_is_reported(tmp_path: Path) -> None:
    repeat = GOOD_ROW.replace("p5.48xlarge", "P5.48XLARGE").replace("55.04", "50")
    with pytest.raises(GpuPriceDataError, match=r"row 3, column 'instance_type': repeats row 2"):
        load_gpu_prices(write_csv(tmp_path, GOOD_ROW, repeat))


def test_an_empty_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(GpuPriceDataError, match=r"empty\.csv: row 1, .*empty file"):
        load_gpu_prices(path)


# -- Staleness -----------------------------------------------------------------------------------


def test_stale_prices_go_by_the_as_of_date() -> None:
    today = date(2026, 11, 23)
    fresh = a_price(instance_type="fresh", as_of=date(2026, 5, 27))  # 180 days old: not yet stale
    stale = a_price(instance_type="stale", as_of=date(2026, 5, 26))  # 181 days old
    future = a_price(instance_type="future", as_of=date(2026, 12, 1))
    assert stale_prices([fresh, stale, future], today) == [stale]
    assert stale_prices([fresh, stale, future], today, max_age_days=30) == [fresh, stale]
    assert stale_prices([fresh, stale], date(2026, 5, 27)) == []


def test_stale_prices_in_the_packaged_catalog(catalog: list[GpuPrice]) -> None:
    stale = stale_prices(catalog, date(2026, 11, 23))
    names = {p.instance_type for p in stale}
    assert "nvidia-tesla-a100" in names  # a 2023 list price
    assert "secure-h100-sxm" not in names  # read in November 2026
    assert all((date(2026, 11, 23) - p.as_of).days > 180 for p in stale)


def test_stale_prices_rejects_a_negative_age() -> None:
    with pytest.raises(ValueError, match="max_age_days must be >= 0"):
        stale_prices([], date(2026, 11, 23), max_age_days=-1)
