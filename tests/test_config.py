"""Config: the example validates; each kind of bad input is named with its key path and the fix."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from auditor.config import (
    Config,
    ConfigError,
    StaticPrice,
    default_store_url,
    load_config,
    parse_config,
    redacted,
    resolve_config_path,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "systemd" / "auditor.example.toml"

MINIMAL = """
[[deployments]]
name = "llama"
model = "meta-llama/Llama-3.3-70B-Instruct"
gpu_type = "H100"
gpus = [{ host = "gpu-01", indexes = [0, 1] }]
[deployments.price]
source = "static"
gpu_hourly_usd = 2.50
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="auditor.toml")
    return info.value.problems


def test_the_shipped_example_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert [d.name for d in config.deployments] == ["llama-70b-chat", "qwen-coder", "mistral-onprem"]
    llama = config.deployment("llama-70b-chat")
    assert llama.billed_gpus == 2
    assert llama.overheads.total_usd_month == Decimal(8410)
    assert llama.price.source == "static" and llama.price.gpu_hourly_usd == Decimal("2.50")


def test_defaults_and_exact_money() -> None:
    config = parse_config(MINIMAL)
    assert config.timezone == "UTC"
    assert config.rules.move_to_api.below == 0.40 and config.rules.self_host_pays.above == 0.65
    assert config.daemon.effective_max_gap_s == 30
    price = config.deployments[0].price
    assert isinstance(price, StaticPrice)
    assert str(price.gpu_hourly_usd) == "2.50"  # not 2.5000000001


def test_every_problem_is_reported_with_its_key_path() -> None:
    lines = problems(
        MINIMAL.replace("gpu_hourly_usd = 2.50", 'gpu_hourly_usd = -1\ncolour = "red"')
        + '\n[rules.move_to_api]\nbelow = 1.4\n[store]\nurl = "mysql://x@y/z"\n'
    )
    assert len(lines) == 4
    text = "\n".join(lines)
    assert (
        "auditor.toml: deployments[0].price.gpu_hourly_usd: Input should be greater than or equal to 0"
        in text
    )
    assert "deployments[0].price.colour: unknown key; allowed here: gpu_hourly_usd, gpus_per_instance" in text
    assert "rules.move_to_api.below: Input should be less than or equal to 1 (got '1.4')" in text
    assert "store.url: unsupported database scheme 'mysql'; use sqlite:////path" in text


def test_unknown_top_level_key_lists_the_allowed_ones() -> None:
    (line,) = problems("deployment = []\n")
    assert line == (
        "auditor.toml: deployment: unknown key; allowed here: "
        "billing, daemon, deployments, fleet, prices, report, rules, slack, store, timezone"
    )


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('timezone = "Mars/Olympus"', "timezone: unknown time zone; use an IANA name"),
        ("[rules.move_to_api]\nbelow = 0.5\nleave_above = 0.45", "leave_above must be at least below"),
        ('[rules]\nutilization_metric = "vibes"', "rules.utilization_metric: Input should be 'auto'"),
        ('[store]\nurl = "::::"', "store.url: not a database URL; use sqlite:////path/to/auditor.db"),
        (
            "[daemon]\nsample_interval_s = 0",
            "daemon.sample_interval_s: Input should be greater than or equal to",
        ),
    ],
)
def test_bad_values_name_the_fix(snippet: str, expected: str) -> None:
    assert any(expected in line for line in problems(snippet))


def test_deployment_problems() -> None:
    no_gpus = MINIMAL.replace('gpus = [{ host = "gpu-01", indexes = [0, 1] }]\n', "")
    assert any("select its GPUs" in line for line in problems(no_gpus))
    whole_host = MINIMAL.replace(", indexes = [0, 1]", "")
    assert any("set gpu_count" in line for line in problems(whole_host))
    twice = MINIMAL + MINIMAL
    assert any("deployment names must be unique; repeated: llama" in line for line in problems(twice))
    no_rate = MINIMAL.replace("gpu_hourly_usd = 2.50", "")
    assert any(
        "give one of gpu_hourly_usd, instance_hourly_usd, or instance_type" in line
        for line in problems(no_rate)
    )
    wrong_source = MINIMAL.replace('source = "static"', 'source = "azure"')
    assert any(
        "deployments[0].price" in line and "expected tags: 'static', 'aws', 'gcp', 'onprem'" in line
        for line in problems(wrong_source)
    )


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    (line,) = problems("[[deployments]\nname=")
    assert line.startswith("auditor.toml: not valid TOML:")
    with pytest.raises(ConfigError, match="not found: pass --config FILE or set AUDITOR_CONFIG"):
        load_config(tmp_path / "missing.toml")
    unreadable = tmp_path / "dir.toml"
    unreadable.mkdir()
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(unreadable)


def test_config_path_resolution() -> None:
    assert resolve_config_path(Path("a.toml"), {"AUDITOR_CONFIG": "b.toml"}) == Path("a.toml")
    assert resolve_config_path(None, {"AUDITOR_CONFIG": "b.toml"}) == Path("b.toml")
    assert resolve_config_path(None, {}) == Path("/etc/auditor/auditor.toml")


def test_default_store_location() -> None:
    assert default_store_url({"STATE_DIRECTORY": "/var/lib/auditor"}, euid=999) == (
        "sqlite:////var/lib/auditor/auditor.db"
    )
    assert default_store_url({}, euid=0) == "sqlite:////var/lib/auditor/auditor.db"
    assert default_store_url({"XDG_STATE_HOME": "/home/u/.state"}, euid=1000) == (
        "sqlite:////home/u/.state/auditor/auditor.db"
    )


def test_redaction_hides_the_store_password() -> None:
    config = Config.model_validate({"store": {"url": "postgresql+psycopg://auditor:hunter2@db:5432/auditor"}})
    shown = redacted(config)
    assert "hunter2" not in str(shown)
    assert shown["store"]["url"] == "postgresql+psycopg://auditor:***@db:5432/auditor"


def test_a_key_with_a_newline_is_one_quoted_line() -> None:
    """Found by the config fuzz test: an unknown key holding a newline split its problem in two."""
    with pytest.raises(ConfigError) as raised:
        parse_config('[store]\n"\\n" = 1\n', source="x.toml")
    assert raised.value.problems[0].startswith('x.toml: store."\\n": unknown key')
    assert all("\n" not in p for p in raised.value.problems)


def test_a_gcp_export_table_on_a_deployment_must_be_a_billing_source() -> None:
    """`price.billing_export_table` predates `[[billing.sources]]`: a source reads the export now."""
    table = "proj.billing.gcp_billing_export_v1_0123AB"
    gcp = MINIMAL.replace(
        'source = "static"\ngpu_hourly_usd = 2.50', f'source = "gcp"\nbilling_export_table = "{table}"'
    )
    (problem,) = problems(gcp)
    assert (
        f'add [[billing.sources]] with kind = "gcp_billing_export", name = "gcp", table = "{table}"'
        in problem
    )
    source = f'\n[[billing.sources]]\nkind = "gcp_billing_export"\nname = "gcp"\ntable = "{table}"\n'
    assert parse_config(gcp + source).deployments[0].price.source == "gcp"
