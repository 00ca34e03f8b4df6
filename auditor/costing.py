"""Costing: pure functions from roll-ups, cost lines and prices to the figures the design defines.

Money is `Decimal`, summed exactly and never rounded here (display rounds). GPU-hours are
quantized to a microhour first, so that every figure derived from them can be recomputed
exactly from the hours a report prints.

    cost_per_mtok_usd        = cost_usd / tokens × 1e6
    idle_cost_usd            = cost_usd × idle_gpu_hours / billed_gpu_hours
    api_equivalent_usd       = prompt_tokens × input_price + generation_tokens × output_price
    blended_price_per_token  = api_equivalent_usd / (prompt_tokens + generation_tokens)
    breakeven_utilization    = hourly_cost_usd / (capacity_tokens_per_s × 3600 × blended_price_per_token)
    breakeven_tokens_per_mo  = monthly_cost_usd / blended_price_per_token
    saving_usd               = TCO of the observed hours − API cost of their tokens (`monthly_saving`)

Hours are real: elapsed time between two instants (daylight saving time included), and a "month"
is the calendar month's own hours in the configured zone (744, 745 or 743 for an October), never a
fixed 730. Tokens are known only for the hours an inference server was observed: $/Mtok and every
API comparison use those hours and their share of the cost; the rest is shown as a gap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from auditor.model import UtilizationMetric
from auditor.prices import ApiPrice

SECONDS_PER_HOUR = Decimal(3600)
MICROHOUR = Decimal("0.000001")
MEASURED_CAPACITY_MINUTES = 15
"""Minutes of a sustained peak (measured capacity). The quarter-hour tier stores each quarter-hour's
best run of this many minutes: changing it needs the tier rebuilt (`Store.rebuild_tiers`)."""


def run_totals(
    minutes: Iterable[tuple[int, int]], window: int = MEASURED_CAPACITY_MINUTES
) -> Iterator[tuple[int, int]]:
    """(last minute, tokens) of every run of `window` consecutive observed minutes, from (minute_ts,
    tokens) pairs in time order: the candidates for the sustained peak."""
    run: deque[int] = deque(maxlen=window)
    total = 0
    previous_ts: int | None = None
    for minute_ts, tokens in minutes:
        if previous_ts is not None and minute_ts != previous_ts + 60:
            run.clear()
            total = 0
        if len(run) == window:
            total -= run[0]
        run.append(tokens)
        total += tokens
        previous_ts = minute_ts
        if len(run) == window:
            yield minute_ts, total


def hours_from_seconds(seconds: float) -> Decimal:
    """Seconds → hours, quantized to a microhour."""
    return (Decimal(repr(float(seconds))) / SECONDS_PER_HOUR).quantize(MICROHOUR)


_MICROSECOND = timedelta(microseconds=1)


def elapsed_s(start: datetime, end: datetime) -> Decimal:
    """Seconds between two instants, exactly (to the microsecond), whatever zones they are written in.

    Python subtracts two datetimes of the same zone as wall clocks, ignoring daylight saving time:
    October in Europe/Berlin would have 744 hours instead of 745. Here both are taken to UTC first."""
    micro = (end.astimezone(UTC) - start.astimezone(UTC)) // _MICROSECOND
    return Decimal(micro) / 1_000_000


def elapsed_hours(start: datetime, end: datetime) -> Decimal:
    """Real hours between two instants, quantized to a microhour."""
    return (elapsed_s(start, end) / SECONDS_PER_HOUR).quantize(MICROHOUR)


def calendar_month(instant: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The calendar month (in tz) holding `instant`: [its first midnight, the next month's)."""
    local = instant.astimezone(tz)
    start = datetime(local.year, local.month, 1, tzinfo=tz)
    following = datetime(local.year + local.month // 12, local.month % 12 + 1, 1, tzinfo=tz)
    return start, following


def month_hours(instant: datetime, tz: ZoneInfo) -> Decimal:
    """The real hours of the calendar month holding `instant`: 745 for October in Europe/Berlin."""
    return elapsed_hours(*calendar_month(instant, tz))


def sum_usd(amounts: Iterable[Decimal]) -> Decimal:
    return sum(amounts, Decimal(0))


def cost_per_mtok_usd(cost_usd: Decimal, tokens: int) -> Decimal | None:
    """USD per million tokens; None when nothing was served (the cost per token is undefined, not zero)."""
    if tokens <= 0:
        return None
    return cost_usd * 1_000_000 / tokens


def api_cost_usd(prompt_tokens: int, generation_tokens: int, price: ApiPrice) -> Decimal:
    """What the same tokens would have cost on a managed API."""
    return (prompt_tokens * price.input_mtok_usd + generation_tokens * price.output_mtok_usd) / 1_000_000


def blended_price_per_token(prompt_tokens: int, generation_tokens: int, price: ApiPrice) -> Decimal | None:
    """The API's price per token at this prompt/generation mix; None without any tokens (no mix known)."""
    tokens = prompt_tokens + generation_tokens
    if tokens <= 0:
        return None
    return api_cost_usd(prompt_tokens, generation_tokens, price) / tokens


def breakeven_tokens_per_month(
    monthly_cost_usd: Decimal, blended_usd_per_token: Decimal | None
) -> Decimal | None:
    """Monthly tokens at which the API would cost as much as self-hosting."""
    if blended_usd_per_token is None or blended_usd_per_token <= 0:
        return None
    return monthly_cost_usd / blended_usd_per_token


def breakeven_utilization(
    hourly_cost_usd: Decimal, capacity_tokens_per_s: float | None, blended_usd_per_token: Decimal | None
) -> Decimal | None:
    """The share of capacity that must be used for self-hosting to cost what the API would.

    Above 1 means it cannot break even at any load."""
    if capacity_tokens_per_s is None or capacity_tokens_per_s <= 0:
        return None
    if blended_usd_per_token is None or blended_usd_per_token <= 0:
        return None
    capacity = Decimal(repr(float(capacity_tokens_per_s)))
    return hourly_cost_usd / (capacity * SECONDS_PER_HOUR * blended_usd_per_token)


def idle_cost_usd(cost_usd: Decimal, idle_gpu_hours: Decimal, billed_gpu_hours: Decimal) -> Decimal | None:
    if billed_gpu_hours <= 0:
        return None
    return cost_usd * min(idle_gpu_hours, billed_gpu_hours) / billed_gpu_hours


def prorate_monthly_usd(amount_usd_month: Decimal, start: datetime, end: datetime, tz: ZoneInfo) -> Decimal:
    """A monthly amount over [start, end): each calendar month (in tz) contributes its share of the
    amount by the share of its time inside the window, so a whole calendar month gives the amount exactly."""
    if end <= start or amount_usd_month == 0:
        return Decimal(0)
    total = Decimal(0)
    local_start = start.astimezone(tz)
    month_start = local_start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    while _seconds_between(month_start, end) > 0:
        next_month = (month_start + timedelta(days=32)).replace(day=1)
        overlap_s = _seconds_between(max(start, month_start), min(end, next_month))
        if overlap_s > 0:
            month_s = _seconds_between(month_start, next_month)
            total += amount_usd_month * Decimal(overlap_s) / Decimal(month_s)
        month_start = next_month
    return total


def _seconds_between(earlier: datetime, later: datetime) -> int:
    # In UTC: Python subtracts two datetimes of the same zone as wall clocks, ignoring DST.
    return int((later.astimezone(UTC) - earlier.astimezone(UTC)).total_seconds())


@dataclass(frozen=True, slots=True)
class GpuHours:
    """The window's GPU-hours: idle + busy + unknown = billed (when no more was observed than billed)."""

    billed: Decimal
    observed: Decimal
    idle: Decimal

    @property
    def busy(self) -> Decimal:
        return self.observed - self.idle

    @property
    def unknown(self) -> Decimal:
        return max(self.billed - self.observed, Decimal(0))


@dataclass(frozen=True, slots=True)
class UtilizationMeasures:
    """The design's four measures over a window (0–1), None where the source was absent."""

    gpu_util: float | None
    sm_active: float | None
    request_busy: float | None
    throughput_util: float | None

    def pick(self, metric: UtilizationMetric) -> tuple[UtilizationMetric, float | None]:
        """The measure the config asks for; `auto` is sm_active where known, else gpu_util."""
        if metric is UtilizationMetric.AUTO:
            if self.sm_active is not None:
                return UtilizationMetric.SM_ACTIVE, self.sm_active
            return UtilizationMetric.GPU_UTIL, self.gpu_util
        return metric, getattr(self, metric.value)


def served_tokens_known(prompt_tokens: int, generation_tokens: int, measures: UtilizationMeasures) -> bool:
    """Zero tokens is a fact only where an inference server was observed; elsewhere the count is unknown,
    and so is what the same tokens would cost on an API (never $0: that would make every API look free)."""
    return prompt_tokens + generation_tokens > 0 or measures.request_busy is not None


@dataclass(frozen=True, slots=True)
class ApiComparison:
    """The same tokens on one managed API, against the TCO of the hours they were served in."""

    price: ApiPrice
    usd: Decimal
    """The API cost of the observed tokens."""
    savings_usd: Decimal
    """TCO of the observed hours − `usd`: what moving would have saved over them (negative: cost more).
    Shown to people only through `monthly_saving`, the one savings figure."""
    blended_usd_per_token: Decimal | None
    breakeven_tokens_per_month: Decimal | None
    breakeven_utilization: Decimal | None


def compare_apis(
    prompt_tokens: int,
    generation_tokens: int,
    tco_usd: Decimal,
    monthly_cost_usd: Decimal,
    hourly_cost_usd: Decimal,
    capacity_tokens_per_s: float | None,
    prices: Sequence[ApiPrice],
) -> list[ApiComparison]:
    """`tco_usd`: the TCO of the hours the tokens were served in; `monthly_cost_usd`: a calendar month's."""
    comparisons = []
    for price in prices:
        usd = api_cost_usd(prompt_tokens, generation_tokens, price)
        blended = blended_price_per_token(prompt_tokens, generation_tokens, price)
        comparisons.append(
            ApiComparison(
                price=price,
                usd=usd,
                savings_usd=tco_usd - usd,
                blended_usd_per_token=blended,
                breakeven_tokens_per_month=breakeven_tokens_per_month(monthly_cost_usd, blended),
                breakeven_utilization=breakeven_utilization(hourly_cost_usd, capacity_tokens_per_s, blended),
            )
        )
    return comparisons


@dataclass(frozen=True, slots=True)
class DeploymentCost:
    """Everything the design asks of one deployment over one window."""

    deployment: str
    start: datetime
    end: datetime
    tz: ZoneInfo
    active_start: datetime | None
    """The part of the window inside the deployment's active period (GPUs paid for); None: none of it."""
    active_end: datetime | None
    cost_usd: Decimal
    """Raw compute: billed cost attributed to the deployment (0 with `cost_known` False: no billing data)."""
    cost_known: bool
    """False for a bill-priced deployment with no lines in the window: no billing data, not $0."""
    overhead_usd: Decimal
    hours: GpuHours
    measures: UtilizationMeasures
    utilization_metric: UtilizationMetric
    utilization: float | None
    prompt_tokens: int
    generation_tokens: int
    capacity_tokens_per_s: float | None
    capacity_source: str | None
    """`configured`, `measured` (sustained peak, a lower bound), or None."""
    apis: list[ApiComparison] = field(default_factory=list)
    estimated: bool = False
    """Some cost line is an estimate or list price, not the final bill."""
    prefill_s: float | None = None
    """Servers' prefill seconds in the window (vLLM's phase histograms); None: not exposed."""
    decode_s: float | None = None

    @property
    def tco_usd(self) -> Decimal:
        return self.cost_usd + self.overhead_usd

    @property
    def tokens_known(self) -> bool:
        return served_tokens_known(self.prompt_tokens, self.generation_tokens, self.measures)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.generation_tokens

    @property
    def window_hours(self) -> Decimal:
        """Real hours of the window (DST-aware)."""
        return elapsed_hours(self.start, self.end)

    @property
    def active_hours(self) -> Decimal:
        """Real hours of the window inside the active period (exact: a rate divides by them)."""
        if self.active_start is None or self.active_end is None:
            return Decimal(0)
        return elapsed_s(self.active_start, self.active_end) / SECONDS_PER_HOUR

    @property
    def month_hours(self) -> Decimal:
        """Real hours of the calendar month holding the window's last instant: what "a month" means."""
        return month_hours(self.end - _MICROSECOND, self.tz)

    @property
    def coverage(self) -> Decimal | None:
        """Observed GPU-hours ÷ the GPU-hours paid for (1 at most); None where none were paid for."""
        if self.hours.billed <= 0:
            return None
        return min(self.hours.observed / self.hours.billed, Decimal(1))

    @property
    def observed_hours(self) -> Decimal:
        """Active hours with data: the hours token figures and API comparisons stand on."""
        return self.active_hours * (self.coverage or Decimal(0))

    @property
    def observed_cost_usd(self) -> Decimal:
        """The cost of the observed hours (raw compute): $/Mtok divides this by the tokens."""
        return self.cost_usd * (self.coverage or Decimal(0))

    @property
    def observed_tco_usd(self) -> Decimal:
        return self.tco_usd * (self.coverage or Decimal(0))

    @property
    def unobserved_cost_usd(self) -> Decimal:
        """Cost of paid-for hours without data: still paid, but their tokens are unknown (the gap)."""
        return self.cost_usd - self.observed_cost_usd

    @property
    def cost_per_mtok_usd(self) -> Decimal | None:
        if not self.cost_known:
            return None  # no billing data: unknown, never $0/Mtok
        return cost_per_mtok_usd(self.observed_cost_usd, self.tokens)

    @property
    def cost_per_generated_mtok_usd(self) -> Decimal | None:
        if not self.cost_known:
            return None
        return cost_per_mtok_usd(self.observed_cost_usd, self.generation_tokens)

    @property
    def tco_per_mtok_usd(self) -> Decimal | None:
        if not self.cost_known:
            return None
        return cost_per_mtok_usd(self.observed_tco_usd, self.tokens)

    @property
    def idle_cost_usd(self) -> Decimal | None:
        if not self.cost_known:
            return None
        return idle_cost_usd(self.cost_usd, self.hours.idle, self.hours.billed)

    @property
    def usage_cost_usd(self) -> Decimal | None:
        """The *usage* basis: the busy GPU-hours' share of the cost, what the same traffic would cost if
        consolidated onto fully used GPUs (OpenCost's and llm-d's usage basis). The *allocation* basis is
        the whole bill, idle included: `observed_cost_usd`. API comparisons and savings use allocation."""
        if self.hours.billed <= 0 or not self.cost_known:
            return None
        return self.cost_usd * min(self.hours.busy, self.hours.billed) / self.hours.billed

    @property
    def usage_cost_per_mtok_usd(self) -> Decimal | None:
        usage = self.usage_cost_usd
        return None if usage is None else cost_per_mtok_usd(usage, self.tokens)

    @property
    def cheapest_api(self) -> ApiComparison | None:
        return min(self.apis, key=lambda c: c.usd) if self.apis else None

    @property
    def is_calendar_month(self) -> bool:
        """The window is a calendar month in the configured zone, whole or so far."""
        start, following = calendar_month(self.start, self.tz)
        return self.start.astimezone(UTC) == start.astimezone(UTC) and self.end <= following

    @property
    def month_to_date(self) -> bool:
        following = calendar_month(self.start, self.tz)[1]
        return self.is_calendar_month and self.end < following


@dataclass(frozen=True, slots=True)
class TokenSplit:
    """Cost per million input and output tokens, on one cost basis."""

    basis: str
    """`allocation` (the whole bill, idle included) or `usage` (the busy hours' share)."""
    input_mtok_usd: Decimal | None
    output_mtok_usd: Decimal | None
    method: str
    """How the cost was split between the directions: by measured prefill/decode time, or by the
    compared API's input/output price ratio (no timing measured)."""


def split_by_direction(
    cost_usd: Decimal,
    prompt_tokens: int,
    generation_tokens: int,
    *,
    basis: str,
    price: ApiPrice | None = None,
    prefill_s: float | None = None,
    decode_s: float | None = None,
) -> TokenSplit:
    """Split a cost between input (prompt) and output (generated) tokens, then per million of each.

    With the server's prefill and decode time (vLLM's `request_prefill_time_seconds` and
    `request_decode_time_seconds` histogram sums), each direction bears the cost of its share of
    the time; otherwise the compared API's price ratio apportions it (the market's view of what each
    direction costs to serve), and the method says so. The two parts sum to `cost_usd`."""
    if prefill_s is not None and decode_s is not None and prefill_s + decode_s > 0:
        share = Decimal(repr(prefill_s)) / (Decimal(repr(prefill_s)) + Decimal(repr(decode_s)))
        method = "measured prefill/decode time"
    elif (
        price is not None
        and prompt_tokens * price.input_mtok_usd + generation_tokens * price.output_mtok_usd > 0
    ):
        weighted_in = prompt_tokens * price.input_mtok_usd
        share = weighted_in / (weighted_in + generation_tokens * price.output_mtok_usd)
        method = f"{price.ref}'s input/output price ratio (no prefill/decode timing measured)"
    else:
        return TokenSplit(basis, None, None, "no split: no timing and no API price")
    return TokenSplit(
        basis=basis,
        input_mtok_usd=cost_per_mtok_usd(cost_usd * share, prompt_tokens),
        output_mtok_usd=cost_per_mtok_usd(cost_usd * (1 - share), generation_tokens),
        method=method,
    )


def token_splits(dc: DeploymentCost) -> list[TokenSplit]:
    """$/Mtok split by direction on both bases (allocation, then usage), for the report: by the window's
    measured prefill/decode time where the servers exposed it, else the cheapest API's price ratio."""
    cheapest = dc.cheapest_api
    price = cheapest.price if cheapest else None
    if not dc.cost_known:
        return []  # no billing data: nothing to split
    bases = [("allocation", dc.observed_cost_usd), ("usage", dc.usage_cost_usd)]
    return [
        split_by_direction(
            cost,
            dc.prompt_tokens,
            dc.generation_tokens,
            basis=basis,
            price=price,
            prefill_s=dc.prefill_s,
            decode_s=dc.decode_s,
        )
        for basis, cost in bases
        if cost is not None
    ]


@dataclass(frozen=True, slots=True)
class Saving:
    """The one savings figure: what moving a deployment to one API saves (negative: would cost)."""

    usd: Decimal
    api: ApiPrice
    basis: str
    """What the figure is over: `2026-10`, `2026-10 so far`, or `a month at the rate of …`."""
    per_month: bool
    """True when projected to a calendar month ("/month"); False for a calendar month's own figure."""


def _span_label(seconds: Decimal) -> str:
    """A window's length for a label, possessive, to two decimals in the largest unit it fills:
    `7 days'`, `7.01 days'` (a rule window placed on a quarter-hour where the minutes are gone),
    `5.77 hours'`, `1 minute's`. The figure beside it is exact."""
    unit_s, unit = next(((s, u) for s, u in ((86400, "day"), (3600, "hour")) if seconds >= s), (60, "minute"))
    count = (seconds / unit_s).quantize(Decimal("0.01")).normalize()
    return f"{count:f} {unit}'s" if count == 1 else f"{count:f} {unit}s'"


def monthly_saving(dc: DeploymentCost, comparison: ApiComparison) -> Saving:
    """THE savings figure, defined once: TCO minus the API cost of the same tokens, over the hours
    whose tokens are known. For a calendar-month window it is that month's figure (so far, for a month
    in progress); for any other window it is projected to a calendar month of real hours at the
    window's rate, and says so. Report, rules, digest, JSON and Slack all print this."""
    local_end = (dc.end - _MICROSECOND).astimezone(dc.tz)
    if dc.is_calendar_month:
        label = f"{local_end:%Y-%m}" + (" so far" if dc.month_to_date else "")
        return Saving(usd=comparison.savings_usd, api=comparison.price, basis=label, per_month=False)
    observed = dc.observed_hours
    usd = comparison.savings_usd * dc.month_hours / observed if observed > 0 else Decimal(0)
    label = (
        f"at the last {_span_label(elapsed_s(dc.start, dc.end))} rate"
        f" (to {dc.end.astimezone(dc.tz):%Y-%m-%d %H:%M}),"
        f" over a {dc.month_hours.normalize():f}-hour month"
    )
    return Saving(usd=usd, api=comparison.price, basis=label, per_month=True)


@dataclass(frozen=True, slots=True)
class WhatIf:
    """`auditor breakeven`: a month of self-hosting against APIs, from volumes and a GPU price alone."""

    prompt_tokens: int
    generation_tokens: int
    gpus: int
    gpu_hourly_usd: Decimal
    hours: Decimal
    overhead_usd_month: Decimal
    capacity_tokens_per_s: float | None

    @property
    def monthly_usd(self) -> Decimal:
        return self.gpu_hourly_usd * self.gpus * self.hours

    @property
    def monthly_tco_usd(self) -> Decimal:
        return self.monthly_usd + self.overhead_usd_month

    @property
    def hourly_tco_usd(self) -> Decimal:
        return self.monthly_tco_usd / self.hours

    @property
    def utilization(self) -> Decimal | None:
        """The share of capacity these volumes would use."""
        if not self.capacity_tokens_per_s or self.hours <= 0:
            return None
        capacity = Decimal(repr(float(self.capacity_tokens_per_s)))
        return (self.prompt_tokens + self.generation_tokens) / (capacity * SECONDS_PER_HOUR * self.hours)

    def compare(self, prices: Sequence[ApiPrice]) -> list[ApiComparison]:
        return compare_apis(
            self.prompt_tokens,
            self.generation_tokens,
            self.monthly_tco_usd,
            self.monthly_tco_usd,
            self.hourly_tco_usd,
            self.capacity_tokens_per_s,
            prices,
        )


def day_hours(day: date, tz: ZoneInfo) -> Decimal:
    """Hours in a calendar day in tz: 23 or 25 on the days daylight saving time changes."""
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    following = day + timedelta(days=1)
    end = datetime(following.year, following.month, following.day, tzinfo=tz)
    return Decimal(_seconds_between(start, end)) / SECONDS_PER_HOUR
