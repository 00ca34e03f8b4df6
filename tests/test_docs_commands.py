"""Every command the docs mark runnable works as printed, on the demo's store and config.

A fenced block opened with ```` ```sh runnable ```` (or ```` ```sh runnable exit=N ````) is run by bash,
`set -e`, in a scratch directory where `auditor demo --out demo --month 2026-10` has run, with
`$AUDITOR_CONFIG` naming the demo's config. Its exit status must be 0 (or N). When a plain fenced block
follows it (nothing but blank lines between), each of its lines must appear in the output in order:
`…` stands for anything, table borders and runs of spaces do not count. Key lines, not whole
outputs, so that figures can move without the docs going stale silently on what matters.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "systemd" / "README.md"]
DEMO = "auditor demo --out demo --month 2026-10"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\n", re.M | re.S)
BOX = re.compile(r"[\u2500-\u257f]")


@dataclass(frozen=True)
class Example:
    doc: str
    line: int
    script: str
    exit_code: int
    shown: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def examples() -> list[Example]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        fences = list(FENCE.finditer(text))
        for i, fence in enumerate(fences):
            info = fence.group(1).split()
            if info[:2] != ["sh", "runnable"]:
                continue
            exit_code = next((int(word[5:]) for word in info[2:] if word.startswith("exit=")), 0)
            shown: tuple[str, ...] = ()
            after = fences[i + 1] if i + 1 < len(fences) else None
            if after and not after.group(1).strip() and not text[fence.end() : after.start()].strip():
                shown = tuple(line for line in after.group(2).splitlines() if line.strip())
            found.append(
                Example(
                    doc=str(doc.relative_to(ROOT)),
                    line=text[: fence.start()].count("\n") + 1,
                    script=fence.group(2),
                    exit_code=exit_code,
                    shown=shown,
                )
            )
    return found


EXAMPLES = examples()


def normalized(text: str) -> str:
    return " ".join(BOX.sub(" ", text).split())


def missing_lines(shown: tuple[str, ...], output: str) -> list[str]:
    """The shown lines whose pieces (split at `…`) do not appear, in order, in the output."""
    flat = normalized(output)
    missing = []
    for line in shown:
        at = 0
        for piece in (normalized(p) for p in line.split("…")):
            found = flat.find(piece, at) if piece else at
            if found < 0:
                missing.append(line)
                break
            at = found + len(piece)
    return missing


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    """A scratch directory holding the demo, and the environment a reader's shell would have."""
    where = tmp_path_factory.mktemp("docs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDITOR_", "STATE_DIRECTORY"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(where / "home")
    demo = subprocess.run(
        ["bash", "-c", DEMO], cwd=where, env=env, capture_output=True, text=True, timeout=300
    )
    assert demo.returncode == 0, demo.stderr
    env["AUDITOR_CONFIG"] = str(where / "demo" / "auditor.toml")
    return where, env, demo.stdout


def test_the_readme_runs_the_demo_this_test_starts_from() -> None:
    assert any(DEMO in e.script.splitlines() for e in EXAMPLES if e.doc == "README.md")
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_documented_command(example: Example, workdir: tuple[Path, dict[str, str], str]) -> None:
    where, env, _ = workdir
    # The demo already ran (the fixture ran that very line): not again, it takes seconds.
    script = "\n".join(line for line in example.script.splitlines() if line.strip() != DEMO)
    result = subprocess.run(
        ["bash", "-c", "set -eo pipefail\n" + script],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == example.exit_code, f"{example.id}: exit {result.returncode}\n{output[-3000:]}"
    missing = missing_lines(example.shown, output)
    assert not missing, (
        f"{example.id}: not in the output:\n" + "\n".join(missing) + f"\n---\n{output[-3000:]}"
    )


def test_the_command_the_demo_prints_works_as_printed(workdir: tuple[Path, dict[str, str], str]) -> None:
    where, env, printed = workdir
    (rerun,) = [
        line.removeprefix("Re-run it: ") for line in printed.splitlines() if line.startswith("Re-run it: ")
    ]
    assert rerun.startswith("auditor report --config ")  # `auditor` is on this PATH
    env = {k: v for k, v in env.items() if k != "AUDITOR_CONFIG"}
    result = subprocess.run(
        ["bash", "-c", rerun], cwd=where, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "wrote " in result.stdout


def test_missing_lines_reads_ellipses_and_tables() -> None:
    output = (
        "│ openai:gpt-4o │  2.5/10 │ $450.00 │\nNo findings in sqlite:////tmp/x/demo/auditor.db as of 12:00"
    )
    assert (
        missing_lines(
            (" openai:gpt-4o   2.5/10  $450.00", "No findings in sqlite:///…/demo/auditor.db as of …"), output
        )
        == []
    )
    assert missing_lines(("openai:gpt-4o 2.5/10 $451.00",), output) == ["openai:gpt-4o 2.5/10 $451.00"]
