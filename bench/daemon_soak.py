"""The daemon's CPU and memory over N minutes at 10 s sampling, 8 fake GPUs and 2 metrics endpoints.

    .venv/bin/python -m bench.daemon_soak [--minutes 5] [--interval-s 10]

Targets (issue 3): under 0.5 % of one core, under 120 MB RSS. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import tempfile
import time
from pathlib import Path

from tests.hostkit import VllmServer, daemon_env, daemon_process, write_config

PROFILES = ("h100_load", "h100_idle", "h200_load", "h200_idle")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_ready(sock: socket.socket) -> None:
    sock.settimeout(60)
    while sock.recv(4096) != b"READY=1":
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--interval-s", type=float, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, VllmServer() as one, VllmServer() as two:
        directory = Path(tmp)
        config = write_config(directory, servers=[one.url, two.url], interval_s=args.interval_s)
        text = config.read_text().replace("indexes = [0, 1]", "indexes = [0, 1, 2, 3, 4, 5, 6, 7]")
        config.write_text(text)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(directory / "notify.sock"))
        script = {"gpus": [{"profile": PROFILES[i % 4], "uuid": f"GPU-bench-{i}"} for i in range(8)]}
        env = daemon_env(directory, script, NOTIFY_SOCKET=str(directory / "notify.sock"))
        with daemon_process(config, env) as process:
            wait_ready(sock)
            time.sleep(min(30.0, args.minutes * 60 / 4))  # let start-up settle
            cpu0, wall0 = cpu_seconds(process.pid), time.monotonic()
            peak = 0.0
            end = wall0 + args.minutes * 60
            while time.monotonic() < end:
                peak = max(peak, rss_mb(process.pid))
                time.sleep(min(10.0, max(0.0, end - time.monotonic())))
            cpu1, wall1 = cpu_seconds(process.pid), time.monotonic()
            rss_end = rss_mb(process.pid)
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=15)
        print(
            f"daemon, {args.minutes:g} min at {args.interval_s:g} s sampling, 8 fake GPUs, 2 endpoints: "
            f"CPU {100 * (cpu1 - cpu0) / (wall1 - wall0):.3f} % of one core, "
            f"RSS {rss_end:.1f} MB at the end (peak {peak:.1f} MB); "
            f"scrapes served: {one.scrapes} + {two.scrapes}"
        )


if __name__ == "__main__":
    main()
