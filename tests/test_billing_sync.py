"""`billing sync` end to end below the CLI: Cost Explorer through moto, the GCP export and catalog through
the real clients against a local server, into a real store; the days read, attribution, what a
re-sync and a revision do (hypothesis), and what each sync records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.analysis import cost_window
from auditor.cli import main
from auditor.cli.billing_sync import billing_checks, billing_jobs
from auditor.config import Config, parse_config
from auditor.doctor import general_checks
from auditor.errors import BadInputError
from auditor.gpu_prices import load_gpu_prices
from auditor.model import CostBasis
from auditor.prices import ApiPriceCatalog
from auditor.store import Store
from collectors import gcp_billing
from collectors.aws_billing import ce_client
from collectors.billing_api import BillingClients, api_sources, sync_sources
from tests.gcpkit import GoogleServer, google_server
from tests.test_aws_billing import queue, recorded
from tests.test_gcp_billing import A2_CORE, A100, EXPORT_FIELDS, TABLE, catalog_pages, export_row

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC).timestamp()
MOTO_ACCOUNT = "123456789012"
DEPLOYMENTS = """
[[deployments]]
name = "llama-70b"
model = "meta-llama/Llama-3.1-70B-Instruct"
gpu_type = "H100"
gpus = [{host = "gpu-1", indexes = [0, 1, 2, 3, 4, 5, 6, 7]}]
price = {source = "aws", tags = {deployment = "llama-70b"}}

[[deployments]]
name = "qwen"
model = "Qwen/Qwen2.5-7B-Instruct"
gpu_type = "A100-40GB"
gpus = [{host = "gpu-2", indexes = [0]}]
price = {source = "gcp", labels = {app = "qwen"}}
"""
AWS_SOURCE = """
[[billing.sources]]
kind = "aws_cost_explorer"
name = "aws-ce"
account_id = "999988887777"
"""


def config(extra: str = "") -> Config:
    return parse_config(DEPLOYMENTS + AWS_SOURCE + extra)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 'auditor.db'}")
    yield opened
    opened.close()


def ce_day(day: date, groups: list[tuple[str, str, str, str]], *, estimated: bool = False) -> dict[str, Any]:
    """One day of Cost Explorer's answer: (tag value, instance type, amortized, unblended) groups."""
    return {
        "TimePeriod": {"Start": day.isoformat(), "End": (day + timedelta(days=1)).isoformat()},
        "Total": {},
        "Estimated": estimated,
        "Groups": [
            {
                "Keys": [f"deployment${tag}", instance_type],
                "Metrics": {
                    "AmortizedCost": {"Amount": amortized, "Unit": "USD"},
                    "UnblendedCost": {"Amount": unblended, "Unit": "USD"},
                    "UsageQuantity": {"Amount": "24", "Unit": "Hrs"},
                },
            }
            for tag, instance_type, amortized, unblended in groups
        ],
    }


def sync(cfg: Config, store: Store, now: float = NOW, **kw: Any) -> Any:
    return sync_sources(cfg, store, gpu_catalog=load_gpu_prices(), now=lambda: now, **kw)


def test_cost_explorer_lines_land_attributed_with_their_focus_costs(aws: None, store: Store) -> None:
    queue(
        {
            "ResultsByTime": [
                ce_day(date(2026, 10, 1), [("llama-70b", "p5.48xlarge", "1000.00", "1320.96")])
            ],
            "NextPageToken": "2",
        },
        {
            "ResultsByTime": [
                ce_day(date(2026, 11, 19), [("", "p5.48xlarge", "12.5", "12.5")], estimated=True)
            ]
        },
    )
    (outcome,), failures = sync(config(), store)
    assert not failures
    assert (outcome.start, outcome.end) == (date(2026, 10, 1), date(2026, 11, 21))  # previous month..today
    assert outcome.requests == 2 and outcome.request_cost_usd == Decimal("0.02")
    assert outcome.by_deployment == {"llama-70b": Decimal("1000.00"), None: Decimal("12.5")}
    tagged, untagged = store.cost_lines(date(2026, 10, 1), date(2026, 12, 1))
    assert tagged.deployment == "llama-70b" and untagged.deployment is None  # unattributed, kept
    assert (tagged.billed_cost, tagged.effective_cost, tagged.amount_usd) == (
        Decimal("1320.96"),
        Decimal("1000.00"),
        Decimal("1000.00"),
    )
    assert tagged.gpu_hours == Decimal(24 * 8)  # 24 instance-hours of an 8-GPU p5.48xlarge
    assert (
        tagged.account == "999988887777" and tagged.provider == "AWS" and tagged.basis is CostBasis.AMORTIZED
    )
    assert untagged.estimated and not tagged.estimated
    (record,) = store.billing_syncs("aws-ce")
    assert record.kind == "aws_cost_explorer" and record.requests == 2 and record.lines_added == 2


def test_the_next_sync_rereads_two_months_not_older_days(aws: None, store: Store) -> None:
    recordings: list[list[dict[str, Any]]] = []

    def client(source: Any) -> Any:
        built = ce_client(region=source.region)
        recordings.append(recorded(built))
        return built

    clients = BillingClients(cost_explorer=client)
    queue({"ResultsByTime": []})
    sync(config(), store, since=date(2026, 3, 1), clients=clients)
    queue({"ResultsByTime": []})
    later = datetime(2026, 12, 3, 12, 0, tzinfo=UTC).timestamp()
    sync(config(), store, now=later, clients=clients)
    first, second = (call["TimePeriod"] for calls in recordings for call in calls)
    assert first == {"Start": "2026-03-01", "End": "2026-11-21"}
    assert second == {"Start": "2026-11-01", "End": "2026-12-04"}  # March..October are final: not re-read


money = st.decimals(min_value=Decimal("-50"), max_value=Decimal("5000"), places=6, allow_nan=False)
days_strategy = st.lists(
    st.tuples(st.integers(0, 50), st.sampled_from(["llama-70b", "", "other"]), money), max_size=12
)


def _answer(rows: list[tuple[int, str, Decimal]]) -> dict[str, Any]:
    by_day: dict[date, list[tuple[str, str, str, str]]] = {}
    seen = set()
    for offset, tag, amount in rows:
        day = date(2026, 10, 1) + timedelta(days=offset)
        if (day, tag) in seen:
            continue  # Cost Explorer gives one group per tag value and instance type a day
        seen.add((day, tag))
        by_day.setdefault(day, []).append((tag, "p5.48xlarge", str(amount), str(amount)))
    return {"ResultsByTime": [ce_day(d, g) for d, g in sorted(by_day.items())]}


def _total(store: Store) -> dict[str | None, Decimal]:
    totals: dict[str | None, Decimal] = {}
    for line in store.cost_lines(date(2026, 1, 1), date(2027, 1, 1)):
        totals[line.deployment] = totals.get(line.deployment, Decimal(0)) + line.amount_usd
    return totals


def _expected(answer: dict[str, Any]) -> dict[str | None, Decimal]:
    totals: dict[str | None, Decimal] = {}
    for result in answer["ResultsByTime"]:
        for group in result["Groups"]:
            tag = group["Keys"][0].split("$", 1)[1]
            who = tag if tag == "llama-70b" else None
            totals[who] = totals.get(who, Decimal(0)) + Decimal(group["Metrics"]["AmortizedCost"]["Amount"])
    return totals


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=days_strategy, revised=days_strategy)
def test_a_resync_changes_nothing_and_a_revision_corrects_never_doubles(
    aws: None, store: Store, first: list[Any], revised: list[Any]
) -> None:
    cfg = config()
    client = ce_client()  # one client for every example: building one takes a third of a second
    clients = BillingClients(cost_explorer=lambda _source: client)
    store.replace_cost_lines("aws-ce", None, date(2000, 1, 1), date(2100, 1, 1), [])  # a fresh example
    answer = _answer(first)
    queue(answer)
    sync(cfg, store, clients=clients)
    before = store.cost_lines(date(2026, 1, 1), date(2027, 1, 1))
    queue(answer)  # the same bill again
    ((outcome,), _) = sync(cfg, store, clients=clients)
    assert not outcome.change.changed_anything
    assert store.cost_lines(date(2026, 1, 1), date(2027, 1, 1)) == before
    assert _total(store) == _expected(answer)
    restated = _answer(revised)
    queue(restated)  # AWS revised the days: the store holds the revision, once
    sync(cfg, store, clients=clients)
    assert _total(store) == _expected(restated)


def test_a_non_usd_bill_without_a_rate_is_refused(aws: None, store: Store) -> None:
    answer = ce_day(date(2026, 11, 2), [("llama-70b", "p5.48xlarge", "10", "10")])
    for metric in answer["Groups"][0]["Metrics"].values():
        metric["Unit"] = "EUR" if metric is not answer["Groups"][0]["Metrics"]["UsageQuantity"] else "Hrs"
    queue({"ResultsByTime": [answer]})
    with pytest.raises(BadInputError, match=r"bills in EUR.*billing\.currency_rates\.EUR"):
        sync(config(), store)
    queue({"ResultsByTime": [answer]})
    sync(config("\n[billing.currency_rates]\nEUR = 1.08\n"), store)
    (line,) = store.cost_lines(date(2026, 11, 1), date(2026, 12, 1))
    assert line.amount_usd == Decimal("10.80") and line.billing_currency == "EUR" and line.billed_cost == 10


def test_one_source_failing_leaves_the_others_syncing(
    monkeypatch: pytest.MonkeyPatch, no_aws_credentials: None, store: Store
) -> None:
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    with google_server(catalog_pages()) as google:
        cfg = config(CATALOG_SOURCE)
        outcomes, failures = sync(cfg, store, clients=_google_clients(google))
    ((name, error),) = failures
    assert name == "aws-ce" and error.permission == "ce:GetCostAndUsage"
    assert [o.source for o in outcomes] == ["gcp-list"]


def test_only_api_sources_sync_and_a_wrong_name_is_one_line() -> None:
    cfg = config()
    assert [s.name for s in api_sources(cfg)] == ["aws-ce"]
    with pytest.raises(BadInputError, match="no source 'nope'"):
        api_sources(cfg, "nope")


# -- GCP ---------------------------------------------------------------------------------------------

EXPORT_SOURCE = f"""
[[billing.sources]]
kind = "gcp_billing_export"
name = "gcp-bill"
table = "{TABLE}"
label_key = "app"
"""
CATALOG_SOURCE = """
[[billing.sources]]
kind = "gcp_catalog"
name = "gcp-list"
region = "us-central1"
"""


def _google_clients(server: GoogleServer) -> BillingClients:
    anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
    return BillingClients(
        bigquery=lambda s: gcp_billing.bigquery_client(
            "billing-proj", credentials=anonymous, endpoint=server.url
        ),
        catalog=lambda s: gcp_billing.catalog_client(credentials=anonymous, endpoint=server.url),
    )


@pytest.fixture
def google(monkeypatch: pytest.MonkeyPatch) -> Iterator[GoogleServer]:
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    with google_server(catalog_pages()) as server:
        yield server


def test_gcp_export_lines_are_net_of_credits_and_attributed_by_label(
    google: GoogleServer, store: Store
) -> None:
    cfg = parse_config(DEPLOYMENTS + EXPORT_SOURCE)
    google.queue_result(
        EXPORT_FIELDS,
        [
            export_row(date(2026, 10, 30), "qwen", A100, "70.413792", "-21.124138", "24", "a2-highgpu-1g"),
            export_row(date(2026, 11, 19), None, A2_CORE, "9.104", "0", "288", "a2-highgpu-1g"),
        ],
    )
    (outcome,), failures = sync(cfg, store, clients=_google_clients(google))
    assert not failures and outcome.requests == 0
    gpu, cores = store.cost_lines(date(2026, 10, 1), date(2026, 12, 1))
    assert gpu.deployment == "qwen" and cores.deployment is None
    assert gpu.amount_usd == gpu.billed_cost == Decimal("49.289654")
    assert gpu.gpu_hours == 24 and cores.gpu_hours is None  # cores and RAM are not GPU-hours
    assert gpu.sub_account == "ml-prod" and gpu.region == "us-central1" and gpu.sku_id == "039F-D0DA-4055"
    assert not gpu.estimated and cores.estimated  # the invoice month is still open


def test_gcp_catalog_prices_active_gpu_hours_as_a_labelled_estimate(
    google: GoogleServer, store: Store, tmp_path: Path
) -> None:
    cfg = parse_config(DEPLOYMENTS.replace('price = {source = "gcp", labels = {app = "qwen"}}',
                                           'price = {source = "gcp", labels = {app = "qwen"}}\n'
                                           'active_from = 2026-11-18\nactive_until = 2026-11-19T12:00:00Z')
                       + CATALOG_SOURCE)  # fmt: skip
    clients = _google_clients(google)
    (outcome,), _ = sync(cfg, store, clients=clients, cache_dir=tmp_path)
    lines = store.cost_lines(date(2026, 10, 1), date(2026, 12, 1))
    assert [(line.day, line.gpu_hours) for line in lines] == [
        (date(2026, 11, 18), Decimal(24)),
        (date(2026, 11, 19), Decimal(12)),
    ]
    assert all(
        line.basis is CostBasis.LIST and line.estimated and line.deployment == "qwen" for line in lines
    )
    assert lines[0].amount_usd == Decimal("2.933908") * 24 == lines[0].list_cost
    assert outcome.by_deployment == {"qwen": Decimal("2.933908") * 36}
    catalog_requests = len([r for r in google.requests if r.path.endswith("/skus")])
    (again,), _ = sync(cfg, store, clients=clients, cache_dir=tmp_path)
    assert len([r for r in google.requests if r.path.endswith("/skus")]) == catalog_requests  # cached
    assert not again.change.changed_anything and "list prices from the cache" in again.notes


def test_gcp_catalog_without_a_price_for_the_region_estimates_nothing(
    google: GoogleServer, store: Store
) -> None:
    cfg = parse_config(DEPLOYMENTS + CATALOG_SOURCE.replace("us-central1", "europe-west4"))
    (outcome,), _ = sync(cfg, store, clients=_google_clients(google))
    assert outcome.lines == 0 and "no estimate" in outcome.notes[0]


# -- the daemon's job and doctor ---------------------------------------------------------------------


def test_the_daily_job_logs_a_refused_source_in_one_line_and_never_raises(
    no_aws_credentials: None, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    (job,) = billing_jobs(config(), store, load_gpu_prices(), now=lambda: NOW)
    assert job.name == "billing-sync" and job.run_at_start  # never synced: at start too
    assert job.cron is not None
    assert {k: job.cron[k] for k in ("minute", "hour", "day")} == {"minute": "17", "hour": "7", "day": "*"}
    job.func()  # no credentials: logged, not raised (the daemon's other jobs are not affected)
    (line,) = [r for r in caplog.records if r.name == "auditor.billing"]
    assert "aws-ce" in line.getMessage() and "ce:GetCostAndUsage" in line.getMessage()
    assert "\n" not in line.getMessage()
    assert billing_jobs(parse_config(DEPLOYMENTS), store, []) == []  # no API source: no job


def test_doctor_makes_one_cheap_real_call_per_source(aws: None, google: GoogleServer) -> None:
    queue({"ResultsByTime": []})
    google.fail("/jobs", 403, "Access Denied: User does not have bigquery.jobs.create permission.")
    cfg = config(EXPORT_SOURCE + CATALOG_SOURCE)
    ce, export, catalog = billing_checks(cfg, load_gpu_prices(), _google_clients(google))
    assert ce.ok and ce.source == "billing aws-ce" and "$0.01" in ce.detail
    assert not export.ok and "bigquery.jobs.create" in export.detail and export.fix
    assert catalog.ok


def test_doctor_fails_a_bill_priced_deployment_with_no_source_to_bring_its_bill() -> None:
    checks = general_checks(parse_config(DEPLOYMENTS), {})
    billing = {c.source: c for c in checks if c.source.startswith("billing")}
    assert not billing["billing aws"].ok and "llama-70b" in billing["billing aws"].detail
    assert "aws_cost_explorer" in (billing["billing aws"].fix or "")
    assert not billing["billing gcp"].ok
    assert not [c for c in general_checks(config(EXPORT_SOURCE), {}) if c.source.startswith("billing")]


# -- the command -----------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The real command line, in this process (so that moto's AWS stands in for AWS)."""
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def _config_file(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "auditor.toml"
    path.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "a.db"}"\n' + DEPLOYMENTS + AWS_SOURCE + extra)
    return str(path)


def test_billing_sync_command_prints_days_rows_requests_and_cost_by_deployment(
    aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    today = date.today()  # noqa: DTZ011  (Cost Explorer's days: the command reads through today)
    queue(
        {
            "ResultsByTime": [
                ce_day(
                    today,
                    [("llama-70b", "p5.48xlarge", "40.5", "55.04"), ("", "g5.xlarge", "1.006", "1.006")],
                )
            ]
        }
    )
    code, out, err = _cli(capsys, "billing", "sync", "-c", _config_file(tmp_path), "--json")
    assert code == 0, err
    data = json.loads(out, parse_float=Decimal)  # money is exact in JSON: numbers with all their digits
    assert shape(data) == SYNC_JSON_KEYS  # a published schema: change it on purpose only
    (source,) = data["sources"]
    assert (
        source["source"] == "aws-ce" and source["requests"] == 1 and source["requests_usd"] == Decimal("0.01")
    )
    assert source["by_deployment"] == {"llama-70b": Decimal("40.5")}
    assert source["unattributed_usd"] == Decimal("1.006") and not source["estimate"]
    assert source["days_read"] == (today - today.replace(day=1)).days + 1 + _previous_month_days(today)
    assert source["last_day"] == today.isoformat() and data["cost_metric"] == "effective"
    code, out, _ = _cli(capsys, "billing", "sync", "-c", _config_file(tmp_path))
    assert code == 0
    assert "aws-ce: " in out and "1 paid request(s) ($0.01)" in out and "(nothing changed)" in out
    assert "llama-70b" in out and "$40.50" in out and "unattributed" in out and "$41.51" in out


SYNC_JSON_KEYS = {
    "cost_metric": None,
    "sources": [
        {
            "source": None,
            "kind": None,
            "origin": None,
            "first_day": None,
            "last_day": None,
            "days_read": None,
            "billing_periods": [None],
            "rows_read": None,
            "lines": {"total": None, "added": None, "removed": None, "changed": None, "unchanged": None},
            "estimated_days": None,
            "requests": None,
            "requests_usd": None,
            "by_deployment": {"llama-70b": None},
            "unattributed_usd": None,
            "estimate": None,
            "notes": [],
        }
    ],
    "failures": [],
}


def shape(data: Any) -> Any:
    """The keys of a JSON document, nested (lists by their first element)."""
    if isinstance(data, dict):
        return {k: shape(v) for k, v in data.items()}
    if isinstance(data, list):
        return [shape(data[0])] if data else []
    return None


def _previous_month_days(today: date) -> int:
    last = today.replace(day=1) - timedelta(days=1)
    return last.day


def test_billing_sync_bad_options_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = _config_file(tmp_path)
    code, _, err = _cli(capsys, "billing", "sync", "-c", config_file, "--since", "last week")
    assert code == 2 and err.count("\n") == 1 and "--since 'last week' is not a date" in err
    code, _, err = _cli(capsys, "billing", "sync", "-c", config_file, "--source", "nope")
    assert code == 2 and "no source 'nope'" in err and "aws-ce" in err


def test_billing_sync_without_credentials_names_the_permission(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "AUDITOR_CONFIG"}
    env |= {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "auditor"), "billing", "sync", "-c", _config_file(tmp_path)],
        capture_output=True, text=True, env=env, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "auditor: billing source 'aws-ce': no AWS credentials found; the source needs ce:GetCostAndUsage; "
        "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the EnvironmentFile, or give the "
        "host an instance role"
    ]


def test_a_synced_aws_deployment_is_priced_from_its_bill_and_an_unsynced_month_has_no_billing_data(
    aws: None, store: Store
) -> None:
    """The issue's $0.00: after a sync the deployment costs what the bill says; a month the bill has
    no lines for is *no billing data* (cost unknown), never $0."""
    cfg = config()
    queue(
        {
            "ResultsByTime": [
                ce_day(date(2026, 10, day), [("llama-70b", "p5.48xlarge", "1320.96", "1320.96")])
                for day in range(1, 32)
            ]
        }
    )
    sync(cfg, store)

    def llama_in(month: int) -> Any:
        start, end = datetime(2026, month, 1, tzinfo=UTC), datetime(2026, month + 1, 1, tzinfo=UTC)
        window = cost_window(store, cfg, start, end, ApiPriceCatalog(), load_gpu_prices()).window
        return next(d for d in window.deployments if d.deployment == "llama-70b")

    october = llama_in(10)
    assert october.cost_known and october.cost_usd == Decimal("1320.96") * 31
    assert not llama_in(9).cost_known


def test_a_member_account_read_alone_is_the_lines_sub_account(aws: None, store: Store) -> None:
    """A deployment priced by one member account's bill (price.account_id) claims that account's lines."""
    cfg = parse_config(
        DEPLOYMENTS.replace(
            'price = {source = "aws", tags = {deployment = "llama-70b"}}',
            'price = {source = "aws", account_id = "210987654321", tags = {deployment = "llama-70b"}}',
        )
        + AWS_SOURCE
        + 'linked_accounts = ["210987654321"]\n'
    )
    queue({"ResultsByTime": [ce_day(date(2026, 11, 2), [("llama-70b", "p5.48xlarge", "10", "10")])]})
    sync(cfg, store)
    (line,) = store.cost_lines(date(2026, 11, 1), date(2026, 12, 1))
    assert (line.account, line.sub_account, line.deployment) == ("999988887777", "210987654321", "llama-70b")
