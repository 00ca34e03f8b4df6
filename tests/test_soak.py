"""The soak with faults (bench/soak.py), short: the real daemon through every injected fault (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import run_soak


@pytest.mark.slow
def test_a_short_soak_with_faults_loses_nothing_but_unknown_time(tmp_path: Path) -> None:
    result = run_soak(minutes=1.5, interval_s=1.0, directory=tmp_path)
    assert result.unexpected_exits == []  # no crash, no crash loop: every exit was one we caused
    assert result.tracebacks == 0
    assert result.restarts == 2
    # Nothing invented, and nothing lost beyond what grew across the restarts' gaps (unknown time).
    assert result.a_increase - result.a_unknown <= result.a_counted <= result.a_increase
    assert result.b_negative_minutes == 0  # the endpoint's restart is a counter reset, not negative tokens
    assert result.b_counted > 0
    # Garbage, a 50 MB body, a body that never finishes and an outage on mistral's endpoint: llama's
    # samples kept their cadence.
    assert result.a_max_gap_during_faults_s < 3.0
    healthy = [n for i, n in result.gpu_samples.items() if i != 3]
    assert min(healthy) > result.gpu_samples[3]  # GPU 3 was lost for a while: fewer samples, not zeros
