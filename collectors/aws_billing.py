"""AWS Cost Explorer (`ce:GetCostAndUsage`): the bill of GPU instances for accounts with no data export.

One binding module for Cost Explorer. A fetch is one query over a window of days, paged by hand on
`NextPageToken` (boto3 has no paginator for this call): daily granularity, the metrics
`AmortizedCost` (FOCUS `EffectiveCost`), `UnblendedCost` (`BilledCost`) and `UsageQuantity`
(instance-hours), filtered to EC2 compute of the GPU instance families, grouped by one cost-allocation
tag and `INSTANCE_TYPE`. Every page is a request AWS charges $0.01 for, so a fetch counts its pages and
the caller reads no more days than the sync needs (`plan_days`: the current and previous month are
re-read because AWS revises them, flagging their days `Estimated`; older days only once).

The client comes in through the constructor (`ce_client` builds one with botocore's adaptive retries:
throttling is retried with a client-side rate limiter, not by us). Transport and permission errors
become `BillingUnavailable`, one line naming the IAM action to grant; credentials never appear in it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from collectors.interface import BillingUnavailable

log = logging.getLogger("collectors.aws_billing")

REQUEST_USD = Decimal("0.01")
"""What AWS charges per Cost Explorer API request (each page of a paged answer is one)."""
EC2_COMPUTE = "Amazon Elastic Compute Cloud - Compute"
METRICS = ("AmortizedCost", "UnblendedCost", "UsageQuantity")
MAX_PAGES = 1000
"""A runaway guard: a page token that never ends would otherwise cost $0.01 a page for ever."""
HISTORY_MONTHS = 12
"""Cost Explorer keeps the current month and the 13 before it; a sync reads no further back than the
first day of the month 12 months before the current one (a request for older days fails)."""
PERMISSION = "ce:GetCostAndUsage"
_DENIED = {"AccessDeniedException", "AccessDenied", "UnauthorizedOperation"}
_BAD_CREDENTIALS = {
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "ExpiredToken",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
}


@dataclass(frozen=True, slots=True)
class CeRow:
    """One group of one day of Cost Explorer's answer: a tag value × an instance type."""

    day: date
    instance_type: str
    tag_value: str | None
    """The cost-allocation tag's value; None for usage without the tag (or with no tag grouping)."""
    amortized: Decimal
    """`AmortizedCost`: reservations' and Savings Plans' fees spread over the usage (EffectiveCost)."""
    unblended: Decimal
    """`UnblendedCost`: what the invoice charges the line (BilledCost)."""
    usage_hours: Decimal | None
    """`UsageQuantity` when its unit is hours (instance-hours); None when AWS mixes units."""
    currency: str
    estimated: bool
    """AWS may still revise the day (`Estimated` on its result)."""


@dataclass(frozen=True, slots=True)
class CeFetch:
    """What one fetch read, and what it cost."""

    start: date
    end: date
    """Exclusive, as Cost Explorer's `End`."""
    rows: tuple[CeRow, ...]
    requests: int
    """Pages requested (each charged `REQUEST_USD`)."""
    retries: int
    """Attempts botocore retried (throttling, transient errors) on top of `requests`."""

    @property
    def cost_usd(self) -> Decimal:
        return REQUEST_USD * self.requests


def gpu_families(instance_types: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """EC2 instance families (`p5`, `g6e`) of the given instance types, plus configured ones, sorted."""
    families = {t.split(".", 1)[0] for t in instance_types if t}
    families.update(f for f in extra if f)
    return sorted(families)


def ce_client(*, region: str = "us-east-1", profile: str | None = None, max_attempts: int = 8) -> Any:
    """A Cost Explorer client with botocore's adaptive retries (throttling slows the client down)."""
    import boto3  # a heavy import: only where billing is used
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError

    try:
        session = boto3.session.Session(profile_name=profile)
        return session.client(
            "ce",
            region_name=region,
            config=BotoConfig(
                retries={"mode": "adaptive", "max_attempts": max_attempts},
                connect_timeout=10,
                read_timeout=60,
            ),
        )
    except BotoCoreError as exc:  # an unknown profile, a malformed ~/.aws/config
        raise BillingUnavailable(
            f"AWS client cannot be set up ({type(exc).__name__}: {exc})",
            fix="check AWS_PROFILE / the source's profile and ~/.aws/config",
            permission=PERMISSION,
        ) from None


def plan_days(today: date, synced_through: date | None, since: date | None = None) -> tuple[date, date]:
    """The days [start, end) a sync reads: everything from the first day of the previous month
    (revised by AWS) to today, plus older days not yet read (from `since`, else from the day after
    `synced_through`). Never older than Cost Explorer keeps."""
    first_of_month = today.replace(day=1)
    revised_from = (first_of_month - timedelta(days=1)).replace(day=1)
    start = revised_from
    if since is not None:
        start = min(start, since)
    elif synced_through is not None:
        start = min(start, synced_through + timedelta(days=1))
    months_back = first_of_month.year * 12 + first_of_month.month - 1 - HISTORY_MONTHS
    start = max(start, date(months_back // 12, months_back % 12 + 1, 1))
    end = today + timedelta(days=1)
    return start, end


class CostExplorer:
    """Reads GPU instance spend from Cost Explorer. `client` is a boto3 `ce` client."""

    def __init__(
        self,
        client: Any,
        *,
        families: Sequence[str],
        tag_key: str | None,
        linked_accounts: Sequence[str] = (),
    ) -> None:
        if not families:
            raise ValueError("no GPU instance families to filter on")
        self.client = client
        self.families = list(families)
        self.tag_key = tag_key
        self.linked_accounts = list(linked_accounts)

    def request(self, start: date, end: date) -> dict[str, Any]:
        """The `GetCostAndUsage` arguments for [start, end) (without a page token)."""
        expressions: list[dict[str, Any]] = [
            {"Dimensions": {"Key": "SERVICE", "Values": [EC2_COMPUTE]}},
            {"Dimensions": {"Key": "INSTANCE_TYPE_FAMILY", "Values": self.families}},
        ]
        if self.linked_accounts:
            expressions.append({"Dimensions": {"Key": "LINKED_ACCOUNT", "Values": self.linked_accounts}})
        first = (
            {"Type": "TAG", "Key": self.tag_key}
            if self.tag_key
            else {"Type": "DIMENSION", "Key": "LINKED_ACCOUNT"}
        )
        return {
            "TimePeriod": {"Start": start.isoformat(), "End": end.isoformat()},
            "Granularity": "DAILY",
            "Metrics": list(METRICS),
            "Filter": {"And": expressions},
            "GroupBy": [first, {"Type": "DIMENSION", "Key": "INSTANCE_TYPE"}],
        }

    def fetch(self, start: date, end: date, on_page: Callable[[int], object] | None = None) -> CeFetch:
        """Every group of every day in [start, end), all pages (`on_page` hears each page's number).
        Raises BillingUnavailable."""
        if not start < end:
            raise ValueError(f"empty window {start}..{end}")
        arguments = self.request(start, end)
        rows: list[CeRow] = []
        requests = retries = 0
        token: str | None = None
        while True:
            page_arguments = dict(arguments, NextPageToken=token) if token else arguments
            answer = self._call(page_arguments)
            requests += 1
            if on_page is not None:
                on_page(requests)
            retries += int(answer.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0)
            rows.extend(self.parse(answer))
            token = answer.get("NextPageToken") or None
            if token is None:
                break
            if requests >= MAX_PAGES:
                raise BillingUnavailable(
                    f"Cost Explorer answered more than {MAX_PAGES} pages for {start}..{end}",
                    fix="sync a shorter window with --since",
                )
        log.info(
            "cost explorer: %s..%s read in %d request(s) ($%s), %d retried, %d row(s)",
            start,
            end - timedelta(days=1),
            requests,
            REQUEST_USD * requests,
            retries,
            len(rows),
        )
        return CeFetch(start=start, end=end, rows=tuple(rows), requests=requests, retries=retries)

    def parse(self, answer: Mapping[str, Any]) -> list[CeRow]:
        """One page's groups as rows (amounts are decimal strings: kept exact)."""
        rows = []
        for result in answer.get("ResultsByTime", []):
            day = date.fromisoformat(result["TimePeriod"]["Start"])
            estimated = bool(result.get("Estimated", False))
            for group in result.get("Groups", []):
                keys = list(group.get("Keys", []))
                metrics = group.get("Metrics", {})
                instance_type = keys[1] if len(keys) > 1 else ""
                rows.append(
                    CeRow(
                        day=day,
                        instance_type=instance_type,
                        tag_value=self._tag_value(keys[0] if keys else ""),
                        amortized=_amount(metrics, "AmortizedCost"),
                        unblended=_amount(metrics, "UnblendedCost"),
                        usage_hours=_hours(metrics),
                        currency=_currency(metrics),
                        estimated=estimated,
                    )
                )
        return rows

    def _tag_value(self, key: str) -> str | None:
        if not self.tag_key:
            return None
        # Cost Explorer names a tag group `key$value`; `key$` holds the usage without the tag.
        _, _, value = key.partition("$")
        return value or None

    def _call(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            answer: dict[str, Any] = self.client.get_cost_and_usage(**arguments)
        except NoCredentialsError:
            raise no_credentials(PERMISSION) from None
        except ClientError as exc:
            raise client_error(exc, PERMISSION, "Cost Explorer") from None
        except BotoCoreError as exc:
            raise BillingUnavailable(
                f"Cost Explorer cannot be reached ({type(exc).__name__})",
                fix="check the network path to AWS (ce.us-east-1.amazonaws.com) and retry",
            ) from None
        return answer

    def check(self) -> str:
        """Doctor's check: one real request for one day with no grouping (it costs $0.01), proving the
        credentials and the permission; returns what it saw. Raises BillingUnavailable."""
        yesterday = date.today() - timedelta(days=1)  # noqa: DTZ011  (Cost Explorer's days are UTC dates)
        self._call(
            {
                "TimePeriod": {"Start": yesterday.isoformat(), "End": (yesterday + timedelta(1)).isoformat()},
                "Granularity": "DAILY",
                "Metrics": ["UnblendedCost"],
            }
        )
        return f"{PERMISSION} allowed (1 request, ${REQUEST_USD})"


def no_credentials(permission: str) -> BillingUnavailable:
    return BillingUnavailable(
        f"no AWS credentials found; the source needs {permission}",
        fix="set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the EnvironmentFile, "
        "or give the host an instance role",
        permission=permission,
    )


def client_error(exc: Any, permission: str, service: str) -> BillingUnavailable:
    """A botocore ClientError as one line a person can act on (AWS's own text is left out: it may
    name the caller's ARN, and never helps more than the permission does)."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if code in _DENIED or "AccessDenied" in code:
        return BillingUnavailable(
            f"AWS denied {permission} ({code})",
            fix=f"grant {permission} to the auditor's IAM role or user (README: Billing, IAM policy)",
            permission=permission,
        )
    if code in _BAD_CREDENTIALS:
        return BillingUnavailable(
            f"AWS rejected the credentials ({code}); the source needs {permission}",
            fix="renew or correct the AWS credentials in the EnvironmentFile",
            permission=permission,
        )
    if code == "DataUnavailableException":
        return BillingUnavailable(
            f"{service} has no data for the window yet ({code})",
            fix="Cost Explorer data arrives up to a day late; a new account needs 24 h after enabling it",
        )
    if code in {"BillExpirationException", "ValidationException", "InvalidNextTokenException"}:
        return BillingUnavailable(f"{service} refused the request ({code})", fix="sync a shorter window")
    return BillingUnavailable(f"{service} failed ({code or type(exc).__name__})", fix="retry later")


def _amount(metrics: Mapping[str, Any], name: str) -> Decimal:
    raw = metrics.get(name, {}).get("Amount", "0")
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise BillingUnavailable(f"Cost Explorer sent a malformed {name} amount {raw!r}") from None
    if not value.is_finite():
        raise BillingUnavailable(f"Cost Explorer sent a malformed {name} amount {raw!r}")
    return value


def _hours(metrics: Mapping[str, Any]) -> Decimal | None:
    usage = metrics.get("UsageQuantity", {})
    unit = str(usage.get("Unit", ""))
    return _amount(metrics, "UsageQuantity") if unit.lower() in {"hrs", "hours", "hour"} else None


def _currency(metrics: Mapping[str, Any]) -> str:
    for name in ("UnblendedCost", "AmortizedCost"):
        unit = metrics.get(name, {}).get("Unit")
        if unit:
            return str(unit)
    return "USD"
