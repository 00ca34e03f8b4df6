"""GCP billing through the real clients (REST, anonymous credentials) against a local server: the
BigQuery billing export's query results, and the Cloud Catalog's SKU pages (a real page, then a
hand-written one, tests/fixtures/gcp_billing_catalog/)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials

from collectors.gcp_billing import (
    BillingExport,
    GpuSku,
    SkuCache,
    SkuCatalog,
    Tier,
    bigquery_client,
    catalog_client,
    gpu_hour_price,
    matches_gpu,
    money,
)
from collectors.interface import BillingUnavailable
from tests.gcpkit import GoogleServer, google_server

FIXTURES = Path(__file__).parent / "fixtures" / "gcp_billing_catalog"
TABLE = "billing-proj.billing.gcp_billing_export_v1_0123AB_456789_CDEF01"
EXPORT_FIELDS = [
    ("day", "DATE"),
    ("billing_account_id", "STRING"),
    ("project_id", "STRING"),
    ("label_value", "STRING"),
    ("sku_id", "STRING"),
    ("sku_description", "STRING"),
    ("region", "STRING"),
    ("machine_spec", "STRING"),
    ("currency", "STRING"),
    ("pricing_unit", "STRING"),
    ("cost", "NUMERIC"),
    ("credits", "NUMERIC"),
    ("usage_amount", "NUMERIC"),
]


A100 = ("039F-D0DA-4055", "Nvidia Tesla A100 GPU running in Americas")
A2_CORE = ("2922-40C5-B19F", "A2 Instance Core running in Americas")


def export_row(
    day: date, label: str | None, sku: tuple[str, str], cost: str, credits: str, usage: str, spec: str
) -> list[Any]:
    """One row of the sync's query result, in EXPORT_FIELDS order (project ml-prod, us-central1)."""
    return [day, "0123AB-456789-CDEF01", "ml-prod", label, *sku, "us-central1", spec, "USD", "hour",
            cost, credits, usage]  # fmt: skip


def anonymous() -> Any:
    return AnonymousCredentials()  # type: ignore[no-untyped-call]


def catalog_pages() -> dict[str, dict[str, Any]]:
    real = json.loads((FIXTURES / "opencost_gcp_skus.json").read_text())
    second = json.loads((FIXTURES / "page2_synthetic.json").read_text())
    return {"": real, real["nextPageToken"]: second}


@pytest.fixture
def google(monkeypatch: pytest.MonkeyPatch) -> Iterator[GoogleServer]:
    monkeypatch.setenv("NO_GCE_CHECK", "true")  # google-auth must never probe a metadata server here
    with google_server(catalog_pages()) as server:
        yield server


def export(server: GoogleServer, label_key: str | None = "deployment") -> BillingExport:
    client = bigquery_client("billing-proj", credentials=anonymous(), endpoint=server.url)
    return BillingExport(client, TABLE, label_key=label_key)


def test_export_rows_arrive_exact_with_credits_beside_the_cost(google: GoogleServer) -> None:
    google.queue_result(
        EXPORT_FIELDS,
        [
            export_row(
                date(2026, 11, 1), "llama-70b", A100, "563.310336", "-168.993101", "192", "a2-highgpu-8g"
            ),
            export_row(date(2026, 11, 1), None, A2_CORE, "72.836", "0", "2304", "a2-highgpu-8g"),
        ],
    )
    fetched = export(google).fetch(date(2026, 11, 1), date(2026, 11, 2))
    gpu, cores = fetched.rows
    assert gpu.cost == Decimal("563.310336") and gpu.credits == Decimal("-168.993101")
    assert gpu.net == Decimal("394.317235")
    assert gpu.gpu_sku and not cores.gpu_sku
    assert gpu.label_value == "llama-70b" and cores.label_value is None
    assert (gpu.day, gpu.project, gpu.region, gpu.machine_spec) == (
        date(2026, 11, 1),
        "ml-prod",
        "us-central1",
        "a2-highgpu-8g",
    )
    assert fetched.bytes_billed == 10485760


def test_export_query_is_parameterized_and_filtered_to_gpu_compute(google: GoogleServer) -> None:
    google.queue_result(EXPORT_FIELDS, [])
    export(google, label_key="team").fetch(date(2026, 10, 1), date(2026, 12, 1))
    (job,) = google.queries()
    query = job.body["configuration"]["query"]
    text = query["query"]
    assert f"FROM `{TABLE}`" in text
    assert "CAST(cost AS NUMERIC)" in text and "UNNEST(credits)" in text
    assert "service.description = 'Compute Engine'" in text
    parameters = {p["name"]: p["parameterValue"]["value"] for p in query["queryParameters"]}
    assert parameters["label_key"] == "team"
    assert parameters["start_day"] == "2026-10-01" and parameters["end_day"] == "2026-12-01"
    assert parameters["families"] == "^(a2|a3|a4|g2|g4)-"
    assert "team" not in text and "2026" not in text  # values travel as parameters, never in the SQL


def test_a_table_name_that_could_inject_sql_is_refused() -> None:
    with pytest.raises(ValueError, match=r"project\.dataset\.table"):
        BillingExport(object(), "p.d.t` WHERE 1=1 --", label_key=None)


@pytest.mark.parametrize(
    ("status", "message", "expected", "permission"),
    [
        (403, "Access Denied: Project billing-proj: User does not have bigquery.jobs.create permission.",
         "Google denied bigquery.jobs.create on", "bigquery.jobs.create"),
        (403, "Access Denied: Table x: User does not have permission bigquery.tables.getData.",
         "Google denied bigquery.tables.getData on", "bigquery.tables.getData"),
        (401, "Request had invalid authentication credentials.", "Google rejected the credentials",
         "bigquery.jobs.create"),
        (404, "Not found: Table billing-proj:billing.x", "not found", None),
    ],
)  # fmt: skip
def test_refusals_are_one_line_naming_the_permission(
    google: GoogleServer, status: int, message: str, expected: str, permission: str | None
) -> None:
    google.fail("/jobs", status, message)
    with pytest.raises(BillingUnavailable) as caught:
        export(google).fetch(date(2026, 11, 1), date(2026, 11, 2))
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.permission == permission


def test_export_check_is_a_dry_run(google: GoogleServer) -> None:
    detail = export(google).check()
    (job,) = google.queries()
    assert job.body["configuration"]["dryRun"] is True
    assert "readable (bigquery.jobs.create)" in detail and "12345 byte(s)" in detail


def test_catalog_reads_every_page_and_keeps_on_demand_gpu_skus(google: GoogleServer) -> None:
    catalog = SkuCatalog(catalog_client(credentials=anonymous(), endpoint=google.url))
    skus = catalog.gpu_skus()
    assert catalog.requests == 2
    assert [s.sku_id for s in skus] == ["039F-D0DA-4055", "TEST-H100-0001", "TEST-L4-0003"]  # no RAM, no spot
    a100 = skus[0]
    assert a100.hourly == Decimal("2.933908")  # 2 units + 933,908,000 nanos, exact
    assert a100.regions == ("us-central1", "us-east1", "us-west1")
    assert a100.effective_time.startswith("2023-03-24")
    pages = [r for r in google.requests if r.path.endswith("/skus")]
    assert pages[0].query["currencyCode"] == ["USD"] and "pageToken" in pages[1].query


def test_tiered_prices_are_summed_tier_by_tier() -> None:
    tiers = (Tier(Decimal(0), Decimal("0.7")), Tier(Decimal(100), Decimal("0.650000001")))
    l4 = GpuSku("x", "Nvidia L4 GPU", ("europe-west3",), "h", "USD", tiers, "")
    assert l4.price(Decimal(50)) == Decimal("35.0")
    assert l4.price(Decimal(150)) == Decimal(100) * Decimal("0.7") + Decimal(50) * Decimal("0.650000001")
    assert money("-1", -500000000) == Decimal("-1.5")


@pytest.mark.parametrize(
    ("description", "gpu_type", "matches"),
    [
        ("Nvidia Tesla A100 GPU running in Americas", "A100-40GB", True),
        ("Nvidia Tesla A100 GPU running in Americas", "A100 80GB", False),
        ("Nvidia A100 80GB GPU running in Americas", "A100-80GB", True),
        ("Nvidia H100 80GB GPU running in Americas", "H100", True),
        ("Nvidia H100 80GB GPU running in Americas", "H200", False),
        ("Nvidia L4 GPU running in Frankfurt", "L4", True),
        ("Nvidia Tesla T4 GPU running in Americas", "L4", False),
    ],
)
def test_gpu_types_match_sku_descriptions(description: str, gpu_type: str, matches: bool) -> None:
    assert matches_gpu(description, gpu_type) is matches


def test_a_gpu_hour_is_priced_by_region(google: GoogleServer) -> None:
    skus = SkuCatalog(catalog_client(credentials=anonymous(), endpoint=google.url)).gpu_skus()
    found = gpu_hour_price(skus, "A100-40GB", "us-east1")
    assert found is not None and found.hourly == Decimal("2.933908")
    assert gpu_hour_price(skus, "A100-40GB", "europe-west4") is None  # not offered there: no guess


def test_catalog_denied_is_one_line(google: GoogleServer) -> None:
    google.fail("/skus", 403, "Cloud Billing API has not been used in project 1 before or it is disabled.")
    catalog = SkuCatalog(catalog_client(credentials=anonymous(), endpoint=google.url))
    with pytest.raises(BillingUnavailable, match=r"Google denied .* on the Cloud Catalog"):
        catalog.gpu_skus()


def test_the_sku_cache_serves_a_week_then_refreshes(google: GoogleServer, tmp_path: Path) -> None:
    catalog = SkuCatalog(catalog_client(credentials=anonymous(), endpoint=google.url))
    now = [1_000_000.0]
    cache = SkuCache(tmp_path / "cache" / "gcp_skus.json", catalog.gpu_skus, clock=lambda: now[0])
    first, cached = cache.skus()
    assert not cached and catalog.requests == 2
    again, cached = cache.skus()
    assert cached and again == first and catalog.requests == 2  # from the file: no request
    now[0] += 8 * 86400
    _, cached = cache.skus()
    assert not cached and catalog.requests == 4
