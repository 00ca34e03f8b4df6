"""The real `auditor daemon` process on the fake NVML and a local vLLM /metrics server."""

from __future__ import annotations

import logging
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from auditor.config import Config
from auditor.daemon import (
    Daemon,
    JobSpec,
    ProblemLog,
    build_scheduler,
    run,
    sd_notify,
    watchdog_interval_s,
)
from auditor.exporter import ExporterState
from auditor.model import GpuSample
from auditor.store import Store
from auditor.store import gpu_samples as gpu_samples_table
from collectors.interface import Problem
from collectors.nvml import GpuDeploymentMap, NvmlCollector
from tests.hostkit import (
    THREE_GPUS,
    DaemonProcess,
    VllmServer,
    daemon_env,
    daemon_process,
    load_fake_nvml,
    write_config,
)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def _stopped(process: DaemonProcess, timeout_s: float) -> tuple[str, float]:
    """SIGTERM the daemon and wait for it to exit: (its stderr, seconds it took)."""
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=timeout_s)
    return stderr, time.monotonic() - started


def _wait_ready(sock: socket.socket, timeout_s: float = 30) -> list[str]:
    """The daemon's messages up to READY=1 (start-up imports take a second or two)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if seen[-1] == "READY=1":
            return seen
    raise AssertionError(f"no READY=1 within {timeout_s} s: {seen}")


def _messages(sock: socket.socket) -> list[str]:
    found = []
    while True:
        try:
            found.append(sock.recv(4096).decode())
        except TimeoutError:
            return found


def test_sd_notify_writes_to_the_socket(tmp_path: Path, notify_socket: socket.socket) -> None:
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    assert _messages(notify_socket) == ["READY=1"]
    assert not sd_notify("READY=1", {})  # outside systemd: nothing to do


def test_watchdog_interval_is_half_of_watchdog_sec() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "120000000"}) == 60.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({}) is None


def test_problem_log_says_each_problem_once_and_its_recovery(caplog: pytest.LogCaptureFixture) -> None:
    book = ProblemLog()
    down = [Problem("http://x/metrics", "unreachable", "http://x/metrics is unreachable")]
    with caplog.at_level(logging.INFO, logger="auditor.daemon"):
        for _ in range(5):
            book.update("inference", down)
        book.update("inference", [])
        book.update("inference", [])
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "inference: http://x/metrics is unreachable",
        "inference: http://x/metrics recovered (unreachable)",
    ]


def test_jobs_come_from_a_list_and_more_can_be_added() -> None:
    calls: list[str] = []
    jobs = [
        JobSpec("a", lambda: calls.append("a"), interval_s=60),
        JobSpec("digest", lambda: calls.append("d"), cron={"day_of_week": "mon", "hour": 9}),
    ]
    scheduler = build_scheduler(jobs, "UTC")
    assert sorted(j.id for j in scheduler.get_jobs()) == ["a", "digest"]
    with pytest.raises(ValueError, match="neither"):
        build_scheduler([JobSpec("x", lambda: None)], "UTC")


def _rows(db: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(query).fetchall()


def test_daemon_samples_rolls_up_and_exits_on_sigterm(tmp_path: Path, notify_socket: socket.socket) -> None:
    script = {"gpus": [{"profile": "h100_load"}, {"profile": "h200_idle", "lost_after_s": 1.5}]}
    with VllmServer() as server:
        config = write_config(tmp_path, servers=[server.url])
        env = daemon_env(
            tmp_path, script, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="1000000"
        )
        with daemon_process(config, env) as process:
            ready = _wait_ready(notify_socket)
            time.sleep(4)
            assert process.poll() is None, process.stderr_text()
            stderr, took = _stopped(process, timeout_s=10)
    assert process.returncode == 0, stderr
    assert took < 5, f"took {took:.1f} s to stop"
    messages = ready + _messages(notify_socket)
    assert "READY=1" in messages and "WATCHDOG=1" in messages and "STOPPING=1" in messages
    # One line for the lost GPU, however many passes it stayed lost.
    assert stderr.count("GPU is lost") == 1, stderr
    assert "Traceback" not in stderr
    db = tmp_path / "auditor.db"
    samples = _rows(db, "SELECT gpu_index, COUNT(*) FROM gpu_samples GROUP BY gpu_index ORDER BY gpu_index")
    counts = dict(samples)
    assert counts[0] >= 6  # ~8 passes in 4 s at 0.5 s
    assert counts[1] < counts[0]  # lost after 1.5 s: no samples after that, not zeros
    # The roll-ups agree with the raw samples they come from.
    observed = _rows(
        db, "SELECT gpu_index, SUM(observed_s), MAX(gpu_util) FROM gpu_minutes GROUP BY gpu_index"
    )
    by_gpu = {row[0]: row for row in observed}
    span = _rows(db, "SELECT MAX(ts) - MIN(ts) FROM gpu_samples WHERE gpu_index = 0")[0][0]
    assert by_gpu[0][1] == pytest.approx(span, abs=0.01)
    assert by_gpu[0][2] == pytest.approx(1.0)
    first, last = _rows(
        db,
        "SELECT MIN(prompt_tokens_total + generation_tokens_total),"
        " MAX(prompt_tokens_total + generation_tokens_total) FROM server_samples",
    )[0]
    tokens = _rows(
        db, "SELECT SUM(prompt_tokens + generation_tokens), SUM(request_busy_s) FROM deployment_minutes"
    )[0]
    assert tokens[0] == last - first  # counter increases, all of them
    assert tokens[1] > 0  # one request running in every scrape


@pytest.mark.slow
def test_kill_9_loses_no_committed_row_and_the_next_start_carries_on(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    db = tmp_path / "auditor.db"
    with VllmServer() as server:
        config = write_config(tmp_path, servers=[server.url])
        env = daemon_env(tmp_path, THREE_GPUS, NOTIFY_SOCKET=str(tmp_path / "notify.sock"))
        with daemon_process(config, env) as process:
            _wait_ready(notify_socket)
            time.sleep(3)
            committed = _rows(db, "SELECT gpu_uuid, ts FROM gpu_samples")
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=5)
        assert len(committed) >= 9
        assert _rows(db, "PRAGMA integrity_check") == [("ok",)]
        after_kill = set(_rows(db, "SELECT gpu_uuid, ts FROM gpu_samples"))
        assert set(committed) <= after_kill
        with daemon_process(config, env) as process:
            _wait_ready(notify_socket)
            time.sleep(3)
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=10)
        assert process.returncode == 0, stderr
    assert _rows(db, "PRAGMA integrity_check") == [("ok",)]
    final = set(_rows(db, "SELECT gpu_uuid, ts FROM gpu_samples"))
    assert after_kill < final  # it carried on sampling
    # The minutes sampled before the kill were rolled up by the second run.
    first_ts = min(ts for _, ts in committed)
    assert isinstance(first_ts, float)
    minute = int(first_ts // 60 * 60)
    assert _rows(db, f"SELECT COUNT(*) FROM gpu_minutes WHERE minute_ts = {minute}")[0][0] == 3  # noqa: S608


def one_gpu_daemon(db: Path, interval_s: float = 10) -> tuple[Daemon, Store]:
    """A daemon on one fake GPU and a SQLite store, driven pass by pass."""
    config = Config.model_validate(
        {"store": {"url": f"sqlite:///{db}"}, "daemon": {"sample_interval_s": interval_s}}
    )
    store = Store.open(config.store.url)
    nvml = NvmlCollector(
        load_fake_nvml({"gpus": [{"profile": "h100_load"}]}),
        host="h",
        deployments=GpuDeploymentMap([]),
        interval_s=1,
    )
    daemon = Daemon(
        config=config, store=store, gpu_collectors=[nvml], server_collectors=[], state=ExporterState()
    )
    return daemon, store


def test_a_pass_the_store_refuses_is_kept_and_written_later(tmp_path: Path) -> None:
    daemon, store = one_gpu_daemon(tmp_path / "a.db")
    with store.engine.begin() as conn:
        gpu_samples_table.drop(conn)  # the store fails (a full disk, a broken mount)
    daemon.sample()
    daemon.sample()
    assert ("store", "store", "write_failed") in daemon.problems.active
    with store.engine.begin() as conn:
        gpu_samples_table.create(conn)
    daemon.sample()
    assert len(store.gpu_samples(0, 2e9)) == 3  # the two refused passes, then this one
    assert daemon.problems.active == {}


def test_a_store_locked_by_another_process_does_not_stall_sampling(tmp_path: Path) -> None:
    """A second process holding SQLite's write lock (a backup, `sqlite3` by hand) holds the writer, never
    the sampling: each pass still ends within its interval, and every sample is written once the lock
    goes."""
    db = tmp_path / "a.db"
    daemon, store = one_gpu_daemon(db, interval_s=1)
    daemon.sample()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock, held
    durations = []
    for _ in range(5):
        started = time.monotonic()
        daemon.sample()
        durations.append(time.monotonic() - started)
        time.sleep(0.2)
    other.execute("ROLLBACK")
    other.close()
    assert max(durations) < 1.0, durations  # the first waits up to half an interval, the rest not at all
    assert daemon.flush(15)
    assert len(store.gpu_samples(0, 2e9)) == 6  # nothing lost, nothing twice
    store.close()


def test_a_pass_hung_from_the_start_never_feeds_the_watchdog(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    """The first NVML call blocks forever: systemd must see no WATCHDOG=1, so that it restarts the daemon."""
    config = write_config(tmp_path, servers=[])
    env = daemon_env(
        tmp_path,
        {"gpus": [{"profile": "h100_load", "hang_after_s": 0}]},
        NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
        WATCHDOG_USEC="1000000",
    )
    with daemon_process(config, env) as process:
        _wait_ready(notify_socket)
        time.sleep(3)  # the main loop would ping every half second if it thought the daemon healthy
        messages = _messages(notify_socket)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert "WATCHDOG=1" not in messages, messages
    assert "did not finish" in stderr  # it exits without waiting for the stuck pass


def test_minutes_sampled_before_the_clock_jumped_forward_are_rolled_up(tmp_path: Path) -> None:
    """The roll-up re-rolls only its trailing minutes; after the wall clock jumps an hour ahead, the
    minutes sampled just before the jump must still be rolled up."""
    store = Store.open(f"sqlite:///{tmp_path / 'a.db'}")
    config = Config.model_validate({"store": {"url": f"sqlite:///{tmp_path / 'a.db'}"}})
    now = [1_800_000_000.0]  # on a minute boundary
    daemon = Daemon(
        config=config,
        store=store,
        gpu_collectors=[],
        server_collectors=[],
        state=ExporterState(),
        clock=lambda: now[0],
    )
    daemon.rollup()
    store.add_gpu_samples(
        [
            GpuSample(ts=now[0] + 10 * i, host="h", gpu_uuid="GPU-a", gpu_index=0, util_pct=50.0)
            for i in range(1, 6)
        ]
    )
    now[0] += 3600  # NTP steps the clock an hour ahead before the next roll-up
    daemon.rollup()
    (row,) = store.gpu_minutes(0, 2e9)
    assert row.observed_s == 40
    store.close()


class SignalledWhileHeld(threading.Event):
    """A stop event (the standard library's own) whose first `wait` gets SIGTERM while it holds the
    event's lock: where a signal lands, now and then, when the main loop's `stop.wait(tick)` is between
    taking that lock and letting it go (seen on loaded CI machines, where the main thread can lose the
    CPU there). Python runs the handler right then, in the main thread."""

    def __init__(self) -> None:
        super().__init__()
        self.signalled = False

    def wait(self, timeout: float | None = None) -> bool:
        if not self.signalled:
            self.signalled = True
            with cast(threading.Condition, vars(self)["_cond"]):
                signal.raise_signal(signal.SIGTERM)
        return super().wait(timeout)


@pytest.mark.timeout(30)
def test_a_sigterm_landing_while_the_main_thread_holds_a_lock_still_stops_the_daemon(tmp_path: Path) -> None:
    """A signal handler that takes a lock (setting an Event, writing a log line through the redaction
    filter) waits forever when the signal lands while the main thread holds that lock: the exit hung
    after "received SIGTERM" and never flushed."""
    daemon, store = one_gpu_daemon(tmp_path / "a.db", interval_s=0.5)
    stop = SignalledWhileHeld()
    started = time.monotonic()
    code = run(daemon, env={}, stop=stop)
    took = time.monotonic() - started
    assert stop.signalled
    assert code == 0
    assert took < 5, f"took {took:.1f} s to stop"
    assert store.gpu_samples(0, 2e9)  # the start-up pass was written
    store.close()


@pytest.mark.slow
def test_a_sigterm_during_a_long_start_up_roll_up_exits_in_time_and_loses_nothing(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    """Raw samples of 40 hours that no roll-up has seen (a daemon that died, an upgrade that dropped the
    minutes): the start-up roll-up catches up for many seconds. A SIGTERM in the middle of it must
    still exit within systemd's stop timeout (10 s), and the minutes it had not rolled up yet are
    rolled up by the next start."""
    db = tmp_path / "auditor.db"
    config = write_config(tmp_path, servers=[])
    store = Store.open(f"sqlite:///{db}")
    start = time.time() - 40 * 3600
    uuids = ("GPU-old-0", "GPU-old-1", "GPU-old-2")
    for index, uuid in enumerate(uuids):
        store.add_gpu_samples(
            [
                GpuSample(ts=start + i, host="testhost", gpu_uuid=uuid, gpu_index=index, util_pct=50.0)
                for i in range(40 * 3600)
            ]
        )
    store.close()
    env = daemon_env(tmp_path, THREE_GPUS, NOTIFY_SOCKET=str(tmp_path / "notify.sock"))
    with daemon_process(config, env) as process:
        _wait_ready(notify_socket)
        time.sleep(1)
        # The catch-up is still running: it commits its minutes at its end, all at once.
        assert _rows(db, "SELECT COUNT(*) FROM gpu_minutes") == [(0,)]
        stderr, took = _stopped(process, timeout_s=60)
    assert process.returncode == 0, stderr
    assert took < 8, f"took {took:.1f} s to stop:\n{stderr}"
    assert "Traceback" not in stderr
    sampled = dict(
        _rows(db, "SELECT gpu_uuid, COUNT(*) FROM gpu_samples WHERE gpu_uuid NOT LIKE 'GPU-old-%' GROUP BY 1")
    )
    assert len(sampled) == 3, sampled  # this run's passes were written
    # The next start's first roll-up covers every minute since the last one written.
    daemon = Daemon(
        config=Config.model_validate(
            {"store": {"url": f"sqlite:///{db}"}, "daemon": {"sample_interval_s": 0.5}}
        ),
        store=Store.open(f"sqlite:///{db}"),
        gpu_collectors=[],
        server_collectors=[],
        state=ExporterState(),
    )
    daemon.rollup()
    daemon.store.close()
    minutes = dict(_rows(db, "SELECT gpu_uuid, COUNT(*) FROM gpu_minutes GROUP BY gpu_uuid"))
    assert all(minutes[uuid] >= 40 * 60 for uuid in uuids), minutes
