"""The weekly digest: per deployment, the week's utilization, tokens, cost, cost per Mtok, idle cost,
the change against the week before, the API equivalent, and the open recommendations ranked by dollars,
ending with the total at stake (one action per deployment, never more than the deployments cost).

Coverage first: each deployment's observed GPU-hours ÷ billed GPU-hours. A deployment under the
rules' `min_coverage` shows no utilization, tokens, cost per Mtok, idle cost or API figure (they would
describe the few hours seen, not the week); a week under it as a whole is *unknown*, says so, and the
daemon never posts it by itself.

Rendered as text (the terminal) and as Block Kit (Slack), with a chart: each deployment's utilization
by hour of the week (a heat map; grey where nothing was observed), drawn with matplotlib's Agg backend.
Weeks are ISO weeks (`2026-W47`) in the config's time zone.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from auditor.analysis import Bucket, cost_window, merged
from auditor.at_stake import AtStake, at_stake, at_stake_line
from auditor.bills import no_billing_data_line
from auditor.config import Config
from auditor.costing import DeploymentCost
from auditor.errors import UnavailableError
from auditor.gpu_prices import GpuPrice
from auditor.model import Finding
from auditor.prices import ApiPriceCatalog
from auditor.store import Store
from auditor.units import format_share, format_tokens, format_usd
from reports.charts import heatmaps_png
from reports.findings import alternative_lines
from reports.monthly import MAX_YEAR, MIN_YEAR

WEEK_PATTERN = re.compile(r"^(\d{4})-W(\d{2})$")
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MAX_RECOMMENDATIONS = 10


def parse_week(text: str) -> tuple[int, int]:
    """`2026-W47` → (2026, 47); ValueError says how to write it."""
    match = WEEK_PATTERN.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not an ISO week; write it as 2026-W47")
    year, week = int(match.group(1)), int(match.group(2))
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise ValueError(f"{text!r}: the year must be from {MIN_YEAR} to {MAX_YEAR}")
    try:
        date.fromisocalendar(year, week, 1)
    except ValueError:
        raise ValueError(f"{text!r}: {year} has no week {week}") from None
    return year, week


def week_bounds(week: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[Monday 00:00, the next Monday 00:00) of an ISO week, in tz."""
    year, number = parse_week(week)
    monday = date.fromisocalendar(year, number, 1)
    following = monday + timedelta(days=7)
    return (
        datetime(monday.year, monday.month, monday.day, tzinfo=tz),
        datetime(following.year, following.month, following.day, tzinfo=tz),
    )


def week_name(day: date) -> str:
    year, number, _ = day.isocalendar()
    return f"{year}-W{number:02d}"


def last_complete_week(now: datetime, tz: ZoneInfo) -> str:
    """The ISO week that ended most recently before now (in tz)."""
    return week_name(now.astimezone(tz).date() - timedelta(days=7))


@dataclass(frozen=True, slots=True)
class DeploymentWeek:
    name: str
    cost: DeploymentCost
    previous: DeploymentCost | None
    heat: list[list[float | None]] = field(default_factory=list)
    """Utilization by [weekday][hour] (local), None where nothing was observed."""
    min_coverage: float = 0.0

    @property
    def coverage(self) -> float | None:
        """Observed GPU-hours ÷ billed GPU-hours over the week; None when nothing was billed."""
        billed = self.cost.hours.billed
        return None if billed <= 0 else min(1.0, float(self.cost.hours.observed / billed))

    @property
    def known(self) -> bool:
        """Enough of the week was observed for its figures to describe the week."""
        return self.coverage is not None and self.coverage >= self.min_coverage

    @property
    def cost_change(self) -> Decimal | None:
        if self.previous is None or self.previous.cost_usd <= 0 or not self.cost.cost_known:
            return None
        return (self.cost.cost_usd - self.previous.cost_usd) / self.previous.cost_usd

    @property
    def utilization_change(self) -> float | None:
        if self.previous is None or self.previous.utilization is None or self.cost.utilization is None:
            return None
        return self.cost.utilization - self.previous.utilization

    @property
    def tokens_change(self) -> float | None:
        if self.previous is None or self.previous.tokens <= 0:
            return None
        return (self.cost.tokens - self.previous.tokens) / self.previous.tokens


class NoWeekDataError(UnavailableError):
    """Nothing was paid for and nothing observed in the week: a digest of it would invent its figures."""


@dataclass(frozen=True, slots=True)
class Digest:
    week: str
    start: datetime
    end: datetime
    timezone: str
    deployments: list[DeploymentWeek]
    recommendations: list[Finding]
    """Open recommendations with a dollar figure, most dollars first (the first ten)."""
    total_usd: Decimal
    unattributed_usd: Decimal
    at_stake: AtStake
    """The total of every open recommendation (not only the ten shown)."""
    min_coverage: float = 0.0

    @property
    def observed_gpu_h(self) -> Decimal:
        return sum((row.cost.hours.observed for row in self.deployments), Decimal(0))

    @property
    def billed_gpu_h(self) -> Decimal:
        return sum((row.cost.hours.billed for row in self.deployments), Decimal(0))

    @property
    def coverage(self) -> float | None:
        billed = self.billed_gpu_h
        return None if billed <= 0 else min(1.0, float(self.observed_gpu_h / billed))

    @property
    def unknown(self) -> bool:
        """Too little of the week was observed to say anything about it (or nothing was billed)."""
        return self.coverage is None or self.coverage < self.min_coverage


def _heat(buckets: Mapping[int, Bucket], dc: DeploymentCost, tz: ZoneInfo) -> list[list[float | None]]:
    by_hour: dict[tuple[int, int], list[Bucket]] = defaultdict(list)
    for bucket_ts, bucket in buckets.items():
        local = datetime.fromtimestamp(bucket_ts, tz)
        by_hour[(local.weekday(), local.hour)].append(bucket)
    grid: list[list[float | None]] = [[None] * 24 for _ in range(7)]
    for (day, hour), parts in by_hour.items():
        measures = merged(parts).measures(dc.capacity_tokens_per_s)
        grid[day][hour] = getattr(measures, dc.utilization_metric.value)
    return grid


def build_digest(
    config: Config,
    store: Store,
    week: str,
    api_catalog: ApiPriceCatalog,
    gpu_catalog: Sequence[GpuPrice],
    findings: Sequence[Finding],
) -> Digest:
    """The digest of an ISO week; `findings` are the rules' verdicts at the week's end (ranked)."""
    tz = config.tz
    start, end = week_bounds(week, tz)
    this = cost_window(store, config, start, end, api_catalog, gpu_catalog)
    if not this.window.has_data:
        raise NoWeekDataError(
            f"no data for {week}",
            "nothing was observed or billed in it (a week before the first sample, or outside every "
            "deployment's active_from/active_until)",
        )
    before = cost_window(store, config, start - timedelta(days=7), start, api_catalog, gpu_catalog)
    previous = {dc.deployment: dc for dc in before.window.deployments}
    rows = [
        DeploymentWeek(
            name=dc.deployment,
            cost=dc,
            previous=previous.get(dc.deployment),
            heat=_heat(this.buckets[dc.deployment], dc, tz),
            min_coverage=config.rules.min_coverage,
        )
        for dc in this.window.deployments
    ]
    verdicts = [f for f in findings if f.verdict]
    recommendations = [f for f in verdicts if f.usd_per_month is not None]
    recommendations.sort(key=lambda f: f.usd_per_month or 0, reverse=True)
    return Digest(
        week=week,
        start=start,
        end=end,
        timezone=config.timezone,
        deployments=rows,
        recommendations=recommendations[:MAX_RECOMMENDATIONS],
        total_usd=this.window.total_usd,
        unattributed_usd=this.window.unattributed_usd,
        at_stake=at_stake(verdicts),
        min_coverage=config.rules.min_coverage,
    )


# -- rendering -------------------------------------------------------------------------------------


def _change(value: float | Decimal | None, *, points: bool = False) -> str:
    if value is None:
        return "—"
    number = float(value) * 100
    return f"{number:+.1f} pts" if points else f"{number:+.1f}%"


def coverage_text(observed: Decimal, billed: Decimal, share: float | None) -> str:
    return f"{observed:,.1f} of {billed:,.1f} GPU-hours ({format_share(share)})"


def _cost(dc: DeploymentCost) -> str:
    """The week's cost, or "no billing data" for a bill-priced deployment without lines: never $0.00."""
    return format_usd(dc.cost_usd) if dc.cost_known else "— no billing data"


def deployment_lines(row: DeploymentWeek) -> list[tuple[str, str]]:
    dc = row.cost
    observed = ("observed", coverage_text(dc.hours.observed, dc.hours.billed, row.coverage))
    if not row.known:
        return [
            observed,
            ("figures", f"unknown: under {format_share(row.min_coverage)} of the week observed"),
            ("cost", f"{_cost(dc)} ({_change(row.cost_change)})"),
        ]
    cheapest = dc.cheapest_api
    api = "—" if cheapest is None else f"{format_usd(cheapest.usd)} on {cheapest.price.ref}"
    return [
        observed,
        (
            f"utilization ({dc.utilization_metric.value})",
            f"{format_share(dc.utilization)} ({_change(row.utilization_change, points=True)})",
        ),
        ("tokens", f"{format_tokens(dc.tokens)} ({_change(row.tokens_change)})"),
        ("cost", f"{_cost(dc)} ({_change(row.cost_change)})"),
        ("cost per Mtok", format_usd(dc.cost_per_mtok_usd)),
        ("idle cost", format_usd(dc.idle_cost_usd)),
        ("API equivalent", api),
    ]


def _title(digest: Digest) -> str:
    last_day = (digest.end - timedelta(days=1)).date()
    return f"GPU cost digest {digest.week} ({digest.start.date()} – {last_day}, {digest.timezone})"


def coverage_line(digest: Digest) -> str:
    observed = coverage_text(digest.observed_gpu_h, digest.billed_gpu_h, digest.coverage)
    line = f"Observed: {observed}"
    if digest.unknown:
        line += (
            f". This week is unknown: under {format_share(digest.min_coverage)} of its GPU time was seen, "
            "so it gives no utilization, tokens, cost per Mtok, idle cost or API figure"
        )
    return line


def recommendation_line(finding: Finding) -> str:
    share = None if finding.window is None else finding.window.coverage
    observed = "" if share is None else f" (observed {format_share(share)})"
    return f"{format_usd(finding.usd_per_month)}/month  [{', '.join(finding.rules)}] {finding.text}{observed}"


def digest_text(digest: Digest) -> str:
    lines = [_title(digest), ""]
    lines.append(coverage_line(digest))
    lines.append(f"Total billed: {format_usd(digest.total_usd)}")
    if digest.unattributed_usd:
        lines.append(f"Unattributed: {format_usd(digest.unattributed_usd)}")
    unbilled = [row.name for row in digest.deployments if not row.cost.cost_known]
    if unbilled:
        lines.append(
            no_billing_data_line(unbilled, digest.week, "auditor billing sync` or `auditor billing import")
        )
    for row in digest.deployments:
        lines += ["", row.name]
        lines += [f"  {label:<28} {value}" for label, value in deployment_lines(row)]
    lines += ["", "Open recommendations (most dollars first, one action per deployment):"]
    if not digest.recommendations:
        lines.append("  none")
    for finding in digest.recommendations:
        lines.append(f"  {recommendation_line(finding)}")
        lines += [f"      {line}" for line in alternative_lines(finding)]
    lines += ["", at_stake_line(digest.at_stake)]
    lines += ["", "Changes are against the week before. More: auditor rules check; auditor report"]
    return "\n".join(lines)


def digest_blocks(digest: Digest) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _title(digest)[:150]}},
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"*{coverage_line(digest)}*\n*Total billed:* {format_usd(digest.total_usd)}"[:3000],
            },
        },
    ]
    for row in digest.deployments[:20]:
        fields = [{"type": "mrkdwn", "text": f"*{label}*\n{value}"} for label, value in deployment_lines(row)]
        blocks.append({"type": "divider"})
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{row.name}*"}, "fields": fields}
        )
    text = (
        "\n".join(
            f"• {recommendation_line(f)}" + "".join(f"\n    _{line}_" for line in alternative_lines(f))
            for f in digest.recommendations
        )
        or "No open recommendation."
    )
    text += f"\n{at_stake_line(digest.at_stake)}"
    blocks.append({"type": "divider"})
    blocks.append(
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Open recommendations*\n{text}"[:3000]}}
    )
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": "Changes are against the week before. "
                    f"More: `auditor digest --week {digest.week}`",
                }
            ],
        }
    )
    return blocks


def heatmap_png(digest: Digest) -> bytes | None:
    """Each deployment's utilization by hour of the week, as a PNG (the report's chart module draws it);
    None without deployments."""
    if not digest.deployments:
        return None
    rows = [
        (f"{row.name}: utilization by hour ({row.cost.utilization_metric.value}, %)", row.heat)
        for row in digest.deployments[:8]
    ]
    return heatmaps_png(rows, f"{digest.week} ({digest.timezone}); grey: not observed")
