"""Secrets never leak, names never inject, reports honour the umask, `status` says what is down (issue 13)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from auditor.model import ServerSample
from auditor.redact import redact
from auditor.store import Store
from reports.files import write_atomic
from reports.markdown import md
from reports.slack import escape_mrkdwn
from tests.hostkit import (
    AUDITOR,
    HOST,
    THREE_GPUS,
    VllmServer,
    daemon_env,
    write_config,
)

SLACK_TOKEN = "xoxb-111111111111-222222222222-SlackTokenSecretValue"  # noqa: S105  (made to be found)
WEBHOOK_URL = "https://hooks.slack.com/services/T0SECRET1/B0SECRET2/WebhookSecretPathValue"
AWS_KEY_ID = "AKIAIOSFODNN7SECRETX"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSecretAwsKey"  # noqa: S105
DSN_PASSWORD = "DsnPassw0rdSecret"  # noqa: S105
SCRAPE_PASSWORD = "ScrapePassw0rdSecret"  # noqa: S105
SECRETS = (SLACK_TOKEN, WEBHOOK_URL, AWS_KEY_ID, AWS_SECRET, DSN_PASSWORD, SCRAPE_PASSWORD)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql+psycopg://auditor:hunter2pass@db:5432/x", "hunter2pass"),
        ("connect to postgres://u:p%40ss@db failed", "p%40ss"),
        ("host=db user=auditor password=hunter2pass dbname=x", "hunter2pass"),
        (f"Sending a request - url: {WEBHOOK_URL}", "WebhookSecretPathValue"),
        (f"token {SLACK_TOKEN} rejected", "SlackTokenSecretValue"),
        ("Authorization: Bearer abcdefghijklmnop", "abcdefghijklmnop"),
        (f"key {AWS_KEY_ID}", AWS_KEY_ID),
        ("https://s3.amazonaws.com/b/k?X-Amz-Signature=deadbeefcafe&x=1", "deadbeefcafe"),
    ],
)
def test_redaction_by_shape(text: str, secret: str) -> None:
    assert secret not in redact(text)


def test_redaction_keeps_what_is_not_secret() -> None:
    plain = "http://127.0.0.1:8000/metrics answered HTTP 500; postgresql+psycopg://auditor@db:5432/x"
    assert redact(plain) == plain


def test_names_are_escaped_in_markdown_and_slack() -> None:
    name = "<img src=x onerror=alert(1)> [click](http://evil) <!channel> <@U123|boss>"
    assert "<" not in md(name) and "[click](" not in md(name)
    escaped = escape_mrkdwn(name)
    assert "<!channel>" not in escaped and "<@U123" not in escaped and "&lt;!channel&gt;" in escaped


def test_reports_honour_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        private = write_atomic(tmp_path / "private.csv", "a,b\n")
    finally:
        os.umask(old)
    os.umask(0o022)
    try:
        shared = write_atomic(tmp_path / "shared.csv", "a,b\n")
    finally:
        os.umask(old)
    assert private.stat().st_mode & 0o777 == 0o600
    assert shared.stat().st_mode & 0o777 == 0o644


def test_status_says_which_source_is_down_and_since_when(tmp_path: Path) -> None:
    up_url, down_url = "http://127.0.0.1:8001/metrics", "http://127.0.0.1:8002/metrics"
    config = write_config(tmp_path, servers=[up_url, down_url], interval_s=60)
    now = time.time()
    store = Store.open(f"sqlite:///{tmp_path / 'auditor.db'}")
    store.add_server_samples(
        [
            ServerSample(ts=now - 1, host=HOST, deployment="llama", instance=up_url, requests_running=4),
            ServerSample(ts=now - 240, host=HOST, deployment="llama", instance=down_url, requests_running=4),
        ]
    )
    store.close()
    env = {k: v for k, v in os.environ.items() if k != "AUDITOR_CONFIG"}
    result = subprocess.run(
        [str(AUDITOR), "status", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    sources = {s["source"]: s for s in json.loads(result.stdout)["sources"]}
    assert sources[up_url]["state"] == "up"
    assert sources[down_url]["state"] == "down"
    assert sources[down_url]["down_since_ts"] == pytest.approx(now - 240)
    table = subprocess.run(
        [str(AUDITOR), "status", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert f"DOWN  inference {down_url}: no sample since" in table.stdout
    assert f"DOWN  inference {up_url}" not in table.stdout


def _wait_for_samples(url: str, process: subprocess.Popen[bytes], deadline_s: float = 120) -> None:
    """Until the daemon has migrated the store and written a few GPU samples: a fixed sleep was too
    short on a loaded machine (the daemon stopped mid-migration and the report had nothing)."""
    engine = create_engine(url)
    give_up = time.monotonic() + deadline_s
    try:
        while time.monotonic() < give_up and process.poll() is None:
            try:
                with engine.connect() as conn:
                    if conn.execute(text("SELECT count(*) FROM gpu_samples")).scalar_one() >= 6:
                        return
            except SQLAlchemyError:
                pass  # no table yet: the daemon is still migrating
            time.sleep(0.5)
    finally:
        engine.dispose()
    process.kill()
    pytest.fail(f"the daemon wrote no GPU samples within {deadline_s:.0f} s (exit {process.wait()})")


@pytest.mark.slow
def test_no_secret_in_any_log_line_or_report_file(tmp_path: Path, postgres_url: str) -> None:
    """A run configured with a Slack token, a webhook URL, AWS keys, a PostgreSQL DSN with a password
    and an endpoint password: the daemon at debug level, then every command a person would run; all
    output and every report file are searched for each secret."""
    out = tmp_path / "reports"
    name = f"secrets_{os.getpid()}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    # The test server trusts loopback: the password is never checked, only every line that could show it.
    base = postgres_url.rsplit("/", 1)[0]
    dsn = base.replace("auditor@", f"auditor:{DSN_PASSWORD}@") + f"/{name}"
    secrets_env = {
        "SLACK_BOT_TOKEN": SLACK_TOKEN,
        "SLACK_WEBHOOK_URL": WEBHOOK_URL,
        "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    }
    logs: list[str] = []
    with VllmServer() as server:
        scrape_url = server.url.replace("http://", f"http://scraper:{SCRAPE_PASSWORD}@")
        config = write_config(tmp_path, servers=[scrape_url], slack_channel=True)
        body = config.read_text().replace(f'url = "sqlite:///{tmp_path / "auditor.db"}"', f'url = "{dsn}"')
        body = body.replace("[slack]\n", '[slack]\nwebhook_url_env = "SLACK_WEBHOOK_URL"\n')
        assert dsn in body
        config.write_text(body)
        config.chmod(0o600)
        env = daemon_env(tmp_path, THREE_GPUS, **secrets_env)
        daemon = [str(AUDITOR), "daemon", "--config", str(config), "--log-level", "debug"]
        # Its output goes to a file, not a pipe: debug logging fills a pipe's 64 KiB long before the
        # test reads it, and the daemon then blocks on a write (it did, mid-migration).
        daemon_log = tmp_path / "daemon.log"
        with (
            daemon_log.open("wb") as sink,
            subprocess.Popen(daemon, env=env, stdout=sink, stderr=subprocess.STDOUT) as process,
        ):
            _wait_for_samples(postgres_url.rsplit("/", 1)[0] + f"/{name}", process)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        logs.append(daemon_log.read_text())
        month = time.strftime("%Y-%m", time.gmtime())
        for command in (
            ["config", "check"],
            ["doctor"],
            ["doctor", "--json"],
            ["status"],
            ["status", "--json"],
            ["rules", "check"],
            ["digest"],
            ["report", "--month", month, "--out", str(out)],
            ["--debug", "report", "--month", "0000-01"],
        ):
            result = subprocess.run(
                [str(AUDITOR), *command, "--config", str(config)],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
                check=False,
            )
            logs += [result.stdout, result.stderr]
    broken = tmp_path / "broken.toml"
    broken.write_text(f'[store]\nurl = "{dsn.rsplit(":", 1)[0]}:1/x"\n')  # the same DSN, unreachable
    broken.chmod(0o600)
    for command in (["--debug", "status"], ["status"]):
        result = subprocess.run(
            [str(AUDITOR), *command, "--config", str(broken)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        logs += [result.stdout, result.stderr]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".html" for p in files), logs
    everything = "\n".join(logs) + "\n".join(p.read_bytes().decode("utf-8", "replace") for p in files)
    assert "DEBUG" in everything and "Traceback" in everything  # debug logs and --debug tracebacks were there
    for secret in SECRETS:
        assert secret not in everything, secret
