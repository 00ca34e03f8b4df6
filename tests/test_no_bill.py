"""No bill is not $0: a deployment priced by its cloud bill with no lines shows *no billing data* in every
output (null in JSON, empty in CSV, "—" on screen), gets no verdict, and the header names it with the
command that brings its bill in; every report names the bill cost it counts."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from auditor.bills import billing_status
from auditor.config import parse_config
from auditor.store import Store
from collectors.replay import SimulatedDeployment, bundled_trace, minute_loads, replay_into_store

AUDITOR = Path(sys.executable).parent / "auditor"

CONFIG = """
timezone = "UTC"
[store]
url = "sqlite:///{db}"
[[deployments]]
name = "llama"
model = "llama-3-70b"
gpu_type = "H100"
gpu_count = 2
prometheus_matchers = {{ app = "llama" }}
capacity_tokens_per_s = 8000
compare_to = ["together:meta-llama/Llama-3-70b-chat-hf"]
active_from = 2026-10-01
active_until = 2026-11-01
price = {{ source = "static", gpu_hourly_usd = 2.50 }}
[[deployments]]
name = "qwen-cloud"
model = "qwen"
gpu_type = "A10G"
gpu_count = 4
prometheus_matchers = {{ app = "qwen-cloud" }}
capacity_tokens_per_s = 2500
compare_to = ["openai:gpt-4o-mini"]
price = {{ source = "focus", tags = {{ deployment = "qwen-cloud" }} }}
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AUDITOR_CONFIG"}
    return subprocess.run(
        [str(AUDITOR), *args], capture_output=True, text=True, env=env, timeout=240, check=False
    )


@pytest.fixture(scope="module")
def unbilled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    where = tmp_path_factory.mktemp("unbilled")
    db = where / "auditor.db"
    (where / "auditor.toml").write_text(CONFIG.format(db=db))
    store = Store.open(f"sqlite:///{db}")
    start = 1_790_812_800 + 9 * 86_400  # 2026-10-10 00:00 UTC
    loads = minute_loads(bundled_trace(), start_ts=start)
    replay_into_store(
        store,
        [
            (loads, SimulatedDeployment("llama", "H100", 2, 8000.0)),
            (loads, SimulatedDeployment("qwen-cloud", "A10G", 4, 2500.0)),
        ],
    )
    store.close()
    done = _run(
        "report", "-c", str(where / "auditor.toml"), "--month", "2026-10", "--out", str(where), "--format",
        "html,csv,md,json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return where, done


def test_every_report_format_shows_no_billing_data_never_zero(
    unbilled: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    where, done = unbilled
    header = (
        "no billing data: qwen-cloud has no bill lines for 2026-10 (cost unknown, not $0; no verdict); "
        "run `auditor billing import FILE…`"
    )
    assert header in done.stdout
    assert "bills counted at EffectiveCost" in done.stdout
    (qwen_line,) = [line for line in done.stdout.splitlines() if line.startswith("  qwen-cloud:")]
    assert "no billing data (—)" in qwen_line and "$0.00" not in qwen_line
    md = (where / "gpu-report-2026-10.md").read_text()
    html = (where / "gpu-report-2026-10.html").read_text()
    assert header in md.replace("\\", "") and "no billing data" in html and "EffectiveCost" in html
    for text in (md, html):
        assert not [line for line in text.splitlines() if "qwen-cloud" in line and "$0.00" in line]
    section = md.split("### qwen-cloud")[1].split("###")[0].split("**Total at stake")[0]
    # Its own figures: no $0.00 but its configured overheads of $0.
    zeros = [line for line in section.splitlines() if "$0.00" in line]
    assert zeros == ["| TCO (with $0.00 overheads) | — |"]
    data = json.loads((where / "gpu-report-2026-10.json").read_text())
    assert data["no_billing_data"] == ["qwen-cloud"] and data["cost_metric"] == "effective"
    assert data["billing_fix"] == "auditor billing import FILE…"
    qwen = next(d for d in data["deployments"] if d["name"] == "qwen-cloud")
    assert qwen["cost_usd"] is None and qwen["tco_usd"] is None and qwen["cost_per_mtok_usd"] is None
    assert qwen["idle_cost_usd"] is None and qwen["api_equivalents"] == []
    for name in ("summary", "totals", "daily", "lines"):
        rows = list(csv.DictReader((where / f"gpu-report-2026-10-{name}.csv").open()))
        own = [r for r in rows if "qwen-cloud" in (r.get("deployment"), r.get("name"), r.get("x_Deployment"))]
        assert own, name
        for row in own:
            for column, value in row.items():
                if re.search(r"usd|Cost", column) and "overhead" not in column:
                    assert value in {"", None}, (name, column, value)


def test_the_digest_and_billing_status_name_it(
    unbilled: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    where, _ = unbilled
    digest = _run("digest", "-c", str(where / "auditor.toml"), "--week", "2026-W42")
    assert "no billing data: qwen-cloud has no bill lines for 2026-W42" in digest.stdout
    assert "— no billing data" in digest.stdout
    config = parse_config(CONFIG.format(db=where / "auditor.db"))
    store = Store.open(config.store.url, read_only=True)
    try:
        status = billing_status(store, config, datetime(2026, 11, 2, tzinfo=UTC))
    finally:
        store.close()
    assert status.no_billing_data == ["qwen-cloud"] and status.sources == []
    assert status.fix == "auditor billing import FILE…"
    assert Decimal(0) not in [s.unattributed_usd for s in status.sources]
