"""Put on the PYTHONPATH of a daemon that runs under libfaketime (tests/hostkit.py `faketime_env`).

libfaketime 0.9.10 (Debian 12) with FAKETIME_DONT_FAKE_MONOTONIC=1 makes `clock_nanosleep` fail with
EINVAL, so every `time.sleep` raises OSError (slack-sdk's retry handlers sleep). A condition wait on the
monotonic clock works under it, so `time.sleep` is routed through one. This repairs the test harness's
clock tool, nothing of the auditor's.
"""

from __future__ import annotations

import threading
import time
from typing import SupportsIndex


def _sleep(seconds: float | SupportsIndex) -> None:
    delay = float(seconds)
    if delay < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(delay)


time.sleep = _sleep
