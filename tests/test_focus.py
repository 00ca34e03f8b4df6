"""FOCUS bill imports: the real FOCUS 1.0 sample, CSV.gz and Parquet, bad input named by file and row,
currencies, attribution to the cent, an S3 export with manifests (moto), a BigQuery FOCUS view (the real
client against a local server), and the `billing` commands."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from auditor.attribution import Attributor
from auditor.config import Config, FocusBigQuerySource, FocusS3Source, parse_config
from auditor.errors import BadInputError
from auditor.gpu_prices import load_gpu_prices
from auditor.model import CostLine, CostMetric
from auditor.store import Store
from collectors.focus import FocusError
from collectors.focus_sources import (
    import_files,
    import_source_name,
    new_import,
    sync_bigquery,
    sync_s3,
)

FIXTURE = Path(__file__).parent / "fixtures" / "focus" / "focus_sample.csv"
AUDITOR = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "auditor"
CATALOG = load_gpu_prices()
SEPT = int(datetime(2024, 9, 1, tzinfo=UTC).timestamp())

CONFIG = """
[store]
url = "sqlite:///{db}"

[[deployments]]
name = "brightpath"
model = "a model"
gpu_type = "A10G"
gpu_count = 1
prometheus_matchers = {{ deployment = "brightpath" }}
price = {{ source = "focus", tags = {{ application = "BrightPathMatrix" }} }}
"""


def _sample_gpu_rows() -> list[dict[str, str]]:
    """The sample's GPU instance-hours, found without the importer (by their description)."""
    with FIXTURE.open(newline="") as f:
        return [
            r
            for r in csv.DictReader(f)
            if any(f" {gpu}.4xlarge Instance Hour" in r["ChargeDescription"] for gpu in ("g3", "g5"))
        ]


def _config(tmp_path: Path, extra: str = "") -> Config:
    return parse_config(CONFIG.format(db=tmp_path / "a.db") + extra)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 'a.db'}")
    yield opened
    opened.close()


def _all(store: Store) -> list[CostLine]:
    return store.cost_lines(date(2000, 1, 1), date(2100, 1, 1))


def test_the_focus_sample_imports_cleanly_and_exactly(tmp_path: Path, store: Store) -> None:
    config = _config(tmp_path)
    result = import_files(store, config, [FIXTURE], CATALOG, source="bills")
    truth = _sample_gpu_rows()
    assert len(truth) == 10 and result.gpu_rows == 10 and result.rows_read == 1000
    lines = _all(store)
    assert len(lines) == 10
    # NULL strings, EffectiveCost above BilledCost, partial hours: every cost exact, to the last digit.
    for column, field in (
        ("BilledCost", "billed_cost"),
        ("EffectiveCost", "effective_cost"),
        ("ListCost", "list_cost"),
    ):
        assert sum((getattr(x, field) for x in lines), Decimal(0)) == sum(
            (Decimal(r[column]) for r in truth), Decimal(0)
        )
    assert any(Decimal(r["EffectiveCost"]) > Decimal(r["BilledCost"]) for r in truth)
    partial = next(x for x in lines if x.resource == "i-09ba12e1l5743720b")
    assert partial.usage_hours == Decimal("0.296111000000000") and partial.gpu_hours == Decimal(
        "0.296111000000000"
    )
    assert partial.charge_period_end_ts - partial.charge_period_start_ts == 3600  # type: ignore[operator]
    assert (partial.provider, partial.region, partial.sub_account, partial.pricing_category) == (
        "AWS",
        "us-east-1",
        "11353890204",
        "Standard",
    )
    assert partial.usage_type == "g5.4xlarge" and partial.sku_id == "4GQWNPC9K2PZAY97"
    assert json.loads(partial.tags_json or "{}")["application"] == "BrightPathMatrix"
    # Attributed by its tags; the bill's GPU lines = deployments + unattributed, to the cent and beyond.
    assert {x.deployment for x in lines} == {"brightpath"}
    assert result.usd_by_deployment == {"brightpath": Decimal("13.00000000000")}
    assert result.gpu_lines_usd == sum(result.usd_by_deployment.values(), Decimal(0))
    # The sample holds rows of two billing periods: each is replaced whole on a re-import.
    assert result.periods == [date(2024, 9, 1), date(2024, 10, 1)]
    again = import_files(store, config, [FIXTURE], CATALOG, source="bills")
    assert not again.change.changed_anything and again.change.unchanged == 10
    assert _all(store) == lines


def test_csv_gz_and_parquet_read_the_same_lines(tmp_path: Path, store: Store) -> None:
    config = _config(tmp_path)
    gz = tmp_path / "bill.csv.gz"
    with FIXTURE.open("rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    parquet = tmp_path / "bill.parquet"
    pd.read_csv(FIXTURE, dtype=str, keep_default_na=False).to_parquet(parquet, engine="pyarrow")
    by_format = {}
    for path in (FIXTURE, gz, parquet):
        read = new_import("s", config, CATALOG)
        read.read_file(path)
        by_format[path.suffix] = read.lines()
    assert by_format[".csv"] == by_format[".gz"] == by_format[".parquet"]


def test_a_closed_month_stays_estimated_for_the_two_weeks_aws_may_restate_it(tmp_path: Path) -> None:
    """September 2024 closes on 1 October; AWS may restate it for about two weeks after."""
    config = _config(tmp_path)
    flags = {}
    for now in (
        datetime(2024, 9, 20, tzinfo=UTC),
        datetime(2024, 10, 10, tzinfo=UTC),
        datetime(2024, 10, 16, tzinfo=UTC),
    ):
        read = new_import("s", config, CATALOG, now_ts=now.timestamp())
        read.read_file(FIXTURE)
        flags[now.day] = {x.estimated for x in read.lines()[SEPT]}
    assert flags == {20: {True}, 10: {True}, 16: {False}}


def _write_bill(path: Path, rows: list[dict[str, str]], *, drop: str | None = None) -> Path:
    with FIXTURE.open(newline="") as f:
        header = next(csv.reader(f))
    header = [h for h in header if h != drop]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_missing_column_or_a_malformed_value_names_file_and_row_and_imports_nothing(
    tmp_path: Path, store: Store
) -> None:
    config = _config(tmp_path)
    rows = _sample_gpu_rows()
    good = _write_bill(tmp_path / "good.csv", rows)
    no_cost = _write_bill(tmp_path / "no_cost.csv", rows, drop="EffectiveCost")
    with pytest.raises(FocusError, match=r"no_cost\.csv: not a FOCUS export: missing column EffectiveCost"):
        import_files(store, config, [good, no_cost], CATALOG, source="bills")
    bad_number = [dict(r) for r in rows]
    bad_number[3]["BilledCost"] = "1,62"
    path = _write_bill(tmp_path / "bad_number.csv", bad_number)
    with pytest.raises(FocusError, match=r"bad_number\.csv row 5: BilledCost is not a number: '1,62'"):
        import_files(store, config, [good, path], CATALOG, source="bills")
    bad_date = [dict(r) for r in rows]
    bad_date[0]["ChargePeriodStart"] = "2024-09-31 10:00:00"
    path = _write_bill(tmp_path / "bad_date.csv", bad_date)
    with pytest.raises(FocusError, match=r"bad_date\.csv row 2: ChargePeriodStart is not a date and time"):
        import_files(store, config, [path], CATALOG, source="bills")
    assert _all(store) == []  # the good file was not half-imported either


def test_a_foreign_currency_is_refused_without_its_rate_and_converted_with_it(
    tmp_path: Path, store: Store
) -> None:
    rows = [dict(r, BillingCurrency="EUR") for r in _sample_gpu_rows()]
    path = _write_bill(tmp_path / "eur.csv", rows)
    with pytest.raises(
        FocusError, match=r"eur\.csv row 2: BillingCurrency is EUR, and billing\.currency_rates has no rate"
    ):
        import_files(store, _config(tmp_path), [path], CATALOG, source="bills")
    config = _config(tmp_path, "\n[billing]\ncurrency_rates = { EUR = 1.25 }\n")
    result = import_files(store, config, [path], CATALOG, source="bills")
    lines = _all(store)
    assert {(x.billing_currency, x.usd_rate) for x in lines} == {("EUR", Decimal("1.25"))}
    assert result.gpu_lines_usd == Decimal("13.00000000000") * Decimal("1.25")
    assert sum((x.costed(CostMetric.BILLED).amount_usd for x in lines), Decimal(0)) == Decimal("1.25") * sum(
        (Decimal(r["BilledCost"]) for r in rows), Decimal(0)
    )


def test_negative_lines_are_kept_and_counted(tmp_path: Path, store: Store) -> None:
    rows = _sample_gpu_rows()
    credit = dict(rows[0], ChargeCategory="Credit", BilledCost="-1.624", EffectiveCost="-2", ListCost="0")
    path = _write_bill(tmp_path / "credit.csv", [*rows, credit])
    result = import_files(store, _config(tmp_path), [path], CATALOG, source="bills")
    assert result.gpu_lines_usd == Decimal("11.00000000000")
    assert any(x.charge_category == "Credit" and x.amount_usd == Decimal(-2) for x in _all(store))


def test_a_shared_instance_is_split_by_gpu_share_and_the_rest_stays_unattributed(tmp_path: Path) -> None:
    config = parse_config(
        """
[billing.attribution]
hosts = { "i-0shared" = "gpu-node-1" }
[[deployments]]
name = "llama"
model = "m"
gpu_type = "H100"
gpus = [{ host = "gpu-node-1", indexes = [0, 1, 2, 3] }]
price = { source = "focus" }
[[deployments]]
name = "qwen"
model = "m"
gpu_type = "H100"
gpus = [{ host = "gpu-node-1", indexes = [4, 5] }]
price = { source = "focus" }
"""
    )
    line = CostLine(
        day=date(2024, 9, 1),
        source="bills",
        account="1",
        resource="arn:aws:ec2:us-east-1:1:instance/i-0shared",
        usage_type="p5.48xlarge",
        amount_usd=Decimal("55.04"),
        effective_cost=Decimal("55.04"),
        billed_cost=Decimal("98.32"),
        gpu_hours=Decimal(8),
    )
    matcher = new_import("bills", config, CATALOG).matcher
    parts = Attributor(config, matcher.gpus).attribute([line]).lines
    assert [(p.deployment, p.amount_usd, p.gpu_hours) for p in parts] == [
        ("llama", Decimal("27.520000000000"), Decimal("4.000000000000")),
        ("qwen", Decimal("13.760000000000"), Decimal("2.000000000000")),
        (None, Decimal("13.760000000000"), Decimal("2.000000000000")),
    ]
    assert sum((p.billed_cost or Decimal(0) for p in parts), Decimal(0)) == Decimal("98.32")
    assert len({p.line_key for p in parts}) == 3


def test_a_tag_that_matches_nothing_warns_with_the_keys_that_exist(tmp_path: Path, store: Store) -> None:
    config = parse_config(
        CONFIG.format(db=tmp_path / "a.db").replace('application = "BrightPathMatrix"', 'app = "brightpath"')
    )
    result = import_files(store, config, [FIXTURE], CATALOG, source="bills")
    assert result.warnings == [
        "deployment brightpath: no GPU line carries its tags app=brightpath; "
        "tag keys on the bill's GPU lines: application, business_unit, environment",
        "no GPU line carries a tag key of billing.attribution.tag_keys (deployment, team, cost-center); "
        "tag keys on the bill's GPU lines: application, business_unit, environment; "
        "10 lines ($13.00) stay unattributed",
    ]
    assert result.usd_by_deployment == {None: Decimal("13.00000000000")}  # kept, never dropped


def test_the_import_source_is_the_one_focus_source_or_named() -> None:
    assert import_source_name(parse_config(""), None) == "focus-import"
    one = parse_config('[[billing.sources]]\nkind = "focus_files"\nname = "cur"\npaths = ["/b"]\n')
    assert import_source_name(one, None) == "cur"
    two = parse_config(
        '[[billing.sources]]\nkind = "focus_files"\nname = "a"\npaths = ["/b"]\n'
        '[[billing.sources]]\nkind = "focus_files"\nname = "b"\npaths = ["/c"]\n'
    )
    with pytest.raises(BadInputError, match="say which one these files belong to with --source NAME"):
        import_source_name(two, None)
    with pytest.raises(BadInputError, match="--source c: no such billing source"):
        import_source_name(two, "c")


# -- S3: AWS Data Exports under moto ----------------------------------------------------------------


def _manifest(bucket: str, keys: list[str]) -> bytes:
    return json.dumps(
        {
            "exportName": "gpu-export",
            "billingPeriod": {"start": "2024-09-01T00:00:00.000Z", "end": "2024-10-01T00:00:00.000Z"},
            "dataFiles": [f"s3://{bucket}/{k}" for k in keys],
            "columns": [],
        }
    ).encode()


def test_an_s3_export_is_read_through_its_manifest_and_a_redelivered_month_replaces_the_old(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    from moto import mock_aws

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    config = _config(
        tmp_path,
        '\n[[billing.sources]]\nkind = "focus_s3"\nname = "aws-export"\n'
        'bucket = "bills"\nprefix = "focus/gpu-export"\n',
    )
    source = config.billing.source("aws-export")
    assert isinstance(source, FocusS3Source)
    rows = pd.read_csv(FIXTURE, dtype=str, keep_default_na=False)
    data = "focus/gpu-export/data/BILLING_PERIOD=2024-09"
    meta = "focus/gpu-export/metadata/BILLING_PERIOD=2024-09"
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="bills")
        first_half, second_half = rows.iloc[:500], rows.iloc[500:]
        part1, part2 = tmp_path / "p1.parquet", tmp_path / "p2.csv.gz"
        first_half.to_parquet(part1, engine="pyarrow")
        second_half.to_csv(part2, index=False, compression="gzip")
        s3.upload_file(str(part1), "bills", f"{data}/gpu-export-00001.snappy.parquet")
        s3.upload_file(str(part2), "bills", f"{data}/gpu-export-00002.csv.gz")
        keys = [f"{data}/gpu-export-00001.snappy.parquet", f"{data}/gpu-export-00002.csv.gz"]
        s3.put_object(Bucket="bills", Key=f"{meta}/gpu-export-Manifest.json", Body=_manifest("bills", keys))
        first = sync_s3(store, config, source, CATALOG, client=s3)
        assert first.gpu_rows == 10 and first.change.added == 10
        assert first.gpu_lines_usd == Decimal("13.00000000000")
        # Re-delivered: one file, every GPU line's EffectiveCost revised; the old files stay in the folder.
        revised = rows.copy()
        gpu = revised["ChargeDescription"].str.contains(r"\.4xlarge Instance Hour")
        revised.loc[gpu, "EffectiveCost"] = "1.5"
        part3 = tmp_path / "p3.parquet"
        revised.to_parquet(part3, engine="pyarrow")
        s3.upload_file(str(part3), "bills", f"{data}/redelivery/gpu-export-00001.snappy.parquet")
        s3.put_object(
            Bucket="bills",
            Key=f"{meta}/gpu-export-Manifest.json",  # overwritten, as Data Exports does
            Body=_manifest("bills", [f"{data}/redelivery/gpu-export-00001.snappy.parquet"]),
        )
        second = sync_s3(store, config, source, CATALOG, client=s3)
    assert second.change.changed == 10 and second.change.added == 0
    lines = _all(store)
    assert len(lines) == 10 and sum((x.amount_usd for x in lines), Decimal(0)) == Decimal("15.0")


def test_s3_without_a_manifest_or_without_access_says_what_to_do(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    from moto import mock_aws

    from auditor.errors import UnavailableError

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    config = _config(
        tmp_path, '\n[[billing.sources]]\nkind = "focus_s3"\nname = "x"\nbucket = "bills"\nprefix = "p/e"\n'
    )
    source = config.billing.source("x")
    assert isinstance(source, FocusS3Source)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="bills")
        with pytest.raises(FocusError, match=r"s3://bills/p/e/metadata/: no AWS Data Exports manifest"):
            sync_s3(store, config, source, CATALOG, client=s3)
        other = source.model_copy(update={"bucket": "missing"})
        with pytest.raises(UnavailableError, match="no bucket missing"):
            sync_s3(store, config, other, CATALOG, client=s3)


# -- BigQuery: the real client against a local server -------------------------------------------------


def test_a_bigquery_focus_view_is_queried_filtered_and_imported(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    from tests.gcpkit import google_server

    monkeypatch.setenv("NO_GCE_CHECK", "true")
    config = _config(
        tmp_path,
        '\n[[billing.sources]]\nkind = "focus_bigquery"\nname = "gcp-focus"\n'
        'table = "proj.billing.focus_v1"\n',
    )
    source = config.billing.source("gcp-focus")
    assert isinstance(source, FocusBigQuerySource)
    fields = [
        ("BilledCost", "NUMERIC"),
        ("EffectiveCost", "NUMERIC"),
        ("ListCost", "NUMERIC"),
        ("BillingCurrency", "STRING"),
        ("BillingAccountId", "STRING"),
        ("BillingPeriodStart", "TIMESTAMP"),
        ("ChargePeriodStart", "TIMESTAMP"),
        ("ChargePeriodEnd", "TIMESTAMP"),
        ("ChargeCategory", "STRING"),
        ("ChargeDescription", "STRING"),
        ("ConsumedQuantity", "NUMERIC"),
        ("ConsumedUnit", "STRING"),
        ("SubAccountId", "STRING"),
        ("ResourceId", "STRING"),
        ("SkuId", "STRING"),
        ("Tags", "STRING"),
    ]
    start = int(datetime(2026, 11, 2, 10, tzinfo=UTC).timestamp()) * 10**6  # TIMESTAMP: microseconds
    period = str(int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()) * 10**6)
    with google_server() as server:
        server.queue_result([("BillingPeriodStart", "TIMESTAMP")], [[period]])
        server.queue_result(
            fields,
            [
                ["29.387080", "18.513656", "29.387080", "USD", "0123AB-456789-CDEF01", period,
                 str(start), str(start + 3600 * 10**6), "Usage", "Nvidia Tesla A100 GPU running in Americas",
                 "8", "hour", "ml-prod",
                 "//compute.googleapis.com/projects/ml-prod/zones/us-central1-a/instances/node-1",
                 "039F-D0DA-4055", '[{"key": "k8s-label/application", "value": "BrightPathMatrix"}]'],
            ],
        )  # fmt: skip
        client = bigquery.Client(
            project="proj",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=server.url),
        )
        result = sync_bigquery(store, config, source, CATALOG, client=client, today=date(2026, 11, 20))
        queries = [
            r.body["configuration"]["query"] for r in server.queries() if r.body and "configuration" in r.body
        ]
    (line,) = _all(store)
    assert line.gpu_hours == Decimal(8) and line.effective_cost == Decimal("18.513656")
    assert line.deployment == "brightpath"  # by a Kubernetes label, its prefix ignored
    assert result.periods == [date(2026, 11, 1)]
    text = queries[-1]["query"]
    assert "FROM `proj.billing.focus_v1`" in text and "REGEXP_CONTAINS" in text
    values = {p["name"]: p["parameterValue"]["value"] for p in queries[-1]["queryParameters"]}
    assert values["since"] == "2026-10-01"  # the current and the previous billing period


# -- the commands ---------------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AUDITOR_CONFIG"}
    return subprocess.run(
        [str(AUDITOR), *args], capture_output=True, text=True, env=env, timeout=240, check=False
    )


def test_billing_import_and_status_commands(tmp_path: Path) -> None:
    config = tmp_path / "auditor.toml"
    config.write_text(CONFIG.format(db=tmp_path / "a.db"))
    done = _run("billing", "import", "-c", str(config), str(FIXTURE))
    assert done.returncode == 0, done.stderr
    assert "1,000 rows read, 10 GPU rows" in done.stdout and "EffectiveCost" in done.stdout
    assert "$13.00" in done.stdout
    again = _run("billing", "import", "-c", str(config), str(FIXTURE), "--json")
    figures = json.loads(again.stdout, parse_float=Decimal)
    assert list(figures) == [
        "source", "kind", "origin", "cost_metric", "rows_read", "gpu_rows", "billing_periods", "lines",
        "gpu_lines_usd", "deployments", "unattributed_usd", "warnings",
    ]  # fmt: skip
    assert figures["lines"] == {"added": 0, "removed": 0, "changed": 0, "unchanged": 10}
    assert figures["deployments"] == [{"deployment": "brightpath", "cost_usd": Decimal("13.00000000000")}]
    assert figures["cost_metric"] == "effective" and figures["unattributed_usd"] == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("BilledCost,ChargeDescription\n1,x\n")
    failed = _run("billing", "import", "-c", str(config), str(bad))
    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr.count("\n") == 1 and "bad.csv: not a FOCUS export: missing columns" in failed.stderr
    status = _run("billing", "status", "-c", str(config), "--json")
    data = json.loads(status.stdout, parse_float=Decimal)
    assert list(data) == ["cost_metric", "sources", "no_billing_data", "fix"]
    (source,) = data["sources"]
    assert (source["name"], source["kind"], source["lines"], source["days"], source["unattributed_usd"]) == (
        "focus-import",
        "import",
        10,
        9,
        0,
    )
    assert data["no_billing_data"] == [] and source["last_sync"] is not None
    text = _run("billing", "status", "-c", str(config))
    assert "focus-import" in text.stdout and "2024-09-12 … 2024-09-30 (9 days)" in text.stdout
