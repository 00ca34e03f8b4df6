"""The wheel as a GPU host gets it: what it ships, systemd/README.md's steps run against it, and the
start-up check against a `rules` distribution installed over ours (what django-rules does)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = (
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "auditor",
    "collectors",
    "rules",
    "reports",
    "systemd",
    "docs",
)
SITE = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def run(
    args: list[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=240, check=False, cwd=cwd, env=env
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the wheel, the build's output), built offline from a copy of this checkout's sources."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(origin, src / name)
    result = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            tmp,
            src,
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp.glob("gpu_auditor-*.whl")
    return wheel, result.stdout + result.stderr


def install(wheel: Path, venv: Path) -> Path:
    """A fresh venv holding the wheel; its dependencies come from this test run's environment."""
    assert run([sys.executable, "-m", "venv", "--without-pip", venv]).returncode == 0
    # A path in a .pth is appended to sys.path; the .pth files found there are not read, so this
    # environment's editable gpu-auditor stays out and only the wheel's packages are ours.
    (venv / SITE / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip: list[str | Path] = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        venv / "bin" / "python",
        "install",
        "--no-deps",
        "--no-index",
    ]
    result = run([*pip, wheel])
    assert result.returncode == 0, result.stdout + result.stderr
    return venv / "bin" / "auditor"


def test_the_wheel_ships_the_host_files_docs_and_license_without_warnings(built: tuple[Path, str]) -> None:
    wheel, output = built
    assert "would be ignored" not in output
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in (
        "auditor/host_files/auditor.service",
        "auditor/host_files/auditor.example.toml",
        "auditor/host_files/auditor.env.example",
        "auditor/host_files/README.md",
        "auditor/docs/host.md",
        "auditor/docs/formulas.md",
        "reports/templates/month.html.j2",
        "collectors/data/azure_conv_10min.csv",
        "auditor/data/gpu_prices.csv",
    ):
        assert shipped in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("systemd/", "docs/", "bench/", "tests/")) for n in names)


def readme_steps() -> list[str]:
    text = (ROOT / "systemd" / "README.md").read_text()
    block = re.search(r"## Install\n.*?```sh\n(.*?)```", text, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


# What the steps need that a test cannot do (a system user, systemd running, a live daemon).
NEEDS_THE_HOST = (
    "useradd",
    "usermod",
    "systemctl",
    "journalctl",
    "sudoedit",
    "curl",
    "chgrp",
    "systemd-analyze security",
)


def translate(line: str, *, venv: Path, etc: Path, units: Path, state: Path, wheel: Path) -> str | None:
    """One README line as this test runs it: no sudo, no owner flags, its paths under a temp dir."""
    line = re.sub(r"^sudo (-u auditor )?", "", line)
    if line.startswith(NEEDS_THE_HOST):
        return None
    if line.startswith("python3 -m venv /opt/gpu-auditor/venv"):
        return None  # `install` made it: a venv without pip, its dependencies from this environment
    if "/bin/pip install /path/to/gpu-auditor" in line:
        return f"test -x {venv}/bin/auditor  # installed from {wheel.name}"
    if line.startswith("systemd-analyze verify") and shutil.which("systemd-analyze") is None:
        return None
    line = line.replace(" -o root -g auditor", "")
    for real, here in (
        ("/opt/gpu-auditor/venv", venv),
        ("/etc/systemd/system", units),
        ("/etc/auditor", etc),
        ("/var/lib/auditor", state),
    ):
        line = line.replace(real, str(here))
    return line


def test_the_systemd_readme_steps_work_on_the_wheel(built: tuple[Path, str], tmp_path: Path) -> None:
    wheel, _ = built
    venv, etc, units, state = tmp_path / "venv", tmp_path / "etc", tmp_path / "units", tmp_path / "state"
    units.mkdir()
    state.mkdir()
    auditor = install(wheel, venv)
    steps = [
        s
        for line in readme_steps()
        if (s := translate(line, venv=venv, etc=etc, units=units, state=state, wheel=wheel)) is not None
    ]
    assert any("auditor init" in s for s in steps) and any("doctor" in s for s in steps)
    env = {k: v for k, v in os.environ.items() if k not in {"AUDITOR_CONFIG", "STATE_DIRECTORY"}}
    env["HOME"] = str(tmp_path / "home")  # a shell's default store would be here: doctor must not use it
    env["AUDITOR_HOST"] = "gpu-01"
    *setup, doctor = steps
    assert "auditor doctor" in doctor, "doctor is the last step this test can run"
    script = "set -e\n" + "\n".join(setup) + "\n"
    result = run(["bash", "-c", script], cwd=tmp_path, env=env)
    assert result.returncode == 0, f"{script}\n{result.stdout}\n{result.stderr}"
    assert "config OK" in result.stdout
    checked = run(["bash", "-c", doctor], cwd=tmp_path, env=env)
    # It fails here (no NVML, no inference server, no Slack token), one line per check.
    assert checked.returncode == 1, checked.stderr
    # doctor read the service's store ($STATE_DIRECTORY), not the shell's ~/.local/state.
    assert f"store: sqlite:///{state / 'auditor.db'}" in checked.stdout
    assert ".local/state" not in checked.stdout

    unit = (units / "auditor.service").read_text()
    assert f"ExecStart={auditor} daemon --config {etc / 'auditor.toml'}\n" in unit
    assert f"EnvironmentFile=-{etc / 'auditor.env'}\n" in unit
    documentation = re.search(r"^Documentation=file://(.+)$", unit, re.M)
    assert documentation is not None and Path(documentation.group(1)).is_file()
    assert str(venv) in documentation.group(1)  # the docs of the installed wheel, not of a checkout


def test_a_rules_distribution_installed_over_ours_stops_the_tool(
    built: tuple[Path, str], tmp_path: Path
) -> None:
    wheel, _ = built
    auditor = install(wheel, tmp_path / "venv")
    other = tmp_path / "django-rules"
    (other / "rules").mkdir(parents=True)
    (other / "rules" / "__init__.py").write_text("from .rulesets import RuleSet  # django-rules' own\n")
    (other / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "rules"\nversion = "3.5"\n[tool.setuptools]\npackages = ["rules"]\n'
    )
    pip: list[str | Path] = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        tmp_path / "venv" / "bin" / "python",
        "install",
    ]
    result = run([*pip, "--no-deps", "--no-index", "--no-build-isolation", other])
    assert result.returncode == 0, result.stdout + result.stderr
    broken = run([auditor, "rules", "check"])
    assert broken.returncode == 1
    (line,) = broken.stderr.splitlines()
    assert line.startswith(f"auditor: error: the 'rules' package at {tmp_path / 'venv' / SITE / 'rules'}")
    assert "belongs to rules 3.5" in line and "pip uninstall rules" in line
