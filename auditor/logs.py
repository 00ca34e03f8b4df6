"""The daemon's logging: one stderr handler, secrets redacted, journald priorities, no repeated noise.

- Every record goes through one `RedactingFilter` (on the root's handler, and on any handler a
  library installed), so slack_sdk's and urllib3's debug lines cannot leak a webhook URL or a token.
- Under systemd, stderr is the journal (`$JOURNAL_STREAM` names its device and inode): each line then
  starts with its syslog priority (`<4>` for a warning), so `journalctl -p warning` finds it.
  Elsewhere lines are plain.
- APScheduler says "skipped: maximum number of running instances reached" on every tick while a job
  runs long; `RepeatFilter` lets one such line through per job every few minutes, with a count.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from auditor.redact import RedactingFilter, install_on_all_handlers

JOURNAL_STREAM_ENV = "JOURNAL_STREAM"
REPEAT_WINDOW_S = 600.0
LIBRARY_LOGGERS = ("apscheduler", "slack_sdk", "urllib3", "botocore", "sqlalchemy", "matplotlib")

_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """Python's level → syslog priority (journald's `PRIORITY`): warning 4, info 6, debug 7."""
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return 7


def stderr_is_journal(stream: TextIO, env: Mapping[str, str]) -> bool:
    """True when `stream` is the journal's socket ($JOURNAL_STREAM is `device:inode` of it)."""
    value = env.get(JOURNAL_STREAM_ENV)
    if not value:
        return False
    try:
        device, inode = (int(part) for part in value.split(":", 1))
        info = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


class JournalFormatter(logging.Formatter):
    """`<priority>` before each line when the output is the journal; plain otherwise."""

    def __init__(self, fmt: str, *, journal: bool) -> None:
        super().__init__(fmt)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self.journal:
            return text
        prefix = f"<{syslog_priority(record.levelno)}>"
        # A traceback's lines are separate journal entries: each carries the priority.
        return "\n".join(prefix + line for line in text.split("\n"))


class RepeatFilter(logging.Filter):
    """Lets a message (by its format string and first argument) through once per window, then once
    more with how many were held back."""

    def __init__(
        self, window_s: float = REPEAT_WINDOW_S, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.monotonic = monotonic
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        # APScheduler's first argument is the job, printed with its next run time: key on its name.
        key = (str(record.msg), str(args[0]).split(" (", 1)[0] if args else "")
        now = self.monotonic()
        with self._lock:
            last, held = self._seen.get(key, (-float("inf"), 0))
            if now - last < self.window_s:
                self._seen[key] = (last, held + 1)
                return False
            self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {self.window_s / 60:.0f} min)"
        return True


def configure(level: int, *, stream: TextIO | None = None, env: Mapping[str, str] | None = None) -> None:
    """The daemon's logging, configured once at start-up by the composition root."""
    stream = stream or sys.stderr
    env = os.environ if env is None else env
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JournalFormatter("%(levelname)s %(name)s: %(message)s", journal=stderr_is_journal(stream, env))
    )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in LIBRARY_LOGGERS:
        # Libraries speak at warning and above unless --log-level debug asks for everything.
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
    for name in ("apscheduler.scheduler", "apscheduler.executors.default"):
        noisy = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in noisy.filters):
            noisy.addFilter(RepeatFilter())
    install_on_all_handlers(root)
