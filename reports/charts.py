"""The report's charts as inline SVG, drawn directly: bars, lines and a heat map, text kept as text.

Written by hand rather than through matplotlib: a fleet's report has four charts per deployment,
and drawing each in a few milliseconds keeps the whole report within its time budget. Nothing
refers to a file, a font or a network address; the SVG scales to its container and prints crisply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from itertools import pairwise

from reports.monthly import WEEKDAYS, DeploymentMonth

WIDTH, HEIGHT = 720.0, 300.0
LEFT, RIGHT, TOP, BOTTOM = 64.0, 16.0, 34.0, 78.0
COST = "#1f4e79"
IDLE = "#b2182b"
API_COLORS = ("#d95f02", "#7570b3", "#1b9e77", "#e7298a", "#66a61e")
FONT = 'font-family="system-ui, sans-serif"'


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    values: Sequence[float | None]
    color: str
    dashed: bool = False


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.2g}"


def _nice_ticks(top: float) -> list[float]:
    if top <= 0:
        return [0.0, 1.0]
    raw = top / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def _open(chart_id: str, title: str) -> list[str]:
    return [
        f'<svg id="{escape(chart_id)}" class="chart" role="img" viewBox="0 0 {WIDTH:.0f} {HEIGHT:.0f}"'
        f' xmlns="http://www.w3.org/2000/svg" {FONT} font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<text x="{LEFT}" y="18" font-size="13" font-weight="600">{escape(title)}</text>',
    ]


def _legend(items: Sequence[tuple[str, str, bool]]) -> list[str]:
    parts = []
    x, y = LEFT, HEIGHT - 22
    for label, color, dashed in items:
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        parts.append(
            f'<line x1="{x}" y1="{y - 4}" x2="{x + 18}" y2="{y - 4}" stroke="{color}"'
            f' stroke-width="3"{dash}/>'
        )
        parts.append(f'<text x="{x + 23}" y="{y}">{escape(label)}</text>')
        x += 30 + 6.2 * len(label)
        if x > WIDTH - 200:
            x, y = LEFT, y + 15
    return parts


def bars_and_lines(
    chart_id: str,
    title: str,
    x_labels: Sequence[str],
    y_label: str,
    bars: Series | None,
    lines: Sequence[Series] = (),
    *,
    log: bool = False,
    y_max: float | None = None,
) -> str:
    """Bars (one series) and lines over the same categories; a log axis when asked and possible."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    known = [v for s in ([bars] if bars else []) + list(lines) for v in s.values if v is not None]
    positive = [v for v in known if v > 0]
    log = log and bool(positive)
    if log:
        low = 10 ** math.floor(math.log10(min(positive)))
        high = 10 ** math.ceil(math.log10(max(positive)))
        high = high * 10 if high == low else high
        ticks = [low * 10**i for i in range(round(math.log10(high / low)) + 1)]

        def y_of(v: float) -> float:
            return TOP + plot_h * (1 - (math.log10(max(v, low)) - math.log10(low)) / math.log10(high / low))
    else:
        ticks = _nice_ticks(y_max if y_max is not None else max(known, default=1.0))

        def y_of(v: float) -> float:
            return TOP + plot_h * (1 - v / ticks[-1])

    parts = _open(chart_id, title)
    for tick in ticks:
        y = y_of(tick)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#e3e7eb"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>')
    parts.append(
        f'<text transform="translate(14 {TOP + plot_h / 2:.0f}) rotate(-90)"'
        f' text-anchor="middle">{escape(y_label)}</text>'
    )
    n = max(len(x_labels), 1)
    slot = plot_w / n

    def x_of(i: int) -> float:
        return LEFT + slot * (i + 0.5)

    for i, label in enumerate(x_labels):
        parts.append(
            f'<text x="{x_of(i):.1f}" y="{TOP + plot_h + 14:.1f}" text-anchor="middle"'
            f' font-size="9">{escape(label)}</text>'
        )
    base = TOP + plot_h
    legend: list[tuple[str, str, bool]] = []
    if bars is not None:
        legend.append((bars.label, bars.color, False))
        for i, v in enumerate(bars.values):
            if v is None:
                continue
            y = y_of(v) if not log or v > 0 else base
            parts.append(
                f'<rect class="bar" x="{x_of(i) - slot * 0.38:.1f}" y="{y:.1f}" width="{slot * 0.76:.1f}"'
                f' height="{max(base - y, 0):.1f}"'
                f' fill="{bars.color}"><title>{escape(x_labels[i])}: {_fmt(v)}</title></rect>'
            )
    for series in lines:
        legend.append((series.label, series.color, series.dashed))
        dash = ' stroke-dasharray="5 3"' if series.dashed else ""
        runs: list[list[str]] = [[]]
        for i, v in enumerate(series.values):
            if v is None or (log and v <= 0):
                runs.append([])
                continue
            runs[-1].append(f"{x_of(i):.1f},{y_of(v):.1f}")
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{series.color}"/>')
            elif run:
                parts.append(
                    f'<polyline class="line" points="{" ".join(run)}" fill="none" stroke="{series.color}"'
                    f' stroke-width="2"{dash}/>'
                )
    parts.append(f'<line x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}" stroke="#8a949e"/>')
    parts += _legend(legend)
    parts.append("</svg>")
    return "\n".join(parts)


def _viridis(share: float) -> str:
    """A perceptual dark-blue → green → yellow ramp (viridis' end points and middle)."""
    stops = (
        (0.0, (68, 1, 84)),
        (0.25, (59, 82, 139)),
        (0.5, (33, 145, 140)),
        (0.75, (94, 201, 98)),
        (1.0, (253, 231, 37)),
    )
    share = min(max(share, 0.0), 1.0)
    for (a, ca), (b, cb) in pairwise(stops):
        if share <= b:
            t = (share - a) / (b - a)
            r, g, bl = (round(x + (y - x) * t) for x, y in zip(ca, cb, strict=True))
            return f"#{r:02x}{g:02x}{bl:02x}"
    return "#fde725"


def heatmap(chart_id: str, title: str, grid: Sequence[Sequence[float | None]], x_title: str) -> str:
    """Rows are weekdays, columns hours; a cell's colour is its share (0–1); grey where unknown."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT - 70, HEIGHT - TOP - BOTTOM + 30
    cell_w, cell_h = plot_w / 24, plot_h / 7
    parts = _open(chart_id, title)
    for row, values in enumerate(grid):
        y = TOP + row * cell_h
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + cell_h / 2 + 4:.1f}" text-anchor="end">{WEEKDAYS[row]}</text>'
        )
        for hour, value in enumerate(values):
            fill = "#d9dde1" if value is None else _viridis(value)
            shown = "unknown" if value is None else f"{value:.0%}"
            parts.append(
                f'<rect class="cell" x="{LEFT + hour * cell_w:.1f}" y="{y:.1f}" width="{cell_w + 0.3:.1f}"'
                f' height="{cell_h + 0.3:.1f}"'
                f' fill="{fill}"><title>{WEEKDAYS[row]} {hour:02d}:00: {shown}</title></rect>'
            )
    for hour in range(0, 24, 2):
        x = LEFT + (hour + 0.5) * cell_w
        parts.append(
            f'<text x="{x:.1f}" y="{TOP + plot_h + 14:.1f}" text-anchor="middle"'
            f' font-size="9">{hour:02d}</text>'
        )
    parts.append(
        f'<text x="{LEFT + plot_w / 2:.0f}" y="{TOP + plot_h + 32:.0f}"'
        f' text-anchor="middle">{escape(x_title)}</text>'
    )
    scale_x = LEFT + plot_w + 24
    for i in range(20):
        parts.append(
            f'<rect x="{scale_x:.1f}" y="{TOP + plot_h * (1 - (i + 1) / 20):.1f}" width="14"'
            f' height="{plot_h / 20 + 0.3:.1f}"'
            f' fill="{_viridis((i + 0.5) / 20)}"/>'
        )
    for share in (0, 0.5, 1):
        parts.append(
            f'<text x="{scale_x + 18:.1f}" y="{TOP + plot_h * (1 - share) + 4:.1f}">{share:.0%}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _labels(d: DeploymentMonth) -> list[str]:
    return [day.day.strftime("%d") for day in d.days]


def _f(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def daily_cost_chart(d: DeploymentMonth) -> str:
    lines = [
        Series(
            f"{c.price.ref} (same tokens)",
            [_f(dict(day.api_equivalents).get(c.price.ref)) for day in d.days],
            API_COLORS[i % len(API_COLORS)],
        )
        for i, c in enumerate(d.cost.apis)
    ]
    return bars_and_lines(
        f"chart-daily-{d.name}",
        "Daily cost against the API equivalent",
        _labels(d),
        "USD per day",
        Series("self-hosted cost", [_f(day.cost_usd) for day in d.days], COST),
        lines,
    )


def heatmap_chart(d: DeploymentMonth) -> str:
    return heatmap(
        f"chart-heatmap-{d.name}",
        f"Utilization by hour and weekday ({d.cost.utilization_metric.value})",
        d.heatmap,
        f"hour of day ({d.cost.start.tzinfo})",
    )


def cost_per_mtok_chart(d: DeploymentMonth) -> str:
    lines = [Series("self-hosted", [_f(day.cost_per_mtok_usd) for day in d.days], COST)]
    for i, c in enumerate(d.cost.apis):
        if c.blended_usd_per_token is not None:
            level = float(c.blended_usd_per_token * 1_000_000)
            lines.append(
                Series(c.price.ref, [level] * len(d.days), API_COLORS[i % len(API_COLORS)], dashed=True)
            )
    return bars_and_lines(
        f"chart-mtok-{d.name}",
        "Cost per million tokens by day (APIs dashed, at this mix; log scale)",
        _labels(d),
        "USD per million tokens",
        None,
        lines,
        log=True,
    )


def idle_share_chart(d: DeploymentMonth) -> str:
    return bars_and_lines(
        f"chart-idle-{d.name}",
        "Idle share of cost by day",
        _labels(d),
        "% of the day's cost",
        Series(
            "idle share",
            [None if day.idle_share is None else float(day.idle_share) * 100 for day in d.days],
            IDLE,
        ),
        y_max=100,
    )


def deployment_charts(d: DeploymentMonth) -> list[str]:
    return [daily_cost_chart(d), heatmap_chart(d), cost_per_mtok_chart(d), idle_share_chart(d)]
