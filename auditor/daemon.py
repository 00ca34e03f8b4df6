"""`auditor daemon`: sample, roll up, keep retention, serve the exporter, talk to systemd.

Jobs run on APScheduler 3 (a BackgroundScheduler); they are data (`JobSpec`), so more can be
added from a list (`extra_jobs`: the alert cycle, the weekly digest). The main thread waits for
SIGTERM/SIGINT (acted on by a thread of its own: `SignalWatcher`) and pings systemd's watchdog while
sampling is healthy; on a signal it stops the scheduler, waits briefly for a running pass, rolls up
what was sampled, and exits within 5 s: work still running then (a long catch-up roll-up, a Slack
post) is left to roll back, and the next start does it again.

Logging goes to stderr (journald under systemd, with priorities: `auditor.logs`), one line when a
problem starts and one when it ends, never one per retry; every line is redacted.

Each job runs inside its own failure boundary (`JobGuard`): an exception becomes one log line, the
job backs off (doubling up to 15 minutes) and the other jobs, sampling first, go on. Each collector
has its own boundary too, so a failing source costs its own samples only. The daemon counts as
healthy (and feeds systemd's watchdog) only after a sampling pass has completed within the last two
intervals: a pass stuck in a driver call stops the pings, and systemd restarts the daemon.

The wall clock may jump (NTP stepping a clock that was wrong, a VM restored from a snapshot). The
scheduler's times are wall-clock times, so after a jump every job is rescheduled from the new time
(else a clock set back an hour would stop sampling for an hour). A sample is stamped with the wall
clock, but never earlier than the last sample of its series: after the clock was set back, a series
goes on in its own time (monotonic) until the clock catches up — two timelines interleaved would read
as counter resets and count tokens twice. A clock set forward leaves a gap: unknown time.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.exc import SQLAlchemyError

from auditor.config import Config
from auditor.exporter import DeploymentFigures, ExporterState
from auditor.fleet import FleetRollup
from auditor.model import MINUTE_S, GpuSample, ServerSample
from auditor.redact import redact
from auditor.rollup import minute_floor, run_rollup
from auditor.store import Store
from collectors.interface import Collection, Collector, CollectorError, Problem

log = logging.getLogger("auditor.daemon")
_S = TypeVar("_S", GpuSample, ServerSample)

STOP_DEADLINE_S = 5.0
"""From the signal to the exit at most (and the interpreter's own exit): systemd's TimeoutStopSec is 10 s."""
JOB_WAIT_S = 3.0
"""The flush's share of it: the running pass, its write and the last roll-up."""
TRAILING_ROLLUP_S = 5 * MINUTE_S
"""Each roll-up re-rolls this many trailing seconds, so that samples written late are counted."""
MAX_PENDING_ROWS = 100_000
OUTBOX_RETENTION_S = 30 * 86400
"""Alert messages already delivered are kept this long (what was sent, and when), then pruned."""
JOB_BACKOFF_MAX_S = 15 * MINUTE_S
CLOCK_JUMP_S = 2.0
"""A change of the wall clock against the monotonic clock larger than this is a jump (NTP slews
smaller corrections; it steps larger ones)."""


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A scheduled job: every `interval_s` seconds, or on a cron schedule (APScheduler's fields)."""

    name: str
    func: Callable[[], object]
    interval_s: float | None = None
    cron: Mapping[str, Any] | None = None
    run_at_start: bool = False


def sd_notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify datagram to $NOTIFY_SOCKET (absent outside systemd: a no-op)."""
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", env.get("NOTIFY_SOCKET"), exc.strerror)
        return False
    return True


def watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    """Half of systemd's WatchdogSec (from $WATCHDOG_USEC), when this process is the one watched."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


@dataclass
class ProblemLog:
    """One log line when a problem starts and one when it clears; nothing per retry."""

    active: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def update(self, collector: str, problems: Sequence[Problem]) -> None:
        now = {(collector, p.subject, p.kind): p.message for p in problems}
        for key, message in now.items():
            if key not in self.active:
                log.warning("%s: %s", collector, message)
        for key in list(self.active):
            if key[0] == collector and key not in now:
                log.info("%s: %s recovered (%s)", collector, key[1], key[2])
        self.active = {k: v for k, v in self.active.items() if k[0] != collector} | now


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.split(" (Background on this error")[0]
    return redact(text if len(text) <= limit else text[: limit - 1] + "…")


class RunningJobs:
    """The jobs running now, so that the exit can give the work in flight a little time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._names: list[str] = []

    @contextmanager
    def entered(self, name: str) -> Iterator[None]:
        with self._cond:
            self._names.append(name)
        try:
            yield
        finally:
            with self._cond:
                self._names.remove(name)
                self._cond.notify_all()

    def wait_until_idle(self, timeout_s: float) -> list[str]:
        """Wait up to `timeout_s` for every running job to end; the names of those still running."""
        with self._cond:
            self._cond.wait_for(lambda: not self._names, max(0.0, timeout_s))
            return sorted(self._names)


class JobGuard:
    """A job's failure boundary: an exception is one log line (the traceback at debug level), then
    the job waits (its interval, doubling, at most 15 minutes) before it runs again; the first run
    that works after failures says so at INFO. `backoff=False` (sampling) retries at every tick,
    logging the 1st, 2nd, 4th, 8th … failure only."""

    def __init__(
        self,
        name: str,
        func: Callable[[], object],
        *,
        base_s: float,
        backoff: bool = True,
        monotonic: Callable[[], float] = time.monotonic,
        max_s: float = JOB_BACKOFF_MAX_S,
        running: RunningJobs | None = None,
    ) -> None:
        self.name = name
        self.running = running
        self.func = func
        self.base_s = base_s
        self.backoff = backoff
        self.monotonic = monotonic
        self.max_s = max_s
        self.failures = 0
        self.next_run = 0.0

    def __call__(self) -> None:
        now = self.monotonic()
        if now < self.next_run:
            return
        try:
            if self.running is None:
                self.func()
            else:
                with self.running.entered(self.name):
                    self.func()
        except Exception as exc:
            self.failures += 1
            delay = min(self.base_s * 2 ** (self.failures - 1), self.max_s) if self.backoff else 0.0
            self.next_run = now + delay
            if self.failures & (self.failures - 1) == 0:  # 1, 2, 4, 8, …: one line per failure, not per tick
                retry = f"retrying in {delay:.0f} s" if delay else "retrying at its next run"
                log.error(
                    "job %s failed (%s: %s); %s (failure %d)",
                    self.name,
                    type(exc).__name__,
                    _one_line(exc),
                    retry,
                    self.failures,
                )
            log.debug("job %s: traceback", self.name, exc_info=True)
            return
        if self.failures:
            log.info("job %s recovered after %d failure(s)", self.name, self.failures)
        self.failures = 0
        self.next_run = 0.0


class Daemon:
    """The daemon's jobs, over a store and collectors built by the composition root."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        gpu_collectors: Sequence[Collector[GpuSample]],
        server_collectors: Sequence[Collector[ServerSample]],
        state: ExporterState,
        figures: Callable[[datetime], Sequence[DeploymentFigures]] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        extra_jobs: Sequence[JobSpec] = (),
        fleet: FleetRollup | None = None,
    ) -> None:
        self.config = config
        self.fleet = fleet
        """Fleet mode: the fleet is read from Prometheus and rolled up; nothing is sampled here."""
        if fleet is not None:
            fleet.progress = self._fleet_progress
        self.store = store
        self.gpu_collectors = list(gpu_collectors)
        self.server_collectors = list(server_collectors)
        self.state = state
        self.figures = figures
        self.clock = clock
        self.monotonic = monotonic
        self.extra_jobs = list(extra_jobs)
        self.problems = ProblemLog()
        self._pending_gpu: list[GpuSample] = []
        self._pending_server: list[ServerSample] = []
        self._rolled_once = False
        self._rolled_until: float | None = None
        self._last_pass_ts: float | None = None
        self._busy = threading.Lock()
        self._rolling = threading.Lock()
        """Held by a roll-up (the job's, the exit's): two at once would each roll up the same minutes
        (all of them since the last one written, at start-up) and the older one could commit last."""
        self._pending_lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._latest: dict[tuple[str | None, ...], tuple[float, float | None]] | None = None
        """Per series (GPU UUID; deployment and instance): its last stamp, and the monotonic time it was
        made (None: read from the store at start). None until read."""
        self._behind_s = 0.0
        """How far the wall clock is behind samples already written (0: it is not)."""

    # -- jobs -----------------------------------------------------------------------------------

    def jobs(self) -> list[JobSpec]:
        if self.fleet is not None:
            return [
                JobSpec("fleet-rollup", self.rollup, interval_s=self.fleet_interval_s, run_at_start=True),
                JobSpec("retention", self.retention, cron={"hour": 3, "minute": 17}, run_at_start=True),
                *self.extra_jobs,
            ]
        return [
            JobSpec(
                "sample", self.sample, interval_s=self.config.daemon.sample_interval_s, run_at_start=True
            ),
            JobSpec("rollup", self.rollup, interval_s=MINUTE_S, run_at_start=True),
            JobSpec("retention", self.retention, cron={"hour": 3, "minute": 17}, run_at_start=True),
            *self.extra_jobs,
        ]

    def _collect(self, collector: Collector[Any]) -> Collection[Any] | None:
        """One collector's pass inside its own failure boundary: whatever it raises costs its samples only."""
        try:
            collection = collector.collect()
        except CollectorError as exc:
            self.problems.update(collector.name, [Problem("*", exc.kind, str(exc))])
            self.state.record_errors(collector.name, [exc.kind], down=True)
            return None
        except Exception as exc:
            log.debug("%s: traceback", collector.name, exc_info=True)
            message = f"failed ({type(exc).__name__}: {_one_line(exc)})"
            self.problems.update(collector.name, [Problem("*", "internal", message)])
            self.state.record_errors(collector.name, ["internal"], down=True)
            return None
        self.problems.update(collector.name, collection.problems)
        self.state.record_errors(collector.name, [p.kind for p in collection.problems])
        now = self.clock()
        for sample in collection.samples:
            self.state.record_source(collector.name, _source_of(sample), up=True, ts=now)
        for problem in collection.problems:
            self.state.record_source(collector.name, problem.subject, up=False, ts=now)
        if collection.samples or not collection.problems:
            self.state.record_success(collector.name, now)
        else:
            self.state.record_errors(collector.name, [], down=True)  # every source failed
        return collection

    def sample(self) -> None:
        """One pass of every collector; the samples are committed before the pass ends, unless the
        store is blocked (then they wait, in order, for the writer)."""
        with self._busy:
            gpu: list[GpuSample] = []
            for gpu_collector in self.gpu_collectors:
                result = self._collect(gpu_collector)
                if result is not None:
                    gpu.extend(result.samples)
            servers: list[ServerSample] = []
            for server_collector in self.server_collectors:
                result = self._collect(server_collector)
                if result is not None:
                    servers.extend(result.samples)
            self.state.set_gpu_samples(gpu)
            gpu, servers = self._in_order(gpu, servers)
            with self._pending_lock:
                self._pending_gpu.extend(gpu)
                self._pending_server.extend(servers)
            self._start_write(wait_s=max(0.5, min(5.0, 0.5 * self.config.daemon.sample_interval_s)))
            self._last_pass_ts = self.monotonic()

    def _start_write(self, wait_s: float) -> None:
        """Write what is pending on the writer thread, and wait for it up to `wait_s` (normally it is
        done in milliseconds, and the pass ends with its samples committed). A store that blocks (a
        second process holding SQLite's write lock, a slow disk) holds the writer, never the sampling:
        while the writer is busy the passes only add to what is pending."""
        if self._writer is not None and self._writer.is_alive():
            return
        self._writer = threading.Thread(target=self._write_pending, name="store-writer", daemon=True)
        self._writer.start()
        self._writer.join(wait_s)

    def _in_order(
        self, gpu: list[GpuSample], servers: list[ServerSample]
    ) -> tuple[list[GpuSample], list[ServerSample]]:
        """The samples, each later than its series' last one. When the wall clock was set back, a
        series keeps its own time (its last stamp plus the monotonic time since) until the clock
        catches up: nothing is dropped, and no series gets two interleaved timelines (which would read
        as counter resets and count tokens twice). A series' first sample in this process comes at
        least `max_gap_s` after its last stamp in the store: what happened while no daemon ran is
        unknown, even when a clock set back makes the downtime look short."""
        if self._latest is None:
            try:
                self._latest = {
                    **{(s.gpu_uuid,): (s.ts, None) for s in self.store.last_gpu_samples_before(math.inf)},
                    **{
                        (s.deployment, s.instance): (s.ts, None)
                        for s in self.store.last_server_samples_before(math.inf)
                    },
                }
            except SQLAlchemyError:
                return gpu, servers  # the store is failing: _write says so, and this is read next time
        latest = self._latest
        now = self.monotonic()
        gap_s = self.config.daemon.effective_max_gap_s + 1.0
        ahead = 0.0

        def stamp(sample: _S, key: tuple[str | None, ...]) -> _S:
            nonlocal ahead
            last_ts, last_mono = latest.get(key, (None, None))
            ts = sample.ts
            if last_ts is not None and last_mono is None:
                ts = max(ts, last_ts + gap_s)  # this process's first: what happened since is unknown
            elif last_ts is not None and last_mono is not None and ts <= last_ts:
                ts = last_ts + max(now - last_mono, 1e-3)
                ahead = max(ahead, ts - sample.ts)
            if ts != sample.ts:
                sample = replace(sample, ts=ts)
            latest[key] = (ts, now)
            return sample

        stamped_gpu = [stamp(s, (s.gpu_uuid,)) for s in gpu]
        stamped_servers = [stamp(s, (s.deployment, s.instance)) for s in servers]
        ahead = ahead if ahead > gap_s else 0.0  # a restart's own gap, or a step NTP would slew: no line
        if ahead and not self._behind_s:
            log.warning(
                "the wall clock is %.0f s behind samples already written (it was set back): samples keep "
                "their own time until it catches up",
                ahead,
            )
        elif self._behind_s and not ahead:
            log.info("the wall clock has caught up with the samples written before it was set back")
        self._behind_s = ahead
        return stamped_gpu, stamped_servers

    def _write_pending(self) -> None:
        """Commit the pending samples (this pass's, and any the store refused before); keep them for
        the next pass on failure, at most MAX_PENDING_ROWS of each kind. Runs on the writer thread."""
        with self._pending_lock:
            gpu, servers = list(self._pending_gpu), list(self._pending_server)
        try:
            self.store.add_gpu_samples(gpu)
            with self._pending_lock:
                del self._pending_gpu[: len(gpu)]
            self.store.add_server_samples(servers)
            with self._pending_lock:
                del self._pending_server[: len(servers)]
        except SQLAlchemyError as exc:
            self.problems.update(
                "store",
                [
                    Problem(
                        "store", "write_failed", f"cannot write samples: {getattr(exc, 'orig', None) or exc}"
                    )
                ],
            )
            self.state.record_errors("store", ["write_failed"])
            with self._pending_lock:
                del self._pending_gpu[:-MAX_PENDING_ROWS]
                del self._pending_server[:-MAX_PENDING_ROWS]
                kept = len(self._pending_gpu) + len(self._pending_server)
            log.debug("store: %d samples kept in memory for the next pass", kept)
            return
        self.problems.update("store", [])

    @property
    def fleet_interval_s(self) -> float:
        return self.config.fleet.interval_s if self.config.fleet is not None else MINUTE_S

    def _fleet_progress(self) -> None:
        self._last_pass_ts = self.monotonic()

    def fleet_rollup(self) -> None:
        """Fleet mode's roll-up: Prometheus down leaves the window unknown (one log line when it starts
        failing, one when it is back) and the next run reads it again."""
        assert self.fleet is not None  # noqa: S101  (only scheduled in fleet mode)
        self._last_pass_ts = self.monotonic()  # the job ran: a hung run stops the watchdog pings
        try:
            with self._busy:
                result = self.fleet.run(self.clock())
        except CollectorError as exc:
            self.problems.update("prometheus", [Problem("prometheus", exc.kind, str(exc))])
            self.state.record_errors("prometheus", [exc.kind], down=True)
            return
        except SQLAlchemyError as exc:
            self._rollup_failed(exc)
            return
        self.problems.update("prometheus", [])
        self.problems.update("rollup", [])
        self.state.record_success("prometheus", self.clock())
        self._last_pass_ts = self.monotonic()
        if not result.skipped:
            self.update_figures()

    def _rollup_failed(self, exc: SQLAlchemyError) -> None:
        self.problems.update(
            "rollup",
            [Problem("store", "rollup_failed", f"cannot roll up: {getattr(exc, 'orig', None) or exc}")],
        )
        self.state.record_errors("rollup", ["rollup_failed"])

    def rollup(self) -> None:
        """Roll up the trailing minutes (and, the first time, everything since the last roll-up)."""
        if self.fleet is not None:
            self.fleet_rollup()
            return
        with self._rolling:
            rolled = self._roll_up_minutes()
        if rolled:
            self.update_figures()

    def _roll_up_minutes(self) -> bool:
        """The roll-up itself, under `_rolling`; False when the store refused it."""
        now = self.clock()
        end = minute_floor(now) + MINUTE_S
        max_gap_s = self.config.daemon.effective_max_gap_s
        start = minute_floor(now - max(TRAILING_ROLLUP_S, max_gap_s + MINUTE_S))
        oldest = minute_floor(now - self.config.store.raw_retention_h * 3600)
        if self._rolled_until is not None:  # the clock jumped forward: finish what came before the jump
            start = min(start, max(minute_floor(self._rolled_until - max_gap_s - MINUTE_S), oldest))
        if not self._rolled_once:
            last = self.store.last_minute_ts()
            start = min(start, max(last if last is not None else oldest, oldest))
        capacities = {d.name: d.capacity_tokens_per_s for d in self.config.deployments}
        try:
            run_rollup(
                self.store,
                start,
                end,
                max_gap_s=max_gap_s,
                idle_threshold=self.config.rules.idle_threshold,
                capacity_tokens_per_s=lambda name: capacities.get(name),
            )
        except SQLAlchemyError as exc:
            self._rollup_failed(exc)
            return False
        self.problems.update("rollup", [])
        self._rolled_once = True
        self._rolled_until = now
        return True

    def _last_rollup(self) -> None:
        """The exit's roll-up, after the job's if one is running (no figures: the exporter is stopping)."""
        with self._rolling:
            self._roll_up_minutes()

    def update_figures(self) -> None:
        if self.figures is None:
            return
        try:
            figures = self.figures(datetime.fromtimestamp(self.clock(), UTC))
        except (LookupError, ValueError, SQLAlchemyError) as exc:
            self.problems.update("costing", [Problem("costing", "failed", f"cannot cost deployments: {exc}")])
            return
        self.problems.update("costing", [])
        self.state.set_deployments(figures)

    def retention(self) -> None:
        cfg = self.config.store
        try:
            now_ts = self.clock()
            deleted = self.store.prune(
                now_ts,
                cfg.raw_retention_h * 3600,
                cfg.rollup_retention_days * 86400,
                minute_retention_s=self.store.minute_retention_s(
                    now_ts, cfg.minute_retention_days, cfg.minute_rows_max
                ),
            )
        except SQLAlchemyError as exc:
            self.problems.update(
                "retention",
                [Problem("store", "prune_failed", f"cannot prune: {getattr(exc, 'orig', None) or exc}")],
            )
            return
        try:
            deleted["outbox"] = self.store.prune_outbox(self.clock() - OUTBOX_RETENTION_S)
        except SQLAlchemyError as exc:
            self.problems.update(
                "retention",
                [
                    Problem(
                        "store",
                        "prune_failed",
                        f"cannot prune the outbox: {getattr(exc, 'orig', None) or exc}",
                    )
                ],
            )
            return
        self.problems.update("retention", [])
        if any(deleted.values()):
            log.info("retention: deleted %s", ", ".join(f"{n} {t}" for t, n in deleted.items() if n))

    # -- health ---------------------------------------------------------------------------------

    def healthy(self) -> bool:
        """A sampling pass has completed, and the last one within two intervals (plus the scrape
        deadline a pass may take). Not before the first pass: a driver call that hangs from the
        start must stop the watchdog pings too."""
        if self._last_pass_ts is None:
            return False
        daemon = self.config.daemon
        allowed = 2 * daemon.sample_interval_s + scrape_deadline_s(self.config)
        if self.fleet is not None and self.config.fleet is not None:
            fleet = self.config.fleet
            # One chunk's 13 queries, each with its retries (a catch-up reports every chunk it writes).
            allowed = 2 * fleet.interval_s + 13 * (fleet.retries + 1) * fleet.timeout_s
        return self.monotonic() - self._last_pass_ts < allowed

    def flush(self, deadline_s: float) -> bool:
        """At exit, within `deadline_s` in all: wait for a running pass, write what was sampled, roll up.

        False when a pass is stuck (in a driver call, say): the caller must exit without it.
        A roll-up that does not end in time (the start-up catch-up over many hours of samples, a store
        another process keeps locked) is left behind: its transaction rolls back when the process
        exits, and the next start rolls up every minute since the last one written, so the samples
        committed here are rolled up then.
        In fleet mode a roll-up stops before its next chunk; one still writing its chunk is left
        behind (its transaction rolls back when the process exits; the next start reads it again)."""
        deadline = time.monotonic() + deadline_s

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        if self.fleet is not None:
            self.fleet.stopping.set()
            if self._busy.acquire(timeout=deadline_s):
                self._busy.release()
            return True
        if not self._busy.acquire(timeout=deadline_s):
            log.warning("a sampling pass did not finish within %.0f s; exiting without it", deadline_s)
            return False
        self._busy.release()
        if self._writer is not None:
            self._writer.join(left())
        if self._pending_gpu or self._pending_server:
            self._start_write(wait_s=left())
        last = threading.Thread(target=self._last_rollup, name="last-rollup", daemon=True)
        last.start()
        last.join(left())
        if last.is_alive():
            log.warning(
                "the roll-up did not finish within %.0f s; exiting without it: the next start rolls up "
                "the minutes since the last one written",
                deadline_s,
            )
        return True


def scrape_deadline_s(config: Config) -> float:
    """One endpoint's whole scrape: the configured timeout, but never most of a sampling interval."""
    daemon = config.daemon
    return min(daemon.scrape_timeout_s, max(1.0, 0.8 * daemon.sample_interval_s))


def retry_cap_s(config: Config) -> float:
    """The longest wait before a failed source (an endpoint, NVML's init) is tried again: short, so
    that its unknown time ends soon after the outage does."""
    return min(60.0, max(3 * config.daemon.sample_interval_s, 10.0))


def _source_of(sample: GpuSample | ServerSample) -> str:
    return sample.gpu_uuid if isinstance(sample, GpuSample) else sample.instance


def build_scheduler(
    jobs: Sequence[JobSpec], timezone: Any, running: RunningJobs | None = None
) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(
        timezone=timezone,
        executors={"default": ThreadPoolExecutor(max_workers=4)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
    )
    now = datetime.now(UTC)
    for job in jobs:
        options: dict[str, Any] = {"id": job.name, "name": job.name, "replace_existing": True}
        if job.run_at_start:
            options["next_run_time"] = now
        guarded = JobGuard(
            job.name,
            job.func,
            base_s=job.interval_s or MINUTE_S,
            backoff=job.name != "sample",
            running=running,
        )
        if job.interval_s is not None:
            scheduler.add_job(guarded, "interval", seconds=job.interval_s, **options)
        elif job.cron is not None:
            scheduler.add_job(guarded, "cron", **dict(job.cron), **options)
        else:
            raise ValueError(f"job {job.name!r} has neither interval_s nor cron")
    return scheduler


def reschedule(scheduler: BackgroundScheduler) -> None:
    """Every job's next run computed again from the wall clock's new time: an interval job runs one
    interval from now, a cron job at its next time after now."""
    for job in scheduler.get_jobs():
        trigger = job.trigger
        if isinstance(trigger, IntervalTrigger):
            trigger = IntervalTrigger(seconds=trigger.interval.total_seconds(), timezone=trigger.timezone)
        scheduler.reschedule_job(job.id, trigger=trigger)


def _note_signal(_signum: int, _frame: object) -> None:
    """The Python-level handler of the signals `SignalWatcher` watches: it must take no lock (see there)."""


class SignalWatcher:
    """SIGTERM and SIGINT set `stop`; SIGHUP logs a line. A thread of its own does it, never the handler.

    Python runs a signal handler in the main thread, between two bytecodes, whatever that thread holds
    then. A handler that sets an Event takes the event's lock, and one that logs takes the redaction
    filter's (`auditor.redact`): both plain locks. When the signal lands while the main thread holds the
    same lock (the main loop's `stop.wait(tick)` holds the event's between taking it and waiting on
    it, and a loaded machine can stop the thread right there), the handler waits for its own thread:
    forever. The daemon hung that way after "received SIGTERM", before flushing. So the handlers do
    nothing: `signal.set_wakeup_fd` writes each signal's number to a socket, from C, in whichever
    thread the signal reached, and this thread reads it and acts in ordinary code."""

    HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self._read, self._write = socket.socketpair()
        self._write.setblocking(False)  # set_wakeup_fd's requirement: a signal never blocks on it
        self._thread = threading.Thread(target=self._watch, name="signals", daemon=True)
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1

    def start(self) -> None:
        """Install the handlers (from the main thread, as Python requires)."""
        self._thread.start()
        self._previous_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        self._previous = {signum: signal.signal(signum, _note_signal) for signum in self.HANDLED}

    def close(self) -> None:
        """Put the previous handlers back and end the thread."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._write.send(b"\0")  # not a signal's number: the thread's cue to end
        self._thread.join(1.0)
        self._read.close()
        self._write.close()

    def _watch(self) -> None:
        while data := self._read.recv(64):
            for signum in data:
                if signum == 0:
                    return
                if signum == signal.SIGHUP:  # its default would kill the daemon
                    log.info(
                        "received SIGHUP: the config is read at start; restart the service to apply changes"
                    )
                elif signum in (signal.SIGTERM, signal.SIGINT):
                    log.info("received %s: flushing and exiting", signal.Signals(signum).name)
                    self.stop.set()


def run(daemon: Daemon, *, env: Mapping[str, str] | None = None, stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set); returns the exit status: 0, or 1 when a sampling
    pass was stuck at exit. Returns within STOP_DEADLINE_S of the signal: a job still running then (a
    long roll-up, a Slack post) is left, and the caller exits without waiting for its thread (what it
    had not committed is done again at the next start: roll-ups, outbox, billing windows)."""
    env = os.environ if env is None else env
    stop = stop or threading.Event()
    signals = SignalWatcher(stop)
    signals.start()
    running = RunningJobs()
    scheduler = build_scheduler(daemon.jobs(), daemon.config.tz, running)
    scheduler.start()
    sd_notify("READY=1", env)
    if daemon.fleet is not None:
        sd_notify(f"STATUS=fleet mode: rolling up from Prometheus every {daemon.fleet_interval_s:g} s", env)
        log.info("started in fleet mode: rolling up from Prometheus every %g s", daemon.fleet_interval_s)
    else:
        sd_notify(f"STATUS=sampling every {daemon.config.daemon.sample_interval_s:g} s", env)
        log.info(
            "started: sampling every %g s, %d GPU and %d server collector(s)",
            daemon.config.daemon.sample_interval_s,
            len(daemon.gpu_collectors),
            len(daemon.server_collectors),
        )
    watchdog_s = watchdog_interval_s(env)
    tick = min(watchdog_s or 1.0, 1.0)
    flushed = False
    offset = time.time() - time.monotonic()
    try:
        while not stop.wait(tick):
            if watchdog_s is not None and daemon.healthy():
                sd_notify("WATCHDOG=1", env)
            now_offset = time.time() - time.monotonic()
            if abs(now_offset - offset) > CLOCK_JUMP_S:
                log.warning(
                    "the wall clock jumped by %+.0f s: jobs rescheduled from the new time",
                    now_offset - offset,
                )
                reschedule(scheduler)
            offset = now_offset
    finally:
        started = time.monotonic()
        sd_notify("STOPPING=1", env)
        scheduler.shutdown(wait=False)
        flushed = daemon.flush(JOB_WAIT_S)
        if flushed:
            still = running.wait_until_idle(started + STOP_DEADLINE_S - time.monotonic())
            if still:
                log.warning("exiting without waiting for job(s) still running: %s", ", ".join(still))
        signals.close()
        log.info("stopped in %.1f s", time.monotonic() - started)
    return 0 if flushed else 1
