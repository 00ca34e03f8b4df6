"""The wall clock jumps under the real daemon (libfaketime moves CLOCK_REALTIME, the monotonic clock goes
on): sampling goes on, nothing is counted twice, and the jump's time is unknown (issue 13)."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.hostkit import (
    LIBFAKETIME,
    THREE_GPUS,
    VllmServer,
    daemon_env,
    daemon_process,
    faketime_env,
    write_config,
)

pytestmark = pytest.mark.skipif(
    LIBFAKETIME is None, reason="libfaketime is not installed (Debian package faketime; .ci/run installs it)"
)


def wait_for(predicate: object, timeout_s: float) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_a_wall_clock_set_back_and_forward(tmp_path: Path) -> None:
    offset = tmp_path / "offset"
    offset.write_text("+0\n")
    db = tmp_path / "auditor.db"
    with VllmServer() as vllm:
        config = write_config(tmp_path, servers=[vllm.url], interval_s=1.0)
        env = daemon_env(tmp_path, THREE_GPUS, **faketime_env(offset))
        with daemon_process(config, env) as process:
            assert wait_for(lambda: sampled(db, 3), 60)
            before = rows(db, "SELECT MAX(ts) FROM gpu_samples")[0][0]
            written = count(db, "gpu_samples")
            up_to_then = count(db, "gpu_samples", f"ts <= {before!r}")
            offset.write_text("-120\n")  # set back two minutes
            time.sleep(5)
            # Sampling went on (the scheduler was rescheduled from the new time), in the series' own time.
            written_while_behind = count(db, "gpu_samples") - written
            offset.write_text("+0\n")  # and forward again, two minutes
            time.sleep(4)
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "the wall clock jumped by -120 s" in stderr
    assert "the wall clock jumped by +120 s" in stderr
    assert "behind samples already written" in stderr
    assert "the wall clock has caught up" in stderr
    assert written_while_behind >= 3 * 3  # three GPUs, at least three passes in five seconds
    assert count(db, "gpu_samples", f"ts <= {before!r}") == up_to_then  # nothing stamped in the past
    # Each series' stamps only go forward as written: no interleaved timelines.
    stamps: dict[str, list[float]] = {}
    for uuid, ts in rows(db, "SELECT gpu_uuid, ts FROM gpu_samples ORDER BY rowid"):
        stamps.setdefault(str(uuid), []).append(ts)
    for series in stamps.values():
        assert series == sorted(series) and len(set(series)) == len(series)
    # Tokens: never more than the counter grew (nothing counted twice), and no gap opened by the jumps
    # (the series went on in its own time): nearly all of it.
    counters = [c for (c,) in rows(db, "SELECT prompt_tokens_total FROM server_samples ORDER BY rowid")]
    counted, smallest = rows(db, "SELECT SUM(prompt_tokens), MIN(prompt_tokens) FROM deployment_minutes")[0]
    increase = counters[-1] - counters[0]
    assert 0.8 * increase <= counted <= increase
    assert smallest >= 0


def sampled(db: Path, at_least: int) -> bool:
    """The daemon has written this many server samples (its store may still be being created)."""
    try:
        return db.exists() and count(db, "server_samples") >= at_least
    except sqlite3.OperationalError:
        return False


def count(db: Path, table: str, where: str = "1") -> int:
    return int(rows(db, f"SELECT COUNT(*) FROM {table} WHERE {where}")[0][0])  # noqa: S608  (test-made SQL)
