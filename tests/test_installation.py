"""The tool refuses to run on someone else's `rules`, `reports` or `collectors`, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from auditor.doctor import check_packages
from auditor.installation import doc, foreign_packages, host_file

AUDITOR = Path(sys.executable).parent / "auditor"


def fake_distribution(site: Path, name: str, version: str, package: str) -> None:
    """What `pip install NAME` leaves: a top-level package and its dist-info, as django-rules does."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text("class RuleSet:\n    pass\n")
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(f"{package}\n")
    (info / "RECORD").write_text(f"{package}/__init__.py,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


def test_a_shadowed_rules_package_stops_the_tool_with_one_line(tmp_path: Path) -> None:
    fake_distribution(tmp_path, "rules", "3.5", "rules")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [str(AUDITOR), "rules", "check"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"auditor: error: the 'rules' package at {tmp_path / 'rules'}")
    assert "belongs to rules 3.5, not gpu-auditor" in lines[0]
    assert "pipx install" in lines[0] and "pip uninstall rules" in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_our_own_packages_pass() -> None:
    assert foreign_packages() == []


def test_a_package_without_our_marker_is_named_and_a_missing_one_too() -> None:
    found = {p.name: p for p in foreign_packages(("json", "no_such_package_here"))}
    assert found["json"].origin.endswith("json/__init__.py")
    assert "is not gpu-auditor's" in found["json"].message()
    assert found["no_such_package_here"].origin == "nowhere"
    assert "is missing" in found["no_such_package_here"].message()


def test_the_host_files_and_docs_are_found() -> None:
    assert "ExecStart=" in host_file("auditor.service").read_text()
    assert "[[deployments]]" in host_file("auditor.example.toml").read_text()
    assert doc("host.md").is_file()


def test_init_keeps_an_edited_config_and_prints_the_unit_for_this_installation(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "auditor.toml"
    args = [str(AUDITOR), "init", "--config", str(config)]
    first = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    assert f"ExecStart={AUDITOR} daemon --config {config}\n" in first.stdout
    assert (config.stat().st_mode & 0o777, (config.parent / "auditor.env").stat().st_mode & 0o777) == (
        0o640,
        0o600,
    )
    config.write_text("# edited\n")
    again = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0 and config.read_text() == "# edited\n"
    assert f"kept {config} (--force overwrites it)" in again.stderr
    forced = subprocess.run([*args, "--force"], capture_output=True, text=True, timeout=60, check=False)
    assert forced.returncode == 0 and "[[deployments]]" in config.read_text()


def test_init_refuses_a_config_path_that_is_not_a_file(tmp_path: Path) -> None:
    """A directory (or /dev/null) given as --config: nothing is written, not even the secrets file
    beside it (it would land in /dev)."""
    directory = tmp_path / "etc"
    directory.mkdir()
    for force in ([], ["--force"]):
        result = subprocess.run(
            [str(AUDITOR), "init", "--config", str(directory), *force],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert "exists and is not a regular file" in result.stderr
        assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [directory] and list(directory.iterdir()) == []


def test_doctor_reports_the_packages_as_ours() -> None:
    check = check_packages()
    assert (check.source, check.ok) == ("packages", True)
    assert check.detail == "rules, reports, collectors are gpu-auditor's own"
