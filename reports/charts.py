"""The report's and the digest's charts: one module, one look, one basis each.

The report inlines each chart as SVG written by `reports.svg` (text kept as text, no font or file
referenced, so the HTML stays self-contained, prints crisply and stays small; about a millisecond a
chart, where matplotlib took 0.15 s and half a second to import). The digest gets a PNG of the same
heat map for Slack, drawn with matplotlib. Every chart says its basis in its title: the daily cost is
*TCO* (raw compute plus overheads, as the savings are), cost per Mtok is TCO over the observed hours.
Tick labels are 11 px or more at the size the report shows them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from reports.monthly import WEEKDAYS, DayFigures, DeploymentMonth
from reports.svg import Series, heat_chart, xy_chart

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TICK_PT = 11
"""Tick labels, in points: an SVG point is a CSS pixel at the report's width."""
TITLE_PT = 12
COST = "#1f4e79"
IDLE = "#b2182b"
API_COLORS = ("#d95f02", "#7570b3", "#1b9e77", "#e7298a", "#66a61e")
TCO_BASIS = "basis: TCO (raw compute + overheads)"
DAY = "day of the month"


def _figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.figure import Figure  # a large import: only for the digest's PNG

    return Figure(figsize=(width_in, height_in), layout="constrained")


def _days(d: DeploymentMonth) -> list[int]:
    return [day.day.day for day in d.days]


def day_tco_usd(d: DeploymentMonth, day: DayFigures) -> Decimal:
    """A day's TCO: its cost plus the month's overheads in proportion to its paid-for GPU-hours."""
    billed = d.cost.hours.billed
    share = day.billed_gpu_hours / billed if billed > 0 else Decimal(0)
    return day.cost_usd + d.cost.overhead_usd * share


def _day_tco_per_mtok(d: DeploymentMonth, day: DayFigures) -> float | None:
    if not day.tokens_known or day.tokens <= 0 or day.coverage is None:
        return None
    return float(day_tco_usd(d, day) * day.coverage * 1_000_000 / day.tokens)


def _api_color(i: int) -> str:
    return API_COLORS[i % len(API_COLORS)]


def _float(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)


def daily_cost_chart(d: DeploymentMonth) -> str:
    series = [Series("bars", [float(day_tco_usd(d, day)) for day in d.days], COST, "self-hosted (TCO)")]
    for i, c in enumerate(d.cost.apis):
        values = [_float(dict(day.api_equivalents).get(c.price.ref)) for day in d.days]
        series.append(Series("line", values, _api_color(i), f"{c.price.ref} (same tokens)"))
    return xy_chart(
        f"chart-daily-{d.name}",
        f"Daily cost against the API equivalent\n{TCO_BASIS}",
        _days(d),
        series,
        y_label="USD per day",
        x_label=DAY,
    )


def heatmap_chart(d: DeploymentMonth) -> str:
    return heat_chart(
        f"chart-heatmap-{d.name}",
        f"Utilization by hour and weekday\nmeasure: {d.cost.utilization_metric.value}, %",
        d.heatmap,
        row_labels=WEEKDAYS,
        x_label=f"hour of day ({d.cost.tz.key}); grey: not observed",
    )


def cost_per_mtok_chart(d: DeploymentMonth) -> str:
    values = [_day_tco_per_mtok(d, day) for day in d.days]
    series = [Series("line", values, COST, "self-hosted (TCO)")]
    for i, c in enumerate(d.cost.apis):
        if c.blended_usd_per_token is not None:
            level = float(c.blended_usd_per_token * 1_000_000)
            series.append(Series("level", [level], _api_color(i), f"{c.price.ref} at this mix"))
    return xy_chart(
        f"chart-mtok-{d.name}",
        f"Cost per million tokens by day (log scale)\n{TCO_BASIS}, observed hours",
        _days(d),
        series,
        y_label="USD per Mtok",
        x_label=DAY,
        # Plain numbers on a log scale, as long as any day has a positive cost per Mtok.
        log=any(v is not None and v > 0 for v in values),
    )


def idle_share_chart(d: DeploymentMonth) -> str:
    shares = [None if day.idle_share is None else float(day.idle_share) * 100 for day in d.days]
    return xy_chart(
        f"chart-idle-{d.name}",
        "Idle share of each day's cost\nbasis: raw compute (the cost lines)",
        _days(d),
        [Series("bars", shares, IDLE)],
        y_label="% of the day's cost",
        x_label=DAY,
        y_range=(0, 100),
    )


def deployment_charts(d: DeploymentMonth) -> list[str]:
    return [daily_cost_chart(d), heatmap_chart(d), cost_per_mtok_chart(d), idle_share_chart(d)]


def _heat(ax: Axes, grid: Sequence[Sequence[float | None]], title: str) -> Any:
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="#cccccc")
    values = [[float("nan") if v is None else v * 100 for v in row] for row in grid]
    image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=0, vmax=100, interpolation="nearest")
    ax.set_title(title, fontsize=TITLE_PT, loc="left", fontweight="bold")
    ax.set_yticks(range(7), WEEKDAYS, fontsize=TICK_PT)
    ax.set_xticks(range(0, 24, 3), [f"{h:02d}" for h in range(0, 24, 3)], fontsize=TICK_PT)
    return image


def heatmaps_png(rows: Sequence[tuple[str, Sequence[Sequence[float | None]]]], title: str) -> bytes:
    """Several utilization heat maps (weekday × hour, 0–1) stacked in one PNG: the digest's chart."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = _figure(10, 2.2 * len(rows) + 0.7)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), 1, squeeze=False)
    image = None
    for ax, (label, grid) in zip(axes[:, 0], rows, strict=True):
        image = _heat(ax, grid, label)
    if image is not None:
        bar = figure.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.8)
        bar.ax.tick_params(labelsize=TICK_PT)
    figure.suptitle(title, fontsize=TITLE_PT)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
