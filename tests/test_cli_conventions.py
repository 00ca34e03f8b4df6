"""Conventions every command keeps: -h, --version, help without type metavars, completion, NO_COLOR."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.core import TyperGroup

from auditor import __version__
from auditor.cli import main
from auditor.cli.app import COMMANDS
from auditor.cli.common import command, program

AUDITOR = Path(sys.executable).parent / "auditor"


def command_paths(group: TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, sub in group.commands.items():
        if isinstance(sub, TyperGroup):
            paths.extend(command_paths(sub, (*prefix, name)))
        else:
            paths.append((*prefix, name))
    return paths


PATHS = command_paths(command())


def test_every_command_is_reached() -> None:
    assert {("breakeven",), ("rules", "check"), ("config", "check"), ("report",), ("init",)} <= set(PATHS)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "auditor")
def test_short_help_and_no_type_metavars(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*path, "-h"])
    output = capsys.readouterr().out
    assert exited.value.code == 0, output
    assert "Usage: auditor" in output
    assert re.search(r"<(bool|str|int|float|path|text)>", output, re.IGNORECASE) is None, output


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AUDITOR), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )


def test_version_option() -> None:
    result = run("--version")
    assert (result.returncode, result.stdout) == (0, f"gpu-auditor {__version__}\n")


def test_shell_completion_completes_commands() -> None:
    result = run(_AUDITOR_COMPLETE="complete_bash", COMP_WORDS="auditor bre", COMP_CWORD="1")
    assert result.stdout.split() == ["breakeven"]
    nested = run(_AUDITOR_COMPLETE="complete_bash", COMP_WORDS="auditor rules ch", COMP_CWORD="2")
    assert nested.stdout.split() == ["check"]


def test_no_color_is_honoured() -> None:
    colour = re.compile(r"\x1b\[[0-9;]*3[0-9]m|\x1b\[38;")
    forced = run("prices", "--provider", "lambda", FORCE_COLOR="1")
    assert colour.search(forced.stdout), "FORCE_COLOR should colour the table (else this test proves nothing)"
    plain = run("prices", "--provider", "lambda", FORCE_COLOR="1", NO_COLOR="1")
    assert plain.returncode == forced.returncode
    assert colour.search(plain.stdout) is None


def test_the_program_name_printed_for_the_next_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """After `make run`, `auditor` is not on PATH: printed commands name `.venv/bin/auditor`."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert program(str(AUDITOR)) == str(AUDITOR)
    monkeypatch.setenv("PATH", str(AUDITOR.parent))
    assert program(str(AUDITOR)) == "auditor"
    assert program("/usr/lib/python3/runpy.py") == "auditor"  # python -m auditor


def test_replay_shows_a_progress_bar_on_a_terminal_and_none_in_a_pipe() -> None:
    args = ("replay", "--requests-per-min", "30", "--days", "1", "--gpus", "1", "--gpu-type", "H100")
    on_terminal = run(*args, FORCE_COLOR="1")  # rich takes FORCE_COLOR for a terminal
    assert on_terminal.returncode == 0, on_terminal.stderr
    assert "\x1b[?25l" in on_terminal.stderr  # a live display started (it hides the cursor)
    piped = run(*args)
    assert piped.returncode == 0 and "\x1b[" not in piped.stderr


# -- start-up: commands are imported when used (auditor.cli.app) ------------------------------------

HEAVY = ("sqlalchemy", "pydantic", "slack_sdk", "jinja2", "prometheus_client", "pandas", "pyarrow", "boto3")


def imported_modules(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "auditor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {
        line.split("|")[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


@pytest.mark.parametrize(
    ("args", "heavy"),
    [
        (("--help",), HEAVY),
        (("--version",), HEAVY),
        # The what-if needs the config's models, not the store, Slack, the exporter or the bills.
        (
            ("breakeven", "--help"),
            ("sqlalchemy", "slack_sdk", "jinja2", "prometheus_client", "pyarrow", "boto3"),
        ),
    ],
)
def test_start_up_imports_only_what_the_command_needs(args: tuple[str, ...], heavy: tuple[str, ...]) -> None:
    modules = imported_modules(*args)
    assert "auditor.cli.app" in modules  # the measurement saw our imports
    assert not {m.split(".")[0] for m in modules} & set(heavy)


def test_the_demo_reads_its_short_bill_and_trace_without_arrow_or_pandas(tmp_path: Path) -> None:
    """Half a second of the demo's start-up: its bill is a short CSV, its trace a bundled one.

    And the console script's exit (`auditor.__main__`, which freezes the garbage collector's objects
    rather than collect them) leaves the store closed and every file whole."""
    modules = imported_modules("demo", "--out", str(tmp_path), "--month", "2026-10")
    assert "collectors.focus" in modules and "collectors.replay" in modules
    assert not {m.split(".")[0] for m in modules} & {"pandas", "pyarrow", "matplotlib", "boto3"}
    assert not list(tmp_path.glob("auditor.db-*"))  # SQLite's WAL goes with its last connection
    report = json.loads((tmp_path / "gpu-report-2026-10.json").read_text())
    assert report["month"] == "2026-10"
    assert (tmp_path / "gpu-report-2026-10.html").read_text().rstrip().endswith("</html>")


def test_the_command_table_lists_what_the_modules_register() -> None:
    """`auditor --help` lists commands from `COMMANDS` without importing them: the list and each line
    must be what the loaded commands would show."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    lazy = subprocess.run([str(AUDITOR), "--help"], capture_output=True, text=True, env=env, check=True)
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "from auditor.cli.app import command; command().main(['--help'], prog_name='auditor')",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert lazy.stdout == loaded.stdout
    assert set(command().commands) == set(COMMANDS)


@pytest.mark.parametrize("path", [p for p in PATHS if len(p) == 2], ids=" ".join)
def test_a_subcommand_of_a_group_loads_in_a_fresh_process(path: tuple[str, ...]) -> None:
    """A group (`config`) exists before the module that adds its commands is imported: the console
    script must still find them."""
    done = subprocess.run(
        [str(AUDITOR), *path, "-h"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert f"auditor {' '.join(path)}" in done.stdout


def test_a_typo_gets_a_suggestion_though_no_command_is_loaded() -> None:
    done = subprocess.run([str(AUDITOR), "stauts"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert (
        done.stderr
        == "auditor: error: No such command 'stauts'. Did you mean 'status'? (see `auditor --help`)\n"
    )


@pytest.mark.parametrize("args", [[], ["rules"]], ids=["auditor", "auditor rules"])
def test_a_bare_group_prints_its_help_and_no_empty_error(args: list[str]) -> None:
    done = subprocess.run([str(AUDITOR), *args], capture_output=True, text=True, timeout=120, check=False)
    assert "Commands" in done.stdout
    assert "error" not in done.stderr


THREADS_AFTER_NUMPY = (
    "import os, sys\n"
    "if sys.argv[1] == 'cli':\n"
    "    from auditor.__main__ import one_blas_thread\n"
    "    one_blas_thread()\n"
    "import numpy\n"
    "print(len(os.listdir('/proc/self/task')))\n"
)


@pytest.mark.skipif(
    not Path("/proc/self/task").is_dir() or len(os.sched_getaffinity(0)) < 2,
    reason="counts the process's threads in /proc; OpenBLAS starts one per core, so needs two cores",
)
def test_the_console_script_starts_numpy_with_one_blas_thread_unless_told() -> None:
    def threads(mode: str, **env: str) -> int:
        environ = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"} | env
        done = subprocess.run(
            [sys.executable, "-c", THREADS_AFTER_NUMPY, mode],
            capture_output=True,
            text=True,
            env=environ,
            check=True,
        )
        return int(done.stdout)

    assert threads("library") > 1  # OpenBLAS's default, which the console script changes
    assert threads("cli") == 1
    assert threads("cli", OPENBLAS_NUM_THREADS="2") == 2  # the user's own choice stands
