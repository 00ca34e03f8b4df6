"""API prices: the bundled snapshot, config overrides, suggestions, an opt-in refresh from a local server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from auditor.config import ApiPriceOverride
from auditor.prices import ApiPriceCatalog, UnknownModelError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "genai_prices" / "data.json"
AUDITOR = Path(sys.executable).parent / "auditor"


def test_bundled_prices_match_the_design_figures() -> None:
    catalog = ApiPriceCatalog()
    gpt4o = catalog.get("openai:gpt-4o")
    assert (gpt4o.input_mtok_usd, gpt4o.output_mtok_usd) == (Decimal("2.5"), Decimal(10))
    haiku = catalog.get("claude-3-5-haiku")  # no provider: genai-prices finds it
    assert haiku.provider == "anthropic"
    assert (haiku.input_mtok_usd, haiku.output_mtok_usd) == (Decimal("0.8"), Decimal(4))
    assert catalog.get("openai:gpt-4.1-nano").input_mtok_usd == Decimal("0.1")
    together = catalog.get("together:meta-llama/Llama-3-70b-chat-hf")
    assert together.input_usd_per_token == Decimal("0.0000009")
    assert together.source.startswith("genai-prices ")


def test_overrides_win_and_private_models_join() -> None:
    catalog = ApiPriceCatalog(
        {
            "openai:gpt-4o": ApiPriceOverride(
                provider="openai",
                input_mtok_usd=Decimal(2),
                output_mtok_usd=Decimal(8),
                as_of=date(2026, 9, 1),
            ),
            "private:llama-neg": ApiPriceOverride(
                input_mtok_usd=Decimal("0.5"), output_mtok_usd=Decimal("0.7")
            ),
        }
    )
    assert catalog.get("gpt-4o").input_mtok_usd == Decimal(2)
    assert catalog.get("gpt-4o").source == "config"
    private = catalog.get("llama-neg")
    assert private.ref == "private:llama-neg" and private.output_mtok_usd == Decimal("0.7")
    assert private in list(catalog.all("private"))


def test_unknown_models_get_suggestions() -> None:
    with pytest.raises(UnknownModelError) as info:
        ApiPriceCatalog().get("anthropic:claude-3-5-haik")
    assert "anthropic:claude-3-5-haiku-latest" in info.value.suggestions
    with pytest.raises(UnknownModelError, match="unknown API model 'zzz-qqq'"):
        ApiPriceCatalog().get("zzz-qqq")


@pytest.fixture
def price_server(tmp_path: Path) -> Iterator[str]:
    """A local server with genai-prices' catalog in which GPT-4o costs $2/$8 instead of $2.50/$10."""
    providers = json.loads(FIXTURE.read_text())
    openai = next(p for p in providers if p["id"] == "openai")
    model = next(m for m in openai["models"] if m["id"] == "gpt-4o")
    model["prices"] = {"input_mtok": 2, "output_mtok": 8}
    model.pop("price_variants", None)
    (tmp_path / "data.json").write_text(json.dumps(providers))
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/data.json"
    server.shutdown()


def _breakeven_with(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(AUDITOR),
            "breakeven",
            "--prompt-tokens",
            "100M",
            "--generation-tokens",
            "20M",
            "--gpus",
            "2",
            "--gpu-hourly-usd",
            "2.5",
            "--api",
            "openai:gpt-4o",
            "--json",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "AUDITOR_CONFIG"},
    )


def test_fetch_updates_uses_the_fetched_catalog(tmp_path: Path, price_server: str) -> None:
    config = tmp_path / "auditor.toml"
    config.write_text(f'[prices]\nfetch_updates = true\nupdate_url = "{price_server}"\n')
    result = _breakeven_with(config)
    assert result.returncode == 0, result.stderr
    api = json.loads(result.stdout)["apis"][0]
    assert api["monthly_usd"] == 360.00  # 100M × $2 + 20M × $8
    assert api["price_source"].endswith("(fetched)")


def test_a_failed_update_keeps_the_bundled_prices(tmp_path: Path) -> None:
    config = tmp_path / "auditor.toml"
    config.write_text('[prices]\nfetch_updates = true\nupdate_url = "http://127.0.0.1:9/none.json"\n')
    result = _breakeven_with(config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["apis"][0]["monthly_usd"] == 450.00
    assert "could not update API prices" in result.stderr and "using the bundled snapshot" in result.stderr


def test_bundled_prices_carry_a_date_not_a_word() -> None:
    """The snapshot is dated by the newest price change in effect that it holds (not later ones)."""
    catalog = ApiPriceCatalog(now=datetime(2026, 11, 30, tzinfo=UTC))
    price = catalog.get("openai:gpt-4o")
    assert price.as_of is not None and date(2025, 1, 1) <= price.as_of <= date(2026, 11, 30)
    earlier = ApiPriceCatalog(now=datetime(2025, 6, 1, tzinfo=UTC)).get("openai:gpt-4o").as_of
    assert earlier is not None and earlier <= date(2025, 6, 1)


def test_a_private_price_without_a_config_says_where_private_prices_come_from() -> None:
    auditor = Path(sys.executable).parent / "auditor"
    args = ["breakeven", "--prompt-tokens", "1M", "--generation-tokens", "1M", "--gpus", "1"]
    env = {k: v for k, v in os.environ.items() if k != "AUDITOR_CONFIG"}
    result = subprocess.run(
        [str(auditor), *args, "--gpu-hourly-usd", "2", "--api", "private:llama-3-70b-negotiated"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "auditor: error: --api: 'private:llama-3-70b-negotiated' is a private price, read from the config's "
        '[prices.api."private:llama-3-70b-negotiated"] table; no config was read: give --config FILE or set '
        "$AUDITOR_CONFIG\n"
    )
