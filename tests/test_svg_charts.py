"""The report's SVG chart kit (`reports.svg`): ticks that cover the data and read apart, charts that
draw what they are given (gaps for missing days, grey for unobserved hours), escape what they print,
and name no other address."""

from __future__ import annotations

import itertools
import math
import re
import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from reports.svg import Series, heat_chart, linear_ticks, log_ticks, tick_label, viridis, xy_chart

NS = "{http://www.w3.org/2000/svg}"
finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)


@given(finite, finite)
def test_linear_ticks_cover_the_data_in_few_evenly_spaced_labelled_steps(a: float, b: float) -> None:
    low, high = min(a, b), max(a, b)
    y0, y1, ticks = linear_ticks(low, high)
    slack = (y1 - y0) * 1e-8  # a value a billionth of a step past a tick is drawn at the tick
    assert y0 - slack <= low and high <= y1 + slack and y0 < y1
    assert ticks[0] == y0 and ticks[-1] == y1
    assert 2 <= len(ticks) <= 8
    steps = [b - a for a, b in itertools.pairwise(ticks)]
    assert all(math.isclose(s, steps[0], rel_tol=1e-6) for s in steps)
    labels = [tick_label(t, steps[0]) for t in ticks]
    assert len(set(labels)) == len(labels)  # no two ticks print the same


@given(st.floats(min_value=1e-6, max_value=1e6), st.floats(min_value=1.0, max_value=1e6))
def test_log_ticks_contain_the_data_and_label_at_least_two_values(low: float, ratio: float) -> None:
    high = low * ratio
    y0, y1, ticks = log_ticks(low, high)
    assert y0 < low <= high < y1 or math.isclose(low, high)
    assert all(y0 <= t <= y1 for t in ticks) and ticks == sorted(ticks)
    assert len(ticks) >= 2 and len({f"{t:g}" for t in ticks}) == len(ticks)


def test_viridis_ends_where_matplotlib_does() -> None:
    assert viridis(0) == "#440154" and viridis(1) == "#fde725" and viridis(0.5) == "#21918c"
    assert viridis(-1) == viridis(0) and viridis(2) == viridis(1)


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # noqa: S314 - our own output


def test_a_day_chart_draws_bars_lines_gaps_and_an_escaped_legend() -> None:
    days = list(range(1, 32))
    cost = [100.0 + d for d in days]
    api = [None if d in (10, 11) else 40.0 for d in days]
    svg = xy_chart(
        "chart-daily-a&b",
        "Daily cost\nbasis: TCO",
        days,
        [Series("bars", cost, "#1f4e79", "self-hosted"), Series("line", api, "#d95f02", "<api> & co")],
        y_label="USD per day",
        x_label="day of the month",
    )
    root = _parse(svg)
    assert root.get("id") == "chart-daily-a&b"
    bars = [r for r in root.iter(f"{NS}rect") if r.get("fill") == "#1f4e79"]
    assert len(bars) == 31 + 1  # a bar a day, and the legend's swatch
    # The missing days break the line in two runs, and each value has its dot.
    assert len(list(root.iter(f"{NS}polyline"))) == 2 + 1  # and the legend's sample
    assert len([c for c in root.iter(f"{NS}circle") if c.get("fill") == "#d95f02"]) == 29 + 1
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "<api> & co" in texts and "Daily cost" in texts and "basis: TCO" in texts
    assert "150" in texts  # the axis reaches a whole step above the highest bar (131)
    sizes = [float(s) for s in re.findall(r"font-size: ([\d.]+)px", svg)]
    assert sizes and min(sizes) >= 11
    assert "http://" not in svg.replace("http://www.w3.org/2000/svg", "")


def test_a_log_chart_skips_days_without_a_positive_value() -> None:
    values = [None, 0.0, 3.0, 30.0, 300.0]
    svg = xy_chart(
        "m",
        "Cost per Mtok",
        [1, 2, 3, 4, 5],
        [Series("line", values, "#000001", "self"), Series("level", [12.0], "#000002", "api")],
        y_label="USD per Mtok",
        x_label="day",
        log=True,
    )
    root = _parse(svg)
    texts = {t.text for t in root.iter(f"{NS}text")}
    assert {"10", "100"} <= texts
    assert len([c for c in root.iter(f"{NS}circle") if c.get("fill") == "#000001"]) == 3 + 1
    assert len([x for x in root.iter(f"{NS}line") if x.get("stroke") == "#000002"]) == 2


def test_a_chart_with_nothing_to_draw_is_still_a_chart() -> None:
    svg = xy_chart("e", "Nothing", [], [Series("bars", [], "#000001", "x")], y_label="y", x_label="x")
    assert _parse(svg).get("id") == "e"
    svg = xy_chart(
        "n", "All unknown", [1, 2], [Series("line", [None, None], "#000001")], y_label="y", x_label="x"
    )
    assert not list(_parse(svg).iter(f"{NS}polyline"))


def test_the_heat_map_greys_unobserved_hours_and_shows_its_scale() -> None:
    grid: list[list[float | None]] = [[h / 23 for h in range(24)] for _ in range(7)]
    grid[6][5] = None
    svg = heat_chart("h", "Utilization", grid, row_labels=("M", "T", "W", "T", "F", "S", "S"), x_label="hour")
    root = _parse(svg)
    fills = [r.get("fill") for r in root.iter(f"{NS}rect")]
    assert fills.count("#cccccc") == 1
    assert "#440154" in fills and "#fde725" in fills
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert {"0", "100", "00", "21", "M"} <= set(texts)
