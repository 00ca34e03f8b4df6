"""The daemon's alerting jobs, wired in the real `auditor daemon`: a missed weekly digest goes out at
start-up, once, through Slack (an incoming webhook on a local server)."""

from __future__ import annotations

import json
import signal
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from auditor.store import Store
from tests.hostkit import HOST, THREE_GPUS, daemon_env, daemon_process, free_port
from tests.scenarios import Fleet, constant
from tests.slack_server import start_slack_server


def _last_complete_week_start(now: datetime) -> datetime:
    monday = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    return monday - timedelta(days=7)


@pytest.mark.slow
def test_a_missed_digest_is_sent_at_start_up_once(tmp_path: Path) -> None:
    db = tmp_path / "auditor.db"
    config = tmp_path / "auditor.toml"
    config.write_text(f"""
[store]
url = "sqlite:///{db}"
[daemon]
sample_interval_s = 0.5
exporter_listen = "127.0.0.1:{free_port()}"
[slack]
webhook_url_env = "TEST_SLACK_WEBHOOK"
[[deployments]]
name = "llama"
model = "llama"
gpu_type = "H100"
gpus = [{{host = "{HOST}", indexes = [0, 1]}}]
compare_to = ["openai:gpt-4o"]
[deployments.price]
source = "static"
gpu_hourly_usd = 2.50
""")
    week = _last_complete_week_start(datetime.now(tz=UTC))
    store = Store.open(f"sqlite:///{db}")
    start = int(week.timestamp())
    Fleet().add(
        "llama", start, start + 7 * 86400, gpus=["GPU-a", "GPU-b"], util=constant(0.2),
        tokens_per_min=lambda _m: (20_000, 4_000), busy=constant(0.3),
    ).write(store)  # fmt: skip
    store.close()

    slack = start_slack_server()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(60)
    try:
        env = daemon_env(
            tmp_path,
            THREE_GPUS,
            TEST_SLACK_WEBHOOK=slack.webhook_url,
            NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
        )
        for _ in range(2):  # the second start must not send the same week again
            with daemon_process(config, env) as process:
                while notify.recv(4096) != b"READY=1":
                    pass
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not slack.posted("/webhook"):
                    time.sleep(0.2)
                # Time enough for a second, wrong post to arrive. (A SIGTERM during the start-up jobs
                # once hung the exit: test_daemon's lock and long-roll-up tests cover that now.)
                time.sleep(5.0)
                process.send_signal(signal.SIGTERM)
                _, stderr = process.communicate(timeout=60)
                assert process.returncode == 0, stderr
        (post,) = slack.posted("/webhook")
        text = json.dumps(post.json())
        assert "GPU cost digest" in text and "llama" in text
    finally:
        notify.close()
        slack.close()
