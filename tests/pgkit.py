"""A throwaway PostgreSQL on loopback (Debian's package `postgresql`), for the tests' `postgres_url`
fixture and the benchmarks. As root, initdb and the server run as the `postgres` user."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.promkit import _free_port


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def unavailable() -> str | None:
    """Why a PostgreSQL cannot be started here, or None."""
    if postgres_bin() is None:
        return "PostgreSQL server binaries are not installed (Debian package postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: initdb refuses root"
    return None


@contextmanager
def running_postgres() -> Iterator[str]:
    """Start a fresh cluster; yields its SQLAlchemy URL; stops and removes it on exit."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError(unavailable())
    as_postgres: list[str] = []
    # Outside pytest's own temporary tree, which only root may enter.
    parent = Path(tempfile.mkdtemp(prefix="auditor-pg-"))
    data = parent / "data"
    if os.geteuid() == 0:
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(parent, "postgres")
    port = _free_port()
    try:
        initdb = [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "auditor", "--auth=trust"]
        subprocess.run(initdb, check=True, capture_output=True)
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {data}"
        subprocess.run(
            [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(data / "log"), "-w", "-o",
             options, "start"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        yield f"postgresql+psycopg://auditor@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       check=False, capture_output=True)  # fmt: skip
        shutil.rmtree(parent, ignore_errors=True)


def server_pid(url: str) -> int | None:
    """The postmaster's process id (its CPU time, with its reaped backends', is the server's)."""
    for pidfile in glob.glob("/tmp/auditor-pg-*/data/postmaster.pid"):
        lines = Path(pidfile).read_text().splitlines()
        if len(lines) > 3 and f":{lines[3]}/" in url:
            return int(lines[0])
    return None
