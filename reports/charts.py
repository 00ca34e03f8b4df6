"""The report's and the digest's charts, drawn with matplotlib: one module, one look, one basis each.

The report inlines each chart as SVG (text kept as text, no font or file referenced, so the HTML
stays self-contained, prints crisply and stays small); the digest gets a PNG of the same heat map
for Slack. Every chart says its basis in its title: the daily cost is *TCO* (raw compute plus
overheads, as the savings are), cost per Mtok is TCO over the observed hours. Tick labels are 11 px
or more at the size the report shows them.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from reports.monthly import WEEKDAYS, DayFigures, DeploymentMonth

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TICK_PT = 11
"""Tick labels, in points: an SVG point is a CSS pixel at the report's width."""
TITLE_PT = 12
WIDTH_IN, HEIGHT_IN = 7.2, 4.2
COST = "#1f4e79"
IDLE = "#b2182b"
API_COLORS = ("#d95f02", "#7570b3", "#1b9e77", "#e7298a", "#66a61e")
TCO_BASIS = "basis: TCO (raw compute + overheads)"


def _figure(width_in: float = WIDTH_IN, height_in: float = HEIGHT_IN) -> Figure:
    from matplotlib.figure import Figure  # a large import: only when drawing

    return Figure(figsize=(width_in, height_in), layout="constrained")


def _style(ax: Axes, title: str, y_label: str) -> None:
    ax.set_title(title, fontsize=TITLE_PT, loc="left", fontweight="bold")
    ax.set_ylabel(y_label, fontsize=TICK_PT)
    ax.tick_params(which="both", labelsize=TICK_PT)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="y", color="#e3e7eb", linewidth=0.8)
    ax.set_axisbelow(True)


def _legend(ax: Axes) -> None:
    ax.legend(fontsize=TICK_PT, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)


def _svg(figure: Figure, chart_id: str) -> str:
    from matplotlib import rc_context
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    FigureCanvasSVG(figure)
    buffer = io.StringIO()
    # Text as text (searchable, small), no metadata date (the same report gives the same bytes).
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": chart_id}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    # Nothing that names another address: no RDF metadata block, no namespaces it would need.
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)
    text = re.sub(r' xmlns:(dc|cc|rdf)="[^"]*"', "", text)
    text = re.sub(r'<svg ([^>]*?)width="[^"]*" height="[^"]*"', r"<svg \1", text, count=1)
    return text.replace("<svg ", f'<svg id="{chart_id}" class="chart" role="img" ', 1)


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


def daily_cost_chart(d: DeploymentMonth) -> str:
    figure = _figure()
    ax = figure.subplots()
    x = _days(d)
    ax.bar(x, [float(day_tco_usd(d, day)) for day in d.days], color=COST, label="self-hosted (TCO)")
    for i, c in enumerate(d.cost.apis):
        values = [dict(day.api_equivalents).get(c.price.ref) for day in d.days]
        ax.plot(
            x,
            [float("nan") if v is None else float(v) for v in values],
            color=API_COLORS[i % len(API_COLORS)],
            marker="o",
            markersize=3,
            label=f"{c.price.ref} (same tokens)",
        )
    _style(ax, f"Daily cost against the API equivalent\n{TCO_BASIS}", "USD per day")
    ax.set_xlabel("day of the month", fontsize=TICK_PT)
    _legend(ax)
    return _svg(figure, f"chart-daily-{d.name}")


def _heat(ax: Axes, grid: Sequence[Sequence[float | None]], title: str) -> Any:
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="#cccccc")
    values = [[float("nan") if v is None else v * 100 for v in row] for row in grid]
    image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=0, vmax=100, interpolation="nearest")
    ax.set_title(title, fontsize=TITLE_PT, loc="left", fontweight="bold")
    ax.set_yticks(range(7), WEEKDAYS, fontsize=TICK_PT)
    ax.set_xticks(range(0, 24, 3), [f"{h:02d}" for h in range(0, 24, 3)], fontsize=TICK_PT)
    return image


def heatmap_chart(d: DeploymentMonth) -> str:
    figure = _figure()
    ax = figure.subplots()
    image = _heat(
        ax, d.heatmap, f"Utilization by hour and weekday\nmeasure: {d.cost.utilization_metric.value}, %"
    )
    ax.set_xlabel(f"hour of day ({d.cost.tz.key}); grey: not observed", fontsize=TICK_PT)
    bar = figure.colorbar(image, ax=ax, shrink=0.9)
    bar.ax.tick_params(labelsize=TICK_PT)
    return _svg(figure, f"chart-heatmap-{d.name}")


def cost_per_mtok_chart(d: DeploymentMonth) -> str:
    figure = _figure()
    ax = figure.subplots()
    values = [_day_tco_per_mtok(d, day) for day in d.days]
    ax.plot(
        _days(d),
        [float("nan") if v is None else v for v in values],
        color=COST,
        marker="o",
        markersize=3,
        label="self-hosted (TCO)",
    )
    for i, c in enumerate(d.cost.apis):
        if c.blended_usd_per_token is not None:
            ax.axhline(
                float(c.blended_usd_per_token * 1_000_000),
                color=API_COLORS[i % len(API_COLORS)],
                linestyle="--",
                label=f"{c.price.ref} at this mix",
            )
    if any(v is not None and v > 0 for v in values):
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        # Plain numbers, not 10^x: a superscript would print at 70% of the tick size.
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda _value, _pos: ""))
    _style(ax, f"Cost per million tokens by day (log scale)\n{TCO_BASIS}, observed hours", "USD per Mtok")
    ax.set_xlabel("day of the month", fontsize=TICK_PT)
    _legend(ax)
    return _svg(figure, f"chart-mtok-{d.name}")


def idle_share_chart(d: DeploymentMonth) -> str:
    figure = _figure()
    ax = figure.subplots()
    shares = [float("nan") if day.idle_share is None else float(day.idle_share) * 100 for day in d.days]
    ax.bar(_days(d), shares, color=IDLE)
    ax.set_ylim(0, 100)
    _style(ax, "Idle share of each day's cost\nbasis: raw compute (the cost lines)", "% of the day's cost")
    ax.set_xlabel("day of the month", fontsize=TICK_PT)
    return _svg(figure, f"chart-idle-{d.name}")


def deployment_charts(d: DeploymentMonth) -> list[str]:
    return [daily_cost_chart(d), heatmap_chart(d), cost_per_mtok_chart(d), idle_share_chart(d)]


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
