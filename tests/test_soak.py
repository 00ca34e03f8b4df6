"""The soak with faults (bench/soak.py), short: the real daemon through every injected fault (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import RATE, run_soak
from tests.hostkit import LIBFAKETIME


@pytest.mark.slow
@pytest.mark.skipif(
    LIBFAKETIME is None, reason="libfaketime is not installed (Debian faketime; .ci/run installs it)"
)
def test_a_short_soak_with_faults_keeps_what_was_observed_and_nothing_else(tmp_path: Path) -> None:
    result = run_soak(minutes=2, interval_s=1.0, directory=tmp_path)
    summary = f"\n{result!r}"
    assert result.unexpected_exits == [], summary  # no crash, no crash loop: every exit was one we caused
    assert result.tracebacks == 0, summary
    assert result.restarts == 2
    assert result.clock_jumps_logged >= 2, summary  # set back, then forward: both seen and survived
    # Tokens: what was observed is counted at the injected rate, through garbage, a 50 MB body, a body
    # that never ends, an outage and a counter reset on mistral's endpoint, three restarts of the
    # daemon and the clock set back; what was not observed is not guessed.
    for endpoint in (result.llama, result.mistral):
        assert endpoint.observed_s > 30, summary
        assert endpoint.negative_minutes == 0, summary
        assert abs(endpoint.counted - endpoint.expected) <= 0.02 * endpoint.expected + RATE * 10, summary
    assert result.a_max_gap_during_faults_s < 3.0, summary  # llama kept its cadence meanwhile
    # GPU time: observed = the run less the injected unknown time (GPU 3 and GPU 5 lost, NVML's failed
    # init, the restarts), within a few sampling gaps per boundary; never more than the run.
    for index in range(8):
        assert result.gpu_observed_s[index] <= result.gpu_truth_s + 3.0, summary
        assert abs(result.unexplained_s(index)) <= result.gpu_allowance_s[index], summary
    assert result.gpu_observed_s[3] < min(result.gpu_observed_s[i] for i in (0, 1, 2)), summary
    # Slack, through a 429 storm and an outage: nothing twice, nothing claimed sent that Slack lacks,
    # and what Slack did not take still waits for its retry.
    assert result.outbox >= 2 and result.delivered >= 1, summary
    assert result.duplicates == 0, summary
    assert result.sent_not_in_slack == 0, summary
    assert result.pending_in_slack == 0, summary
    assert result.pending_without_retry == 0, summary
    assert result.slack_dropped >= 1, summary  # the outage met an alert cycle
