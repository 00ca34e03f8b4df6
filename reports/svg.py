"""A small SVG chart kit for the report: axes, ticks, bars, lines, a heat map, a legend; text stays text.

The report draws 4 charts per deployment. Drawn with matplotlib they cost ~0.15 s of CPU each (0.08 s
without its constrained layout) plus ~0.5 s to import it: 6.5 s of a 1,024-GPU report whose figures
take 2 s. Written here as SVG text they cost about a millisecond each. The charts are simple (a bar
per day, a line per API, a weekday × hour grid), so the kit is too: fixed margins sized from the
labels' lengths, "nice" linear ticks, decade (or 1-2-5) ticks on a log scale, and nothing that
names another address (no fonts, images or stylesheets fetched), so the HTML stays self-contained.

Sizes are in SVG user units. The report scales each chart to half its width, where a unit is about a
CSS pixel, so 11 units is an 11 px label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

WIDTH, HEIGHT = 518.4, 302.4
"""7.2 × 4.2 inches at 72 units an inch: the size the report's charts always had."""
TICK = 11
TITLE = 12
FONT = "'DejaVu Sans', 'Bitstream Vera Sans', Verdana, Arial, Helvetica, sans-serif"
CHAR_EM = 0.62
"""A generous mean advance of a sans-serif character, in ems, to size margins from labels' lengths."""
GRID = "#e3e7eb"
MISSING = "#cccccc"
VIRIDIS = (
    "#440154", "#48186a", "#472d7b", "#424086", "#3b528b", "#33638d", "#2c728e", "#26828e", "#21918c",
    "#1fa088", "#28ae80", "#3fbc73", "#5ec962", "#84d44b", "#addc30", "#d8e219", "#fde725",
)  # fmt: skip
"""matplotlib's viridis at 0, 1/16, …, 1 (interpolated in between): the heat maps' scale, as before."""


def text_width(text: str, size: float = TICK) -> float:
    return len(text) * size * CHAR_EM


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def viridis(share: float) -> str:
    """The colour of `share` (0–1, clipped) on the viridis scale."""
    position = min(max(share, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(position), len(VIRIDIS) - 2)
    t = position - i
    low, high = VIRIDIS[i], VIRIDIS[i + 1]
    rgb = (round(int(low[k : k + 2], 16) * (1 - t) + int(high[k : k + 2], 16) * t) for k in (1, 3, 5))
    return "#" + "".join(f"{c:02x}" for c in rgb)


# -- ticks ----------------------------------------------------------------------------------------


def nice_step(span: float, most: int) -> float:
    """The smallest step of 1, 2, 2.5 or 5 × 10^k that cuts `span` (> 0) into at most `most` steps."""
    raw = span / most
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * power >= raw * (1 - 1e-9):
            return factor * power
    return 10 * power  # pragma: no cover - the loop always returns


def linear_ticks(low: float, high: float, most: int = 6) -> tuple[float, float, list[float]]:
    """Axis limits widened to whole steps around [low, high], and the ticks between them."""
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = 0.0, 1.0
    if high <= low:
        high = low + 1
    high = max(high, low + 1e-9 * max(1.0, abs(low)))  # steps a float can still tell apart
    step = nice_step(high - low, most)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    ticks = [k * step for k in range(first, last + 1)]
    return ticks[0], ticks[-1], ticks


def log_ticks(low: float, high: float) -> tuple[float, float, list[float]]:
    """Limits (a little outside the data, in log space) and ticks for positive [low, high]: decades
    when the data spans two or more, else 1-2-5 (or every integer) multiples, so some label shows."""
    span = math.log10(high / low)
    pad = max(span * 0.06, (0.61 - span) / 2)  # at least a factor 4 in all: two 1..9 × 10^k inside
    lo, hi = low / 10**pad, high * 10**pad
    for multiples in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [
            m * 10.0**k
            for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            for m in multiples
            if lo <= m * 10.0**k <= hi
        ]
        if len(ticks) >= 2:
            return lo, hi, ticks
    return lo, hi, ticks


def tick_label(value: float, step: float) -> str:
    """`value` with thousands separators and as many decimals as `step` needs (2.5 needs one)."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    scaled = step * 10**decimals
    if abs(scaled - round(scaled)) > 1e-6:
        decimals += 1
    return f"{value:,.{decimals}f}"


# -- drawing --------------------------------------------------------------------------------------


@dataclass
class Svg:
    """One chart's SVG, built element by element."""

    chart_id: str
    parts: list[str] = field(default_factory=list)

    def text(
        self,
        x: float,
        y: float,
        text: str,
        *,
        anchor: str = "start",
        size: int = TICK,
        bold: bool = False,
        rotate: bool = False,
    ) -> None:
        style = [f"font-size: {size}px"] if size != TICK else []
        if bold:
            style.append("font-weight: 700")
        attrs = f'x="{_num(x)}" y="{_num(y)}"'
        if anchor != "start":
            attrs += f' text-anchor="{anchor}"'
        if rotate:
            attrs += f' transform="rotate(-90 {_num(x)} {_num(y)})"'
        if style:
            attrs += f' style="{"; ".join(style)}"'
        self.parts.append(f"<text {attrs}>{escape(text)}</text>")

    def rect(self, x: float, y: float, w: float, h: float, fill: str) -> None:
        self.parts.append(
            f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(w)}" height="{_num(h)}" fill="{fill}"/>'
        )

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: str, width: float = 0.8) -> None:
        self.parts.append(
            f'<line x1="{_num(x1)}" y1="{_num(y1)}" x2="{_num(x2)}" y2="{_num(y2)}"'
            f' stroke="{stroke}" stroke-width="{_num(width)}"/>'
        )

    def dashed(self, x1: float, y: float, x2: float, stroke: str) -> None:
        self.parts.append(
            f'<line x1="{_num(x1)}" y1="{_num(y)}" x2="{_num(x2)}" y2="{_num(y)}"'
            f' stroke="{stroke}" stroke-width="1.5" stroke-dasharray="5.5,2.4"/>'
        )

    def render(self, title: str) -> str:
        head = (
            f'<svg id="{escape(self.chart_id)}" class="chart" role="img" viewBox="0 0 {_num(WIDTH)} '
            f'{_num(HEIGHT)}" xmlns="http://www.w3.org/2000/svg" version="1.1"'
            f' style="font-family: {FONT}; font-size: {TICK}px">'
        )
        background = f'<rect width="{_num(WIDTH)}" height="{_num(HEIGHT)}" fill="#ffffff"/>'
        return "\n".join([head, f"<title>{escape(title)}</title>", background, *self.parts, "</svg>"])


@dataclass(frozen=True)
class Series:
    """What an XY chart draws: bars, a line with markers (gaps where a value is None), or a
    horizontal reference line (`values` one value); each with a legend label, or none."""

    kind: str  # "bars" | "line" | "level"
    values: Sequence[float | None]
    color: str
    label: str | None = None


def _finite(values: Sequence[float | None], positive: bool) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not positive)]


def _legend_layout(labels: Sequence[str]) -> tuple[int, float]:
    """Columns (2 when they fit side by side, else 1) and the width of a column."""
    column = max((22 + text_width(label) for label in labels), default=0) + 14
    return (2 if 2 * column <= WIDTH - 24 else 1), column


def xy_chart(
    chart_id: str,
    title: str,
    x: Sequence[int],
    series: Sequence[Series],
    *,
    y_label: str,
    x_label: str,
    log: bool = False,
    y_range: tuple[float, float] | None = None,
) -> str:
    """A chart over integer x (days of a month): bars, lines and levels on a linear or log y axis."""
    labelled = [s for s in series if s.label is not None]
    columns, column_w = _legend_layout([s.label for s in labelled if s.label is not None])
    rows = math.ceil(len(labelled) / columns) if labelled else 0
    values = [v for s in series for v in _finite(s.values, log)]
    if log and values:
        y0, y1, ticks = log_ticks(min(values), max(values))
        labels = [f"{t:g}" for t in ticks]
    else:
        if y_range is not None:
            low, high = y_range
        else:
            low, high = min([0.0, *values]), max([0.0, *values])
        y0, y1, ticks = linear_ticks(low, high)
        step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
        labels = [tick_label(t, step) for t in ticks]
        log = False
    left = 14 + 8 + max((text_width(label) for label in labels), default=0) + 8
    right, top = WIDTH - 14, 38.0
    bottom = HEIGHT - (36 + 16 * rows + (6 if rows else 0))
    x0 = (min(x) if x else 1) - 0.6
    x1 = (max(x) if x else 1) + 0.6

    def px(value: float) -> float:
        return left + (value - x0) / (x1 - x0) * (right - left)

    def py(value: float) -> float:
        share = (
            (math.log10(value) - math.log10(y0)) / (math.log10(y1) - math.log10(y0))
            if log
            else (value - y0) / (y1 - y0)
        )
        return bottom - share * (bottom - top)

    svg = Svg(chart_id)
    for t, label in zip(ticks, labels, strict=True):
        svg.line(left, py(t), right, py(t), GRID)
        svg.line(left - 3.5, py(t), left, py(t), "#000000")
        svg.text(left - 6, py(t) + 4, label, anchor="end")
    bar_w = 0.8 * (right - left) / (x1 - x0)
    base = py(y0 if log else max(y0, min(0.0, y1)))
    for s in series:
        if s.kind == "bars":
            for day, v in zip(x, s.values, strict=True):
                if v is not None and math.isfinite(v) and (v > 0 or not log):
                    top_y = py(v)
                    svg.rect(px(day) - bar_w / 2, min(top_y, base), bar_w, abs(base - top_y), s.color)
        elif s.kind == "level":
            [level] = s.values
            if level is not None and (level > 0 or not log):
                svg.dashed(left, py(level), right, s.color)
        else:
            _line(svg, [(px(day), None if v is None or not (v > 0 or not log) else py(v))
                        for day, v in zip(x, s.values, strict=True)], s.color)  # fmt: skip
    svg.line(left, bottom, right, bottom, "#000000")
    svg.line(left, top, left, bottom, "#000000")
    for day in [d for d in x if d == 1 or d % 5 == 0]:
        svg.line(px(day), bottom, px(day), bottom + 3.5, "#000000")
        svg.text(px(day), bottom + 16, str(day), anchor="middle")
    svg.text((left + right) / 2, bottom + 31, x_label, anchor="middle")
    svg.text(14, (top + bottom) / 2, y_label, anchor="middle", rotate=True)
    _title(svg, left, title)
    for i, s in enumerate(labelled):
        row, col = divmod(i, columns)
        lx = (WIDTH - columns * column_w) / 2 + col * column_w
        ly = bottom + 46 + 16 * row
        if s.kind == "bars":
            svg.rect(lx, ly - 8, 18, 8, s.color)
        elif s.kind == "level":
            svg.dashed(lx, ly - 4, lx + 18, s.color)
        else:
            _line(svg, [(lx, ly - 4), (lx + 9, ly - 4), (lx + 18, ly - 4)], s.color, markers=False)
            _marker(svg, lx + 9, ly - 4, s.color)
        svg.text(lx + 24, ly, s.label or "")
    return svg.render(title.replace("\n", ": "))


def _marker(svg: Svg, x: float, y: float, color: str) -> None:
    svg.parts.append(f'<circle cx="{_num(x)}" cy="{_num(y)}" r="2" fill="{color}"/>')


def _line(svg: Svg, points: Sequence[tuple[float, float | None]], color: str, markers: bool = True) -> None:
    """A polyline broken where a value is missing, with a dot at each value."""
    run: list[str] = []
    runs: list[list[str]] = [run]
    for x, y in points:
        if y is None:
            run = []
            runs.append(run)
        else:
            run.append(f"{_num(x)},{_num(y)}")
            if markers:
                _marker(svg, x, y, color)
    for r in runs:
        if len(r) > 1:
            svg.parts.append(
                f'<polyline points="{" ".join(r)}" fill="none" stroke="{color}" stroke-width="1.5"/>'
            )


def _title(svg: Svg, left: float, title: str) -> None:
    for i, line in enumerate(title.split("\n")):
        svg.text(left, 14 + 14 * i, line, size=TITLE, bold=True)


def heat_chart(
    chart_id: str,
    title: str,
    grid: Sequence[Sequence[float | None]],
    *,
    row_labels: Sequence[str],
    x_label: str,
) -> str:
    """A row × hour grid of shares (0–1, None grey), coloured on viridis, with its 0–100 scale bar."""
    left = 14 + max(text_width(label) for label in row_labels)
    right, top, bottom = WIDTH - 70, 38.0, HEIGHT - 40
    hours = max((len(row) for row in grid), default=24) or 24
    cell_w, cell_h = (right - left) / hours, (bottom - top) / max(len(grid), 1)
    svg = Svg(chart_id)
    svg.parts.append('<g shape-rendering="crispEdges">')  # no seams between neighbouring cells
    for r, row in enumerate(grid):
        for h, value in enumerate(row):
            fill = MISSING if value is None or not math.isfinite(value) else viridis(value)
            svg.rect(left + h * cell_w, top + r * cell_h, cell_w + 0.3, cell_h + 0.3, fill)
    svg.parts.append("</g>")
    for r, label in enumerate(row_labels):
        y = top + (r + 0.5) * cell_h
        svg.line(left - 3.5, y, left, y, "#000000")
        svg.text(left - 6, y + 4, label, anchor="end")
    for h in range(0, hours, 3):
        x = left + (h + 0.5) * cell_w
        svg.line(x, bottom, x, bottom + 3.5, "#000000")
        svg.text(x, bottom + 16, f"{h:02d}", anchor="middle")
    svg.parts.append(
        f'<rect x="{_num(left)}" y="{_num(top)}" width="{_num(right - left)}" height="{_num(bottom - top)}"'
        ' fill="none" stroke="#000000" stroke-width="0.8"/>'
    )
    svg.text((left + right) / 2, bottom + 31, x_label, anchor="middle")
    _title(svg, left, title)
    # The scale: viridis from 0 (bottom) to 100 (top), ticks every 20.
    bx, bw = right + 14, 12.0
    gradient = f"{chart_id}-scale"
    stops = "".join(
        f'<stop offset="{_num(100 * i / (len(VIRIDIS) - 1))}%" stop-color="{c}"/>'
        for i, c in enumerate(reversed(VIRIDIS))
    )
    svg.parts.append(
        f'<defs><linearGradient id="{escape(gradient)}" x1="0" y1="0" x2="0" y2="1">{stops}'
        "</linearGradient></defs>"
    )
    svg.parts.append(
        f'<rect x="{_num(bx)}" y="{_num(top)}" width="{_num(bw)}" height="{_num(bottom - top)}"'
        f' fill="url(#{escape(gradient)})" stroke="#000000" stroke-width="0.8"/>'
    )
    for pct in range(0, 101, 20):
        y = bottom - pct / 100 * (bottom - top)
        svg.line(bx + bw, y, bx + bw + 3.5, y, "#000000")
        svg.text(bx + bw + 6, y + 4, str(pct))
    return svg.render(title.replace("\n", ": "))
