"""The test Prometheus itself: backfilled history answers PromQL as hand arithmetic says."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.promkit import Series, require_prometheus, running_prometheus, write_openmetrics

T0 = 1_780_000_000 - 1_780_000_000 % 3600  # an hour boundary, in the past


def test_openmetrics_text_groups_families_sorts_samples_and_ends_with_eof() -> None:
    out = io.StringIO()
    count = write_openmetrics(
        [
            Series("vllm:prompt_tokens_total", {"model_name": 'a"b'}, [(T0 + 60, 2.0), (T0, 1.0)]),
            Series("DCGM_FI_DEV_GPU_UTIL", {"gpu": "0"}, [(T0, 5.0)]),
            Series("vllm:prompt_tokens_total", {"model_name": "c"}, [(T0, 3.0)]),
        ],
        out,
    )
    assert count == 4
    assert out.getvalue().splitlines() == [
        "# TYPE vllm:prompt_tokens counter",
        f'vllm:prompt_tokens_total{{model_name="a\\"b"}} 1.0 {T0}.000',
        f'vllm:prompt_tokens_total{{model_name="a\\"b"}} 2.0 {T0 + 60}.000',
        f'vllm:prompt_tokens_total{{model_name="c"}} 3.0 {T0}.000',
        "# TYPE DCGM_FI_DEV_GPU_UTIL unknown",
        f'DCGM_FI_DEV_GPU_UTIL{{gpu="0"}} 5.0 {T0}.000',
        "# EOF",
    ]


def test_backfilled_history_answers_range_functions_resets_and_gaps(tmp_path: Path) -> None:
    require_prometheus()
    util = [(T0 + 60 * i, float(i % 10) * 10) for i in range(120) if not 30 <= i < 40]  # a 10-min gap
    # A counter that restarts at minute 60 (a server restart): 100/min, then from 0 again.
    tokens = [(T0 + 60 * i, 100.0 * i if i < 60 else 100.0 * (i - 60)) for i in range(120)]
    energy = [(T0 + 60 * i, 1e9 + 6000.0 * i) for i in range(120)]  # dcgm's counter has no _total
    series = [
        Series("DCGM_FI_DEV_GPU_UTIL", {"gpu": "0", "UUID": "GPU-a", "Hostname": "h1"}, util),
        Series("vllm:generation_tokens_total", {"model_name": "m"}, tokens),
        Series("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", {"gpu": "0", "UUID": "GPU-a"}, energy),
    ]
    with running_prometheus(series, tmp_path) as prom:
        # 10 samples at minutes 0..9 inside a left-open [10m] ending at minute 10 exclude minute 0
        # in Prometheus 3; both ends are included in 2.42 — ask at a point that avoids the edge.
        at = T0 + 60 * 9 + 30
        (avg,) = prom.query("avg_over_time(DCGM_FI_DEV_GPU_UTIL[10m])", at=at)
        assert float(avg["value"][1]) == pytest.approx(45.0)
        assert avg["metric"] == {"gpu": "0", "UUID": "GPU-a", "Hostname": "h1"}  # functions drop __name__
        # Inside the gap there are no samples: no result, not zero.
        assert prom.query("avg_over_time(DCGM_FI_DEV_GPU_UTIL[1m])", at=T0 + 60 * 35 + 30) == []
        # increase() across the restart: 59 minutes of 100 before, then 0 -> 100 after.
        (inc,) = prom.query("increase(vllm:generation_tokens_total[2m])", at=T0 + 60 * 61 + 30)
        # Samples at minutes 60 (0 after the reset) and 61 (100): a raw increase of 100 over 60 s,
        # extrapolated 30 s to the window's end but not before the counter's zero at its start.
        assert float(inc["value"][1]) == pytest.approx(100.0 * 90 / 60)
        energy_query = "increase(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION[5m]) / 1000"
        (joules,) = prom.query(energy_query, at=T0 + 60 * 9 + 30)
        assert float(joules["value"][1]) > 0
        rows = prom.query_range("DCGM_FI_DEV_GPU_UTIL", T0, T0 + 60 * 5, 60)
        assert [float(v) for _, v in rows[0]["values"]] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
