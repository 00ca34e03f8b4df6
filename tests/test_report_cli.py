"""`auditor report`, `replay` and `demo` as a user runs them: the installed entry point, in a subprocess."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from auditor.model import CostBasis, CostLine
from auditor.store import Store
from collectors.replay import SimulatedDeployment, bundled_trace, minute_loads, replay_into_store

AUDITOR = Path(sys.executable).parent / "auditor"
TRACE = Path(__file__).parent / "fixtures" / "azure_llm_trace" / "conv_10min.csv"

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
[deployments.price]
source = "static"
gpu_hourly_usd = 2.50
"""


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AUDITOR_CONFIG"}
    return subprocess.run(
        [str(AUDITOR), *args], capture_output=True, text=True, env=env, timeout=240, check=False, cwd=cwd
    )


@pytest.fixture
def configured(tmp_path: Path) -> Path:
    db = tmp_path / "auditor.db"
    store = Store.open(f"sqlite:///{db}")
    start = 1_790_812_800  # 2026-10-01 00:00 UTC
    loads = minute_loads(bundled_trace(), start_ts=start + 9 * 86_400)
    replay_into_store(store, [(loads, SimulatedDeployment("llama", "H100", 2, 8000.0))])
    line = CostLine(
        date(2026, 10, 2), "aws", "1", "i-x", "BoxUsage", Decimal("12.346"), basis=CostBasis.INVOICED
    )
    store.replace_cost_lines("aws", "1", date(2026, 10, 2), date(2026, 10, 3), [line])
    store.close()
    path = tmp_path / "auditor.toml"
    path.write_text(CONFIG.format(db=db))
    return path


def test_report_writes_every_format_and_reconciles(configured: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(
        "report",
        "--config",
        str(configured),
        "--month",
        "2026-10",
        "--format",
        "html,csv,md,json",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "total billed $3,732.35" in result.stdout  # 2 GPUs × 744 h × $2.50 + $12.346, to the cent
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "gpu-report-2026-10-api.csv",
        "gpu-report-2026-10-daily.csv",
        "gpu-report-2026-10-lines.csv",
        "gpu-report-2026-10-summary.csv",
        "gpu-report-2026-10-totals.csv",
        "gpu-report-2026-10.html",
        "gpu-report-2026-10.json",
        "gpu-report-2026-10.md",
    ]
    data = json.loads((out / "gpu-report-2026-10.json").read_text(), parse_float=Decimal)
    assert data["month"] == "2026-10" and data["partial"] is False
    # Exact (a machine format); the HTML and Markdown show $3,732.35 and $12.35.
    assert data["total_cost_usd"] == Decimal("3732.346") and data["unattributed_cost_usd"] == Decimal(
        "12.346"
    )
    (llama,) = data["deployments"]
    assert llama["cost_usd"] == 3720.0 and llama["billed_gpu_hours"] == 1488.0
    assert llama["prompt_tokens"] == sum(r.prompt_tokens for r in bundled_trace())
    assert llama["utilization_metric"] == "sm_active"
    with (out / "gpu-report-2026-10-daily.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 31 + 1  # and the unattributed line's day
    html = (out / "gpu-report-2026-10.html").read_text()
    assert "<svg" in html and "http://" not in html.replace("http://www.w3.org", "")
    assert "$3,732.35" in html


def test_a_month_without_data_says_so_and_exits_1(configured: Path) -> None:
    result = run("report", "--config", str(configured), "--month", "2019-03")
    assert result.returncode == 1
    assert "no data for 2019-03" in result.stderr and result.stdout == ""


def test_report_json_to_stdout(configured: Path) -> None:
    result = run("report", "--config", str(configured), "--month", "2026-10", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data["deployments"][0]) >= {
        "name",
        "cost_usd",
        "tco_usd",
        "billed_gpu_hours",
        "observed_gpu_hours",
        "idle_gpu_hours",
        "unknown_gpu_hours",
        "utilization",
        "utilization_metric",
        "utilization_measures",
        "prompt_tokens",
        "generation_tokens",
        "cost_per_mtok_usd",
        "idle_cost_usd",
        "api_equivalents",
        "breakeven_utilization",
        "breakeven_tokens_per_month",
        "recommendations",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--month", "October"), "--month: 'October' is not a month; write it as YYYY-MM"),
        (("--month", "2099-01"), "--month: 2099-01 has not begun yet"),
        (("--month", "2026-10", "--format", "pdf"), "--format: pdf is not a format"),
        (("--month", "2026-10", "--deployment", "nope"), "--deployment: no deployment 'nope' in the config"),
    ],
)
def test_report_bad_input_is_one_line_and_exit_2(
    configured: Path, args: tuple[str, ...], message: str
) -> None:
    result = run("report", "--config", str(configured), *args)
    assert result.returncode == 2
    assert result.stderr.startswith(f"auditor: error: {message}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_replay_plans_a_trace_on_n_gpus() -> None:
    result = run(
        "replay", "--trace", str(TRACE), "--gpus", "2", "--gpu-type", "H100", "--gpu-hourly-usd", "3",
        "--capacity-tokens-per-s", "8000", "--api", "openai:gpt-4o", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    requests = bundled_trace()
    assert data["prompt_tokens"] == sum(r.prompt_tokens for r in requests)
    assert data["generation_tokens"] == sum(r.generation_tokens for r in requests)
    minutes = data["billed_gpu_hours"] / 2 * 60
    assert data["cost_usd"] == pytest.approx(3 * 2 * minutes / 60, abs=1e-9)
    assert 0 < data["utilization_measures"]["throughput_util"] < 1
    assert data["api_equivalents"][0]["model"] == "gpt-4o"
    table = run("replay", "--trace", str(TRACE), "--gpus", "1", "--gpu-type", "H100")
    assert table.returncode == 0, table.stderr
    assert "median on-demand price" in table.stdout and "Cost per Mtok" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--gpus", "2", "--gpu-type", "H100"), "give --trace FILE"),
        (
            ("--trace", "missing.csv", "--gpus", "2", "--gpu-type", "H100"),
            "--trace: missing.csv: cannot be read",
        ),
        (("--trace", str(TRACE), "--gpus", "0", "--gpu-type", "H100"), "--gpus: must be 1 or more"),
        (
            ("--trace", str(TRACE), "--gpus", "1", "--gpu-type", "TPU"),
            "--gpu-type: no catalog price for 'TPU'",
        ),
        (
            ("--trace", str(TRACE), "--gpus", "1", "--gpu-type", "H100", "--api", "gpt-9"),
            "--api: unknown API model",
        ),
        # Issue 13's bounded work: each a one-line answer at once, not a run until killed.
        (("--trace", "/bin/sh", "--gpus", "1", "--gpu-type", "H100"), "--trace: /bin/sh: not a text CSV"),
        (("--requests-per-min", "1e9", "--gpus", "1", "--gpu-type", "H100"), "--requests-per-min: must be"),
        (("--requests-per-min", "10", "--days", "100000", "--gpus", "1", "--gpu-type", "H100"), "--days:"),
        (
            ("--requests-per-min", "10", "--gpus", "100000", "--gpu-type", "H100"),
            "100000 GPUs over 30.0 days",
        ),
    ],
)
def test_replay_bad_input(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    result = run("replay", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"auditor: error: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_demo_runs_with_no_arguments(tmp_path: Path) -> None:
    env_tmp = tmp_path / "tmp"
    env_tmp.mkdir()
    result = subprocess.run(
        [str(AUDITOR), "demo"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**{k: v for k, v in os.environ.items() if k != "AUDITOR_CONFIG"}, "TMPDIR": str(env_tmp)},
    )
    assert result.returncode == 0, result.stderr
    (scratch,) = env_tmp.iterdir()
    html = next(scratch.glob("gpu-report-*.html"))
    assert f"file://{html}" in result.stdout
    assert all(name in result.stdout for name in ("llama-70b", "mistral-7b", "qwen-32b"))
    # One figure per saving: the report's, for its month; a finding's line repeats no amount.
    findings = [line for line in result.stdout.splitlines() if line.lstrip().startswith("[")]
    assert findings and not any("$" in line for line in findings)
    assert result.stdout.count("moving would") == 3
    # The cloud-billed deployment's cost is its FOCUS bill's, reconciled in the header.
    assert "bill aws-focus: $2,773.23 = qwen-32b $2,700.80 + unattributed $72.43" in result.stdout
    data = json.loads(next(scratch.glob("gpu-report-*.json")).read_text())
    llama = data["deployments"][0]
    assert llama["utilization_measures"]["gpu_util"] == 1.0  # busy-polling: NVML says 100%
    assert llama["utilization"] < 0.4  # sm_active tells the truth
    assert llama["api_equivalents"][0]["savings_usd"] > 0  # moving to the API would save money
    assert data["unattributed_cost_usd"] > 0
    rerun = run("report", "--config", str(scratch / "auditor.toml"), "--month", data["month"], "--json")
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["total_cost_usd"] == data["total_cost_usd"]
