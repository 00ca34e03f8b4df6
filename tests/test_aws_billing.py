"""Cost Explorer through the real boto3 client against moto (results queued through moto's own API)."""

from __future__ import annotations

import http.server
import json
import threading
from datetime import date
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from botocore.stub import Stubber
from moto.ce.models import ce_backends

from collectors.aws_billing import REQUEST_USD, CostExplorer, ce_client, gpu_families, plan_days
from collectors.interface import BillingUnavailable

MOTO_ACCOUNT = "123456789012"
"""moto's default account."""


def queue(*pages: dict[str, Any]) -> None:
    """Queue Cost Explorer answers in moto (what its `/moto-api/static/ce/cost-and-usage-results`
    endpoint does): each new distinct request takes the next one. Answers already given are
    forgotten: a new sync gets a new answer even for a request it made before."""
    backend = ce_backends[MOTO_ACCOUNT]["global"]
    backend.cost_usage_results.clear()
    backend.cost_usage_results_queue.extend(pages)


def group(tag: str, instance_type: str, amortized: str, unblended: str, hours: str) -> dict[str, Any]:
    return {
        "Keys": [tag, instance_type],
        "Metrics": {
            "AmortizedCost": {"Amount": amortized, "Unit": "USD"},
            "UnblendedCost": {"Amount": unblended, "Unit": "USD"},
            "UsageQuantity": {"Amount": hours, "Unit": "Hrs"},
        },
    }


def day(start: str, end: str, groups: list[dict[str, Any]], *, estimated: bool) -> dict[str, Any]:
    return {"TimePeriod": {"Start": start, "End": end}, "Total": {}, "Groups": groups, "Estimated": estimated}


def recorded(client: Any) -> list[dict[str, Any]]:
    """The parameters of every GetCostAndUsage call the client makes (botocore's own event hook)."""
    calls: list[dict[str, Any]] = []
    client.meta.events.register(
        "provide-client-params.ce.GetCostAndUsage", lambda params, **_: calls.append(dict(params))
    )
    return calls


def test_pages_are_followed_by_hand_and_each_counted(aws: None) -> None:
    queue(
        {
            "ResultsByTime": [
                day(
                    "2026-11-01",
                    "2026-11-02",
                    [group("deployment$llama-70b", "p5.48xlarge", "40.50", "55.04", "1")],
                    estimated=True,
                )
            ],
            "NextPageToken": "page-2",
        },
        {
            "ResultsByTime": [
                day(
                    "2026-11-01",
                    "2026-11-02",
                    [group("deployment$", "g5.xlarge", "0.0000001", "1.006", "1")],
                    estimated=True,
                ),
                day(
                    "2026-11-02",
                    "2026-11-03",
                    [group("deployment$llama-70b", "p5.48xlarge", "-3.25", "0", "0")],
                    estimated=False,
                ),
            ]
        },
    )
    client = ce_client()
    calls = recorded(client)
    explorer = CostExplorer(client, families=["g5", "p5"], tag_key="deployment")
    fetched = explorer.fetch(date(2026, 11, 1), date(2026, 11, 3))

    assert fetched.requests == 2
    assert fetched.cost_usd == Decimal("0.02") == 2 * REQUEST_USD
    assert "NextPageToken" not in calls[0]
    assert calls[1]["NextPageToken"] == "page-2"
    assert {k: v for k, v in calls[1].items() if k != "NextPageToken"} == calls[0]
    first, untagged, credit = fetched.rows
    assert (first.day, first.tag_value, first.instance_type) == (
        date(2026, 11, 1),
        "llama-70b",
        "p5.48xlarge",
    )
    assert (first.amortized, first.unblended, first.usage_hours, first.estimated) == (
        Decimal("40.50"),
        Decimal("55.04"),
        Decimal(1),
        True,
    )
    assert untagged.tag_value is None  # `deployment$`: usage without the tag
    assert untagged.amortized == Decimal("0.0000001")  # strings kept exact, never floats
    assert credit.amortized == Decimal("-3.25") and not credit.estimated  # negative lines kept


def test_the_request_asks_for_daily_amortized_unblended_and_usage_of_gpu_families(aws: None) -> None:
    queue({"ResultsByTime": []})
    client = ce_client()
    calls = recorded(client)
    CostExplorer(client, families=["p4d", "p5"], tag_key="team", linked_accounts=["123456789012"]).fetch(
        date(2026, 10, 1), date(2026, 11, 1)
    )
    (call,) = calls
    assert call["TimePeriod"] == {"Start": "2026-10-01", "End": "2026-11-01"}  # End exclusive
    assert call["Granularity"] == "DAILY"
    assert call["Metrics"] == ["AmortizedCost", "UnblendedCost", "UsageQuantity"]
    assert call["GroupBy"] == [{"Type": "TAG", "Key": "team"}, {"Type": "DIMENSION", "Key": "INSTANCE_TYPE"}]
    filters = {e["Dimensions"]["Key"]: e["Dimensions"]["Values"] for e in call["Filter"]["And"]}
    assert filters == {
        "SERVICE": ["Amazon Elastic Compute Cloud - Compute"],
        "INSTANCE_TYPE_FAMILY": ["p4d", "p5"],
        "LINKED_ACCOUNT": ["123456789012"],
    }


def test_the_client_retries_adaptively() -> None:
    client = ce_client(region="us-east-1")
    assert client.meta.config.retries["mode"] == "adaptive"


def test_gpu_families_come_from_instance_types_and_config() -> None:
    assert gpu_families(["p5.48xlarge", "g6e.12xlarge", "p5.4xlarge"], extra=["g4dn"]) == [
        "g4dn",
        "g6e",
        "p5",
    ]


@pytest.mark.parametrize(
    ("today", "synced_through", "since", "expected"),
    [
        # First sync: the previous and current month, through today.
        (date(2026, 11, 30), None, None, (date(2026, 10, 1), date(2026, 12, 1))),
        # Synced before: older days are not re-read, the two revisable months are.
        (date(2026, 11, 30), date(2026, 11, 29), None, (date(2026, 10, 1), date(2026, 12, 1))),
        # Early in a month: the previous month is still re-read (AWS revises it).
        (date(2027, 1, 2), date(2027, 1, 1), None, (date(2026, 12, 1), date(2027, 1, 3))),
        # A gap older than the previous month is read once.
        (date(2026, 11, 30), date(2026, 8, 15), None, (date(2026, 8, 16), date(2026, 12, 1))),
        # --since reaches back, but never past what Cost Explorer keeps.
        (date(2026, 11, 30), None, date(2026, 6, 1), (date(2026, 6, 1), date(2026, 12, 1))),
        (date(2026, 11, 30), None, date(2020, 1, 1), (date(2025, 11, 1), date(2026, 12, 1))),
    ],
)
def test_plan_days_rereads_only_what_aws_may_revise(
    today: date, synced_through: date | None, since: date | None, expected: tuple[date, date]
) -> None:
    assert plan_days(today, synced_through, since) == expected


def test_denied_names_the_permission_and_hides_the_secret(aws: None) -> None:
    client = ce_client()
    with Stubber(client) as stub:
        stub.add_client_error(
            "get_cost_and_usage",
            service_error_code="AccessDeniedException",
            service_message="User: arn:aws:iam::123456789012:user/x is not authorized to perform: "
            "ce:GetCostAndUsage",
            http_status_code=400,
        )
        with pytest.raises(BillingUnavailable) as caught:
            CostExplorer(client, families=["p5"], tag_key="deployment").fetch(
                date(2026, 11, 1), date(2026, 11, 2)
            )
    message = str(caught.value)
    assert "\n" not in message
    assert "ce:GetCostAndUsage" in message and caught.value.permission == "ce:GetCostAndUsage"
    assert "testing-secret-value" not in message and "arn:aws" not in message


def test_expired_credentials_say_so(aws: None) -> None:
    client = ce_client()
    with Stubber(client) as stub:
        stub.add_client_error(
            "get_cost_and_usage", service_error_code="ExpiredTokenException", http_status_code=400
        )
        with pytest.raises(BillingUnavailable, match="rejected the credentials"):
            CostExplorer(client, families=["p5"], tag_key=None).fetch(date(2026, 11, 1), date(2026, 11, 2))


def test_missing_credentials_are_one_line_naming_the_permission(no_aws_credentials: None) -> None:
    explorer = CostExplorer(ce_client(), families=["p5"], tag_key="deployment")
    with pytest.raises(BillingUnavailable) as caught:
        explorer.fetch(date(2026, 11, 1), date(2026, 11, 2))
    assert str(caught.value).startswith("no AWS credentials found; the source needs ce:GetCostAndUsage")


def test_a_malformed_amount_is_refused_not_guessed(aws: None) -> None:
    queue(
        {
            "ResultsByTime": [
                day(
                    "2026-11-01",
                    "2026-11-02",
                    [group("deployment$a", "p5.48xlarge", "NaN", "1", "1")],
                    estimated=False,
                )
            ]
        }
    )
    with pytest.raises(BillingUnavailable, match="malformed AmortizedCost"):
        CostExplorer(ce_client(), families=["p5"], tag_key="deployment").fetch(
            date(2026, 11, 1), date(2026, 11, 2)
        )


def test_doctor_check_makes_one_request(aws: None) -> None:
    queue({"ResultsByTime": []})
    client = ce_client()
    calls = recorded(client)
    detail = CostExplorer(client, families=["p5"], tag_key="deployment").check()
    assert len(calls) == 1 and "ce:GetCostAndUsage allowed" in detail and "$0.01" in detail


class _Throttling(http.server.BaseHTTPRequestHandler):
    """Cost Explorer as botocore sees it under load: `ThrottlingException` (HTTP 400, JSON protocol)
    for the first `throttled` requests, then one day's answer."""

    throttled = 2
    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append(self.headers.get("X-Amz-Target", ""))
        body: dict[str, Any]
        if len(self.seen) <= self.throttled:
            status, body = 400, {"__type": "ThrottlingException", "message": "Rate exceeded"}
        else:
            status = 200
            body = {
                "ResultsByTime": [
                    day(
                        "2026-10-01",
                        "2026-10-02",
                        [group("llama", "p5.48xlarge", "10.5", "9", "1")],
                        estimated=True,
                    )
                ],
                "DimensionValueAttributes": [],
            }
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_throttling_is_retried_by_botocore_and_only_the_answer_is_counted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """botocore's adaptive retries against a real HTTP server that throttles twice (moto never
    throttles; a Stubber bypasses retries): the page arrives, one paid request, two retries logged."""
    _Throttling.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Throttling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for name, value in {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        explorer = CostExplorer(ce_client(), families=["p5"], tag_key="deployment")
        fetched = explorer.fetch(date(2026, 10, 1), date(2026, 10, 2))
    finally:
        server.shutdown()
        server.server_close()
    assert _Throttling.seen == ["AWSInsightsIndexService.GetCostAndUsage"] * 3
    assert fetched.requests == 1 and fetched.retries == 2 and fetched.cost_usd == REQUEST_USD
    (row,) = fetched.rows
    assert row.amortized == Decimal("10.5") and row.estimated
