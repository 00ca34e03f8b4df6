"""Inference servers' /metrics: the catalog against real texts, and the collector against a local server."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.rollup import run_rollup
from auditor.store import Store
from collectors.inference import Endpoint, InferenceCollector, parse_server_metrics
from collectors.interface import CollectorError
from collectors.metric_catalog import CATALOG, entries
from tests.hostkit import SERVING, VllmServer, free_port

FIXTURES = {
    "vllm": SERVING / "datadog_vllm_metrics.txt",
    "sglang": SERVING / "sglang_docs_metrics_example.txt",
    "tgi": SERVING / "tgi_payload_excerpt.txt",
}


@pytest.mark.parametrize("server", ["vllm", "sglang", "tgi"])
def test_catalog_matches_the_real_text_both_ways(server: str) -> None:
    text = FIXTURES[server].read_text()
    parsed = parse_server_metrics(text)
    assert parsed.kind == server
    names = {e.source for e in entries(server)}
    # Every catalog name for this server is in its real text, and the parser read exactly those.
    assert parsed.recognised == names
    for name in names:
        assert f"\n{name}" in "\n" + text
    # Every field the catalog fills for this server came out of the text.
    assert set(parsed.values) == {e.field for e in entries(server)}


def test_every_catalog_entry_belongs_to_a_fixture() -> None:
    assert {e.server for e in CATALOG} == set(FIXTURES)
    assert len({(e.server, e.source) for e in CATALOG}) == len(CATALOG)


def test_vllm_values_and_model_name() -> None:
    parsed = parse_server_metrics(FIXTURES["vllm"].read_text())
    assert parsed.model_name == "facebook/opt-125m"
    assert parsed.values == {
        "prompt_tokens_total": 5.0,
        "generation_tokens_total": 7.0,
        "requests_running": 0.0,
        "requests_waiting": 0.0,
        "kv_cache_usage": 0.0,
        "prefill_seconds_total": 0.2140041133388877,  # the phase histograms' sums
        "decode_seconds_total": 0.6237391703762114,
    }


def test_vllm_new_kv_cache_name_wins_and_old_name_alone_is_read() -> None:
    text = FIXTURES["vllm"].read_text()
    both = text.replace(
        'vllm:kv_cache_usage_perc{model_name="facebook/opt-125m"} 0.0',
        'vllm:kv_cache_usage_perc{model_name="facebook/opt-125m"} 0.42',
    )
    assert parse_server_metrics(both).values["kv_cache_usage"] == 0.42
    old_only = "\n".join(line for line in text.splitlines() if "kv_cache_usage_perc" not in line) + "\n"
    old_only = old_only.replace(
        'vllm:gpu_cache_usage_perc{model_name="facebook/opt-125m"} 0.0',
        'vllm:gpu_cache_usage_perc{model_name="facebook/opt-125m"} 0.3',
    )
    assert parse_server_metrics(old_only).values["kv_cache_usage"] == 0.3


def test_sglang_values() -> None:
    parsed = parse_server_metrics(FIXTURES["sglang"].read_text())
    assert parsed.model_name == "meta-llama/Llama-3.1-8B-Instruct"
    assert parsed.values["prompt_tokens_total"] == 8_128_902
    assert parsed.values["generation_tokens_total"] == 7_557_572
    assert parsed.values["requests_running"] == 162
    assert parsed.values["requests_waiting"] == 2826
    assert parsed.values["kv_cache_usage"] == 0.28


def test_tgi_token_counts_come_from_histogram_sums() -> None:
    parsed = parse_server_metrics(FIXTURES["tgi"].read_text())
    assert parsed.values["prompt_tokens_total"] == 662
    assert parsed.values["generation_tokens_total"] == 3423
    assert "kv_cache_usage" not in parsed.values  # TGI does not say: unknown


def test_model_filter_that_matches_nothing_is_a_clear_problem() -> None:
    with pytest.raises(CollectorError) as caught:
        parse_server_metrics(FIXTURES["vllm"].read_text(), model_name="other/model")
    assert caught.value.kind == "unrecognised"
    assert "other/model" in caught.value.message


def test_page_that_is_not_an_inference_server() -> None:
    with pytest.raises(CollectorError) as caught:
        parse_server_metrics("# TYPE up gauge\nup 1\n")
    assert caught.value.kind == "unrecognised"


def test_collector_scrapes_a_local_server_and_counters_advance() -> None:
    with VllmServer() as server:
        collector = InferenceCollector([Endpoint("llama", server.url, "vllm")], host="h")
        first = collector.collect()
        second = collector.collect()
    assert first.problems == ()
    a, b = first.samples[0], second.samples[0]
    assert (a.deployment, a.instance, a.server_kind, a.model_name) == (
        "llama",
        server.url,
        "vllm",
        "facebook/opt-125m",
    )
    assert a.prompt_tokens_total is not None and b.prompt_tokens_total == a.prompt_tokens_total + 50
    assert b.requests_running == 1.0


def test_down_server_gives_no_sample_and_backs_off() -> None:
    url = f"http://127.0.0.1:{free_port()}/metrics"
    collector = InferenceCollector([Endpoint("llama", url)], host="h", backoff_initial_s=60)
    first = collector.collect()
    assert first.samples == ()
    assert [p.kind for p in first.problems] == ["unreachable"]
    again = collector.collect()  # inside the backoff: not retried, still reported
    assert again.samples == () and "retrying" in again.problems[0].message


def test_restarted_server_counts_its_tokens_as_a_reset(tmp_path: Path) -> None:
    """Counters fall back to zero when vLLM restarts: the roll-up adds what came after, loses nothing."""
    store = Store.open(f"sqlite:///{tmp_path / 'a.db'}")
    clock = iter(float(t) for t in range(6000, 6100, 10))
    with VllmServer() as server:
        collector = InferenceCollector([Endpoint("llama", server.url)], host="h", clock=lambda: next(clock))
        totals = []
        for scrape in range(6):
            if scrape == 3:
                server.offset = server.scrapes  # the server restarts: its counters start again
            sample = collector.collect().samples[0]
            store.add_server_samples([sample])
            assert sample.prompt_tokens_total is not None and sample.generation_tokens_total is not None
            totals.append(sample.prompt_tokens_total + sample.generation_tokens_total)
    run_rollup(store, 5940, 6120, max_gap_s=30, idle_threshold=0.05, capacity_tokens_per_s=lambda _: None)
    served = sum(m.prompt_tokens + m.generation_tokens for m in store.deployment_minutes(5940, 6120))
    # Before the restart: +70 per scrape twice; the first scrape after it: its whole new total; then +70s.
    assert totals[3] < totals[2]
    assert served == (totals[2] - totals[0]) + totals[3] + (totals[5] - totals[3])


def test_prefill_and_decode_seconds_roll_up_as_counters_through_a_restart(tmp_path: Path) -> None:
    """vLLM's phase histograms' sums are read into the sample and rolled up like the token counters:
    increases summed, a restart's drop a reset; the quarter-hour tier keeps them."""
    store = Store.open(f"sqlite:///{tmp_path / 'a.db'}")
    clock = iter(float(t) for t in range(6000, 6100, 10))
    with VllmServer(phase_s=(0.5, 2.0)) as server:
        collector = InferenceCollector([Endpoint("llama", server.url)], host="h", clock=lambda: next(clock))
        for scrape in range(6):
            if scrape == 3:
                server.offset = server.scrapes  # restarted: the sums start again from 0
            store.add_server_samples(collector.collect().samples)
    samples = store.server_samples(0, 10_000)
    assert [s.prefill_seconds_total for s in samples] == [0.5, 1.0, 1.5, 0.5, 1.0, 1.5]
    assert [s.decode_seconds_total for s in samples] == [2.0, 4.0, 6.0, 2.0, 4.0, 6.0]
    run_rollup(store, 5400, 6300, max_gap_s=30, idle_threshold=0.05, capacity_tokens_per_s=lambda _: None)
    minutes = store.deployment_minutes(5400, 6300)
    # +0.5 twice, the whole 0.5 after the restart, then +0.5 twice: 2.5 s of prefill, 10 s of decode.
    assert sum(m.prefill_s or 0.0 for m in minutes) == 2.5
    assert sum(m.decode_s or 0.0 for m in minutes) == 10.0
    (bucket,) = store.window_buckets(5400, 6300, ["llama"])[
        "llama"
    ].values()  # a whole quarter-hour: the tier
    assert (bucket.prefill_s, bucket.decode_s) == (2.5, 10.0)
