"""The one output layer (`auditor.output`): JSON and the terminal render the same typed result.

Machine formats carry money exactly; the terminal rounds it to the cent, once. Each command's JSON
keys are pinned here: a change to them is a change to a published schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from auditor.alert_jobs import make_digest
from auditor.cli import main
from auditor.config import load_config
from auditor.output import render_json, to_data
from auditor.store import Store
from auditor.units import cents, format_share, format_tokens, format_usd
from reports.json_form import WEEK_FIGURES, digest_object
from tests.test_alerts_cli import config  # noqa: F401  (the fixture: two weeks of a RAG deployment)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    code = exit_.value.code
    return code if isinstance(code, int) else 1, capsys.readouterr().out


def exact(text: str) -> Any:
    return json.loads(text, parse_float=Decimal)


def shape(data: Any) -> Any:
    """The keys of a JSON document, nested (lists by their first element)."""
    if isinstance(data, dict):
        return {k: shape(v) for k, v in data.items()}
    if isinstance(data, list):
        return [shape(data[0])] if data else []
    return None


# -- the writer --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    usd: Decimal
    share: float
    when: datetime
    unknown: Decimal | None
    hidden: str = field(default="terminal", metadata={"json": False})


def test_money_is_written_exactly_as_a_json_number() -> None:
    value = Decimal("1234.567890123456789012345678")
    text = render_json(Sample(value, 0.1 + 0.2, datetime(2026, 10, 1, tzinfo=UTC), None))
    data = exact(text)
    assert data == {
        "usd": value,
        "share": Decimal(repr(0.1 + 0.2)),
        "when": "2026-10-01T00:00:00+00:00",
        "unknown": None,
    }
    assert '"usd": 1234.567890123456789012345678' in text  # a number, not a string
    assert json.loads(text)["usd"] == pytest.approx(1234.5678901234567)  # and a plain float reader


def test_a_string_is_never_taken_for_money() -> None:
    data = {"text": "1.5", "nul": "\x00" + "2" + "\x00", "usd": Decimal("-0.10")}
    assert json.loads(render_json(data)) == {"text": "1.5", "nul": "\x002\x00", "usd": -0.1}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), Decimal("NaN"), object()])
def test_what_json_cannot_hold_is_an_error_not_a_wrong_number(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        render_json({"x": bad})


def test_terminal_only_fields_stay_out_of_json() -> None:
    assert "hidden" not in to_data(Sample(Decimal(1), 0.5, datetime(2026, 1, 1, tzinfo=UTC), None))


# -- breakeven: no store needed -------------------------------------------------------------------

BREAKEVEN = (
    "breakeven",
    "--prompt-tokens",
    "100M",
    "--generation-tokens",
    "20M",
    "--gpus",
    "3",
    "--gpu-hourly-usd",
    "2.4567",
    "--hours",
    "720",
    "--overhead-usd-month",
    "1000.005",
    "--capacity-tokens-per-s",
    "30000",
    "--api",
    "openai:gpt-4o",
    "--api",
    "anthropic:claude-3-5-haiku-latest",
)

BREAKEVEN_SCHEMA = {
    "volume": {"prompt_tokens": None, "generation_tokens": None},
    "self_hosted": {
        "gpus": None,
        "gpu_hourly_usd": None,
        "hours": None,
        "hours_basis": None,
        "monthly_usd": None,
        "overhead_usd_month": None,
        "monthly_tco_usd": None,
        "capacity_tokens_per_s": None,
        "utilization": None,
    },
    "apis": [
        {
            "provider": None,
            "model": None,
            "input_mtok_usd": None,
            "output_mtok_usd": None,
            "price_source": None,
            "monthly_usd": None,
            "savings_usd_month": None,
            "breakeven_tokens_per_month": None,
            "breakeven_utilization": None,
        }
    ],
    "verdict": None,
    "notes": [],
}


def test_breakeven_json_is_exact_and_the_table_shows_the_same_figures_to_the_cent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, text = cli(capsys, *BREAKEVEN)
    assert code == 0
    code, out = cli(capsys, *BREAKEVEN, "--json")
    assert code == 0
    data = exact(out)
    assert shape(data) == BREAKEVEN_SCHEMA
    hosted = data["self_hosted"]
    # 3 × 2.4567 × 720 = 5306.472: exact in JSON, $5,306.47 on the screen.
    assert hosted["monthly_usd"] == Decimal("5306.472")
    assert hosted["monthly_tco_usd"] == Decimal("6306.477")
    assert f"= {format_usd(hosted['monthly_usd'])}/month raw, {format_usd(hosted['monthly_tco_usd'])}" in text
    assert "$5,306.47/month raw, $6,306.48/month TCO" in text
    for api in data["apis"]:
        row = next(line for line in text.splitlines() if f"{api['provider']}:{api['model']}" in line)
        assert format_usd(api["monthly_usd"]) in row
        assert format_usd(abs(api["savings_usd_month"])) in row
        assert format_tokens(api["breakeven_tokens_per_month"]) in row
        assert format_share(api["breakeven_utilization"]) in row
        assert isinstance(api["breakeven_tokens_per_month"], int)  # a count: whole tokens
    assert data["verdict"] in " ".join(text.split())  # the same sentence, however it wraps


# -- rules check and status, on a store ------------------------------------------------------------

FINDING_KEYS = {
    "rule",
    "rules",
    "subject",
    "deployment",
    "action",
    "verdict",
    "severity",
    "title",
    "text",
    "usd_per_month",
    "basis",
    "window",
    "monthly_cost_usd",
    "figures",
    "command",
    "merged_subjects",
    "alternatives",
}
AT_STAKE_SCHEMA: dict[str, Any] = {
    "usd_per_month": None,
    "cost_usd_per_month": None,
    "deployments": None,
    "capped": [],
    "overspend_usd_per_month": None,
    "text": None,
}


def test_rules_check_json_and_table_show_the_same_dollars(
    capsys: pytest.CaptureFixture[str],
    config: Path,  # noqa: F811  (the fixture imported above)
) -> None:
    code, out = cli(capsys, "rules", "check", "--config", str(config), "--json")
    assert code == 1  # a warning
    data = exact(out)
    assert set(data) == {"now", "findings", "total_at_stake"}
    assert shape(data["total_at_stake"]) == AT_STAKE_SCHEMA
    assert all(set(f) == FINDING_KEYS for f in data["findings"])
    code, text = cli(capsys, "rules", "check", "--config", str(config))
    assert code == 1
    verdicts = [f for f in data["findings"] if f["verdict"]]
    assert verdicts
    for finding in verdicts:
        money = finding["usd_per_month"]
        assert isinstance(money, Decimal) and money != cents(money)  # exact, not rounded
        assert format_usd(money) in text
    stake = data["total_at_stake"]
    assert stake["text"] in text
    assert format_usd(stake["usd_per_month"]) in stake["text"]


def test_status_json_and_table_show_the_same_cost_rate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tests.hostkit import write_config
    from tests.test_host_cli import _populate

    path = write_config(tmp_path, servers=["http://127.0.0.1:1/metrics"])
    path.write_text(path.read_text().replace("gpu_hourly_usd = 2.50", "gpu_hourly_usd = 2.4567"))
    _populate(f"sqlite:///{tmp_path / 'auditor.db'}")
    code, out = cli(capsys, "status", "--config", str(path), "--json")
    assert code == 0
    data = exact(out)
    assert set(data) == {"window_minutes", "gpus", "deployments", "sources"}
    assert set(data["deployments"][0]) == {
        "deployment",
        "tokens_per_s",
        "cost_rate_usd_per_h",
        "cost_per_mtok_usd_1h",
        "cost_per_mtok_usd_1d",
        "idle_cost_month_usd",
        "requests_running",
        "servers_seen",
    }
    code, text = cli(capsys, "status", "--config", str(path))
    assert code == 0
    [deployment] = data["deployments"]
    rate = deployment["cost_rate_usd_per_h"]
    row = next(line for line in text.splitlines() if line.strip("│ ").startswith(deployment["deployment"]))
    assert abs(rate - Decimal("4.9134")) < Decimal("1e-20")  # 2 GPUs × $2.4567, unrounded
    assert "4.91" in [cell.strip() for cell in row.split("│")]


def test_digest_json_and_text_show_the_same_week(
    capsys: pytest.CaptureFixture[str],
    config: Path,  # noqa: F811  (the fixture imported above)
) -> None:
    code, out = cli(capsys, "digest", "--config", str(config), "--json")
    assert code == 0
    data = exact(out)
    assert set(data) == {
        "week",
        "start",
        "end",
        "timezone",
        "coverage",
        "unknown",
        "total_usd",
        "unattributed_usd",
        "deployments",
        "recommendations",
        "total_at_stake",
    }
    assert shape(data["total_at_stake"]) == AT_STAKE_SCHEMA
    code, text = cli(capsys, "digest", "--config", str(config))
    assert code == 0
    assert f"Total billed: {format_usd(data['total_usd'])}" in text
    [rag] = data["deployments"]
    assert rag["name"] == "rag" and rag["known"]
    assert data["total_at_stake"]["text"] in text
    assert cli(capsys, "digest", "--config", str(config), "--json", "--send")[0] == 2


def test_an_unknown_week_has_no_figures_in_json_either(config: Path) -> None:  # noqa: F811
    """Under `rules.min_coverage` the text and Slack show a deployment's coverage and cost only."""
    loaded = load_config(config)
    store = Store.open(loaded.store.url)
    try:
        made = make_digest(loaded, store, datetime.now(tz=UTC))
    finally:
        store.close()
    unknown = replace(made, deployments=[replace(row, min_coverage=2.0) for row in made.deployments])
    [known_row] = digest_object(made)["deployments"]
    [row] = digest_object(unknown)["deployments"]
    assert known_row["known"] and known_row["utilization"] is not None and known_row["api_equivalents"]
    assert row["known"] is False
    assert row["cost_usd"] == known_row["cost_usd"] and row["week_coverage"] == known_row["week_coverage"]
    assert all(row[key] is None for key in WEEK_FIGURES)
