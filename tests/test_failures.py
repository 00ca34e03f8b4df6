"""Bad or extreme input, and unavailable dependencies: one line naming the thing and the fix, never a
traceback; exit 2 for input that cannot be used, 1 for a dependency that is unavailable (issue 13)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditor.config import ConfigError, load_config
from tests.hostkit import free_port

AUDITOR = Path(sys.executable).parent / "auditor"
BREAKEVEN = ["breakeven", "--generation-tokens", "1M", "--gpus", "1"]

DEPLOYMENT = """
[[deployments]]
name = "llama"
model = "m"
gpu_type = "H100"
gpus = [{ host = "gpu-01", indexes = [0] }]
compare_to = ["openai:gpt-4o"]
[deployments.price]
source = "static"
gpu_hourly_usd = 2.50
"""


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"AUDITOR_CONFIG", "AUDITOR_DEBUG"}}
    return subprocess.run(
        [str(AUDITOR), *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=120,
        check=False,
        cwd=cwd,
    )


def one_line(result: subprocess.CompletedProcess[str], code: int, *expected: str) -> str:
    """The command failed with `code` and said so in one `auditor: error:` line holding `expected`."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("auditor: error:")]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    assert result.returncode == code, result.stderr
    return errors[0]


def config(tmp_path: Path, text: str, name: str = "auditor.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--prompt-tokens", "1e400", "--gpu-hourly-usd", "2"],
            "--prompt-tokens: '1e400' is more than 10^18",
        ),
        (["--prompt-tokens", "1e999999", "--gpu-hourly-usd", "2"], "--prompt-tokens"),
        (["--prompt-tokens", "1M", "--gpu-hourly-usd", "1e30"], "--gpu-hourly-usd: '1e30' is more than"),
        (["--prompt-tokens", "1M", "--gpu-hourly-usd", "1e400"], "--gpu-hourly-usd"),
        (["--prompt-tokens", "1M", "--gpu-hourly-usd", "2", "--hours", "1e30"], "--hours"),
        (["--prompt-tokens", "1M", "--gpu-hourly-usd", "2", "--overhead-usd-month", "9e99"], "--overhead"),
        (
            ["--prompt-tokens", "1M", "--gpu-hourly-usd", "2", "--gpus", "99999999999999999999"],
            "--gpus: must be",
        ),
        (
            ["--prompt-tokens", "1M", "--gpu-hourly-usd", "2", "--capacity-tokens-per-s", "1e308"],
            "at most 1e+12",
        ),
        (
            ["--prompt-tokens", "1M", "--gpu-hourly-usd", "2", "--capacity-tokens-per-s", "inf"],
            "at most 1e+12",
        ),
    ],
)
def test_numbers_too_large_are_bad_input(args: list[str], expected: str) -> None:
    one_line(run(*BREAKEVEN, *args), 2, expected)


@pytest.mark.parametrize("month", ["0000-01", "9999-12"])
def test_months_out_of_range_are_bad_input(tmp_path: Path, month: str) -> None:
    path = config(tmp_path, f'[store]\nurl = "sqlite:///{tmp_path / "a.db"}"\n')
    one_line(run("report", "--month", month, "--config", str(path)), 2, "--month", "1970 to 9998")


@pytest.mark.parametrize("week", ["0000-W01", "9999-W52"])
def test_weeks_out_of_range_are_bad_input(tmp_path: Path, week: str) -> None:
    path = config(tmp_path, f'[store]\nurl = "sqlite:///{tmp_path / "a.db"}"\n')
    one_line(run("digest", "--week", week, "--config", str(path)), 2, "--week", "1970 to 9998")


def test_a_binary_trace_is_bad_input(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_bytes(bytes(range(256)) * 8)
    result = run("replay", "--trace", str(trace), "--gpus", "1", "--gpu-type", "H100")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


def test_a_binary_config_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "auditor.toml"
    path.write_bytes(b"\xff\xfe\x00binary")
    one_line(run("config", "check", "--config", str(path)), 2, "not UTF-8 text")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    path = config(tmp_path, '[store]\nurl = "postgresql+psycopg://auditor:hunter2@127.0.0.1:1/x"\n')
    result = run("--debug", "status", "--config", str(path))
    assert "Traceback" in result.stderr
    assert "hunter2" not in result.stderr
    assert result.returncode == 1


def test_debug_is_listed_in_help() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "--debug" in result.stdout
    assert "AUDITOR_DEBUG" in result.stdout


UNREACHABLE_PG = 'url = "postgresql+psycopg://auditor:hunter2@127.0.0.1:1/x"'


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["report", "--month", "2026-01", "--json"],
        ["rules", "check"],
        ["digest"],
    ],
)
def test_an_unreachable_postgresql_is_one_line_and_exit_1(tmp_path: Path, command: list[str]) -> None:
    path = config(tmp_path, f"[store]\n{UNREACHABLE_PG}\n{DEPLOYMENT}")
    line = one_line(run(*command, "--config", str(path)), 1, "store", "check store.url")
    assert "hunter2" not in line


def test_the_daemon_with_an_unreachable_store_is_one_line_and_exit_1(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        f'[store]\n{UNREACHABLE_PG}\n[daemon]\nexporter_listen = "127.0.0.1:{free_port()}"\n{DEPLOYMENT}',
    )
    result = run("daemon", "--config", str(path), env={"AUDITOR_HOST": "nohost"})
    one_line(result, 1, "store")
    assert "hunter2" not in result.stderr


def test_a_read_only_store_directory_is_one_line(tmp_path: Path) -> None:
    # /proc is read-only for everyone, root included: the store's directory cannot be created there.
    path = config(tmp_path, f'[store]\nurl = "sqlite:////proc/auditor-test/a.db"\n{DEPLOYMENT}')
    one_line(run("rules", "check", "--config", str(path)), 1, "/proc/auditor-test")
    one_line(run("report", "--month", "2026-01", "--config", str(path)), 1, "/proc/auditor-test")


def test_status_on_a_wrong_path_creates_nothing(tmp_path: Path) -> None:
    store = tmp_path / "nowhere" / "auditor.db"
    path = config(tmp_path, f'[store]\nurl = "sqlite:///{store}"\n')
    one_line(run("status", "--config", str(path)), 1, "no store at", "auditor daemon")
    assert not store.parent.exists()


def test_a_postgresql_url_without_psycopg_names_the_extra(tmp_path: Path) -> None:
    blocker = tmp_path / "block"
    blocker.mkdir()
    # A `psycopg` that cannot be imported, first on the path: as if the extra were not installed.
    (blocker / "psycopg.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n"
    )
    path = config(tmp_path, f"[store]\n{UNREACHABLE_PG}\n")
    result = run("status", "--config", str(path), env={"PYTHONPATH": str(blocker)})
    one_line(result, 1, "`postgres` extra", "gpu-auditor[postgres]")


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('[daemon]\nexporter_listen = "127.0.0.1:99999"', "the port must be 1 to 65535"),
        ('[store]\nurl = "postgresql+psycopg2://u@h/d"', "unsupported database scheme 'postgresql+psycopg2'"),
        ("[store]\nraw_retention_h = 1e308", "store.raw_retention_h"),
        ("[daemon]\nsample_interval_s = inf", "daemon.sample_interval_s"),
        (DEPLOYMENT.replace("gpu_hourly_usd = 2.50", "gpu_hourly_usd = 1e308"), "gpu_hourly_usd"),
        (DEPLOYMENT.replace("openai:gpt-4o", "openai:gpt-4oo"), "compare_to[0]"),
        (
            DEPLOYMENT + DEPLOYMENT.replace('name = "llama"', 'name = "other"'),
            "a GPU belongs to one deployment",
        ),
    ],
)
def test_config_check_and_the_daemon_reject_the_same_things(
    tmp_path: Path, snippet: str, expected: str
) -> None:
    path = config(tmp_path, snippet)
    with pytest.raises(ConfigError) as caught:
        load_config(path)  # the one validation path
    assert any(expected in problem for problem in caught.value.problems)
    one_line(run("config", "check", "--config", str(path)), 2, expected)
    daemon = run("daemon", "--config", str(path), env={"AUDITOR_HOST": "nohost"})
    one_line(daemon, 2, expected)


def test_an_unsupported_scheme_never_echoes_the_password(tmp_path: Path) -> None:
    path = config(tmp_path, '[store]\nurl = "mysql://user:hunter2@db.example/x"\n')
    result = run("config", "check", "--config", str(path))
    assert result.returncode == 2
    assert "hunter2" not in result.stderr + result.stdout


def test_a_world_readable_config_with_a_password_warns(tmp_path: Path) -> None:
    path = config(tmp_path, '[store]\nurl = "postgresql://auditor:hunter2@db.example/x"\n')
    path.chmod(0o644)
    result = run("config", "check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "readable by every user and holds a password (store.url)" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    path.chmod(0o640)
    assert "readable by every user" not in run("config", "check", "--config", str(path)).stderr
