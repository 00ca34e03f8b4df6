"""The `auditor` console script, run as a user runs it: a subprocess of the installed entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

AUDITOR = Path(sys.executable).parent / "auditor"
EXAMPLE = Path(__file__).resolve().parent.parent / "systemd" / "auditor.example.toml"
DESIGN_EXAMPLE = [
    "breakeven",
    "--prompt-tokens",
    "100M",
    "--generation-tokens",
    "20M",
    "--gpus",
    "2",
    "--gpu-hourly-usd",
    "2.50",
    "--hours",
    "720",
]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "AUDITOR_CONFIG"}
    return subprocess.run(
        [str(AUDITOR), *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=120,
        check=False,
    )


def test_breakeven_json_agrees_with_hand_arithmetic() -> None:
    result = run(*DESIGN_EXAMPLE, "--capacity-tokens-per-s", "30000", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["self_hosted"]["monthly_usd"] == 3600.00
    assert data["self_hosted"]["monthly_tco_usd"] == 3600.00
    apis = {a["model"]: a for a in data["apis"]}
    assert apis["gpt-4o"]["provider"] == "openai"
    assert apis["gpt-4o"]["monthly_usd"] == 450.00
    assert apis["claude-3-5-haiku-latest"]["monthly_usd"] == 160.00
    assert apis["meta-llama/Llama-3-70b-chat-hf"]["monthly_usd"] == 108.00
    assert apis["gpt-4o"]["breakeven_tokens_per_month"] == 960_000_000
    assert apis["gpt-4o"]["breakeven_utilization"] == pytest.approx(5 / 405, abs=1e-6)
    assert "together:meta-llama/Llama-3-70b-chat-hf is cheaper" in data["verdict"]


def test_breakeven_bills_a_named_calendar_month_or_says_it_used_730(tmp_path: Path) -> None:
    volumes = ["breakeven", "--prompt-tokens", "1M", "--generation-tokens", "1M", "--gpus", "1"]
    volumes += ["--gpu-hourly-usd", "2", "--json"]
    average = json.loads(run(*volumes).stdout)["self_hosted"]
    assert (average["hours"], average["monthly_usd"]) == (730, 1460.00)
    assert "year's average month" in average["hours_basis"]
    config = tmp_path / "auditor.toml"
    config.write_text('timezone = "Europe/Berlin"\n')
    october = run(*volumes, "--month", "2026-10", "--config", str(config))
    assert october.returncode == 0, october.stderr
    berlin = json.loads(october.stdout)["self_hosted"]
    # October in Berlin ends daylight saving time: 745 real hours.
    assert (berlin["hours"], berlin["monthly_usd"], berlin["hours_basis"]) == (
        745,
        1490.00,
        "2026-10 in Europe/Berlin",
    )
    both = run(*volumes, "--month", "2026-10", "--hours", "700")
    assert both.returncode == 2
    assert both.stderr.strip().splitlines() == ["auditor: error: give --hours or --month, not both"]
    bad = run(*volumes, "--month", "2026-13")
    assert bad.returncode == 2 and "--month" in bad.stderr and "Traceback" not in bad.stderr


def test_breakeven_table_and_tco() -> None:
    result = run(*DESIGN_EXAMPLE, "--overhead-usd-month", "25000", "--api", "openai:gpt-4o")
    assert result.returncode == 0, result.stderr
    assert "$3,600.00/month raw, $28,600.00/month TCO" in result.stdout
    assert "$450.00" in result.stdout
    assert "— (give --capacity-tokens-per-s)" in result.stdout
    assert "saving $28,150.00/month" in result.stdout


def test_breakeven_where_self_hosting_wins() -> None:
    result = run(
        "breakeven",
        "--prompt-tokens",
        "3B",
        "--generation-tokens",
        "1e9",
        "--gpus",
        "2",
        "--gpu-hourly-usd",
        "2.50",
        "--hours",
        "720",
        "--api",
        "gpt-4o",
        "--json",
    )
    data = json.loads(result.stdout)
    assert data["apis"][0]["monthly_usd"] == 17_500.00
    assert data["apis"][0]["savings_usd_month"] == -13_900.00
    assert "self-hosting is cheaper than every API compared" in data["verdict"]


def test_breakeven_prices_an_instance_from_the_catalog() -> None:
    result = run(
        "breakeven",
        "--prompt-tokens",
        "1B",
        "--generation-tokens",
        "200M",
        "--instance",
        "p5.48xlarge",
        "--hours",
        "720",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["self_hosted"]["gpus"] == 8
    assert data["self_hosted"]["monthly_usd"] == 55.04 * 720


def test_a_private_api_price_from_config(tmp_path: Path) -> None:
    result = run(
        *DESIGN_EXAMPLE,
        "--api",
        "private:llama-3-70b-negotiated",
        "--json",
        env={"AUDITOR_CONFIG": str(EXAMPLE)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["apis"][0]["monthly_usd"] == 72.00  # 120M × $0.60/Mtok


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt-tokens", "-5M"], "--prompt-tokens: '-5M' is negative"),
        (["--prompt-tokens", "lots"], "--prompt-tokens: 'lots' is not a token count; write e.g. 100M"),
        (["--gpu-hourly-usd", "two"], "--gpu-hourly-usd: 'two' is not an amount in USD"),
        (["--api", "gpt-4oo"], "--api: unknown API model 'gpt-4oo'; did you mean: openai:gpt-4o"),
        (["--gpus", "0"], "--gpus: must be 1 to 1,000,000"),
        (["--hours", "0"], "--hours: '0' must be more than 0 hours"),
    ],
)
def test_bad_breakeven_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    flag, value = args
    argv = list(DESIGN_EXAMPLE)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    result = run(*argv)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_instance_suggests_close_names() -> None:
    result = run("breakeven", "--prompt-tokens", "1B", "--generation-tokens", "1B", "--instance", "p5.48xl")
    assert result.returncode == 2
    assert "did you mean" in result.stderr and "p5.48xlarge" in result.stderr


def test_an_instance_without_that_pricing_says_what_the_catalog_has() -> None:
    args = ["breakeven", "--prompt-tokens", "1B", "--generation-tokens", "1B", "--instance", "g5.xlarge"]
    result = run(*args, "--pricing", "reserved_3y")
    assert result.returncode == 2
    assert "no reserved_3y price for instance type 'g5.xlarge'; the catalog has: aws on_demand" in (
        result.stderr
    )
    assert result.stderr.count("\n") == 1
    result = run(*args, "--pricing", "cheap")
    assert result.returncode == 2 and "--pricing: 'cheap' is not one of on_demand" in result.stderr


def test_usage_errors_are_one_line_too() -> None:
    result = run("breakeven", "--prompt-tokens", "1M")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--generation-tokens" in result.stderr and "auditor breakeven --help" in result.stderr
    assert run("breakeven", "--bogus").returncode == 2


def test_config_check_prints_the_effective_config() -> None:
    result = run("config", "check", "--config", str(EXAMPLE), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["deployments"][0]["name"] == "llama-70b-chat"
    assert data["rules"]["move_to_api"]["below"] == 0.4


def test_config_check_reports_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "auditor.toml"
    text = EXAMPLE.read_text().replace('"openai:gpt-4o",\n', '"openai:gpt-4oo",\n', 1)
    bad.write_text(text.replace("below = 0.40", "below = 1.5").replace("[slack]", "[slack]\ncolour = 1"))
    result = run("config", "check", "--config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert any("rules.move_to_api.below" in line and "(got '1.5')" in line for line in lines)
    assert any("slack.colour: unknown key" in line for line in lines)
    bad.write_text(text)
    result = run("config", "check", "--config", str(bad))
    assert result.returncode == 2
    assert "deployments[0].compare_to[0]: unknown API model 'openai:gpt-4oo'; did you mean" in result.stderr


def test_config_check_without_a_file() -> None:
    result = run("config", "check", "--config", "/nonexistent/auditor.toml")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "auditor: error: config file /nonexistent/auditor.toml not found: pass --config FILE or set "
        "AUDITOR_CONFIG (systemd/auditor.example.toml is a commented example)"
    )


def test_prices_lists_both_catalogs_and_warns_of_stale_gpu_prices() -> None:
    result = run("prices", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    p5 = next(r for r in data["gpu"] if r["instance_type"] == "p5.48xlarge" and r["pricing"] == "on_demand")
    assert p5["gpu_hourly_usd"] == 6.88 and p5["as_of"] and p5["source_url"].startswith("https://")
    gpt4o = next(r for r in data["api"] if r["provider"] == "openai" and r["model"] == "gpt-4o")
    assert (gpt4o["input_mtok_usd"], gpt4o["output_mtok_usd"]) == (2.5, 10.0)
    assert gpt4o["source"].startswith("genai-prices ")
    # The GCP list price of 2023-03-24 is years old: flagged, in the data and on stderr.
    assert any(r["stale"] for r in data["gpu"])
    assert "older than 180 days" in result.stderr


def test_prices_for_one_provider() -> None:
    result = run("prices", "--provider", "together")
    assert result.returncode == 0
    assert "meta-llama/Llama-3-70b-chat-hf" in result.stdout
    result = run("prices", "--provider", "nobody")
    assert result.returncode == 2 and "no prices for 'nobody'; providers:" in result.stderr


def test_version() -> None:
    result = run("version")
    assert result.returncode == 0 and result.stdout.startswith("gpu-auditor ")
