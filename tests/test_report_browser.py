"""The HTML report as a user sees it: rendered by headless Chromium, offline, figures and charts on screen.

Needs Debian's `chromium` (`.ci/run` installs it); skipped with the reason where it is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from PIL import Image

from auditor.config import parse_config
from auditor.gpu_prices import load_gpu_prices
from auditor.model import CostLine, Finding, Severity
from auditor.prices import ApiPriceCatalog
from auditor.store import Store
from collectors.replay import (
    SimulatedDeployment,
    TrafficShape,
    bundled_trace,
    generate_loads,
    replay_into_store,
)
from reports.html import write_html
from reports.monthly import build_month_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)"
)

CONFIG = """
timezone = "UTC"
[[deployments]]
name = "llama-70b"
model = "llama-3.3-70b"
gpu_type = "H100"
gpu_count = 2
prometheus_matchers = { app = "llama" }
capacity_tokens_per_s = 8000
compare_to = ["together:meta-llama/Llama-3-70b-chat-hf", "openai:gpt-4o"]
[deployments.price]
source = "static"
gpu_hourly_usd = 2.99
"""


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("browser")
    store = Store.open(f"sqlite:///{directory / 'a.db'}")
    start = int(datetime(2026, 9, 1, tzinfo=UTC).timestamp())
    end = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp())
    loads = generate_loads(start, end, ZoneInfo("UTC"), TrafficShape(9), bundled_trace())
    replay_into_store(
        store, [(loads, SimulatedDeployment("llama-70b", "H100", 2, 8000.0, busy_poll_util=1.0))]
    )
    untagged = CostLine(date(2026, 9, 4), "aws", "1", "i-untagged", "BoxUsage:g5.xlarge", Decimal("24.14"))
    store.replace_cost_lines("aws", "1", date(2026, 9, 4), date(2026, 9, 5), [untagged])
    finding = Finding(
        rule="move-to-api",
        subject="llama-70b",
        severity=Severity.WARNING,
        title="llama-70b is 3% utilized",
        text="Move llama-70b to together: saves $3,900.00/month.",
        usd_per_month=Decimal(3900),
    )
    report = build_month_report(
        store=store,
        config=parse_config(CONFIG),
        month="2026-09",
        now=datetime(2026, 11, 1, tzinfo=UTC),
        api_catalog=ApiPriceCatalog(),
        gpu_catalog=load_gpu_prices(),
        findings=[finding],
    )
    return write_html(report, directory / "report.html")


def test_the_page_shows_the_figures(rendered: Path, tmp_path: Path) -> None:
    result = _chromium(tmp_path / "profile", "--dump-dom", rendered.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    cost = Decimal("2.99") * 2 * 720
    assert f"${cost:,.2f}" in dom  # raw compute: 2 GPUs × 720 h × $2.99
    assert f"${cost + Decimal('24.14'):,.2f}" in dom  # the total, with the unattributed line
    assert 'id="unattributed-cost">$24.14<' in dom
    assert "complete month" in dom
    assert "Move llama-70b to together: saves $3,900.00/month." in dom
    assert "gpu_util reads 100%" in dom  # the busy-poll warning
    for chart in ("daily", "heatmap", "mtok", "idle"):
        assert f'id="chart-{chart}-llama-70b"' in dom
    assert "Daily cost against the API equivalent" in dom  # chart text stays text
    assert "breakeven_utilization = hourly_tco_usd" in dom  # the footnote's formulas


def test_the_screenshot_has_the_charts_drawn(rendered: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    result = _chromium(
        tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000", rendered.as_uri()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        colors = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colors is not None
    counts = {rgb: n for n, rgb in colors}
    assert counts.get((0x1F, 0x4E, 0x79), 0) > 5_000  # the daily cost bars
    assert counts.get((0xB2, 0x18, 0x2B), 0) > 2_000  # the idle-share bars
    assert len(counts) > 500  # a heat map's gradient, text, lines: not a blank page
