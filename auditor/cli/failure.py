"""The CLI's failure boundary: any exception a command meets becomes one line and an exit status.

Exit 2: the input cannot be used (an option, a file, the config); exit 1: something the command
depends on is unavailable (the store, a directory, a package, the disk). The line names the thing
and the fix, and is redacted (a store URL's password never reaches the terminal). `--debug` prints
the traceback first.
"""

from __future__ import annotations

import decimal
import errno
import traceback
from typing import TextIO

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from auditor.config import ConfigError
from auditor.errors import EXIT_BAD_INPUT, EXIT_UNAVAILABLE, AuditorError
from auditor.redact import redact
from auditor.store import StoreError

EXIT_INTERRUPTED = 130


def describe(exc: BaseException) -> tuple[list[str], int]:
    """(the lines to print, the exit status) for an exception that reached the boundary."""
    if isinstance(exc, AuditorError):
        return [str(exc)], exc.exit_code
    if isinstance(exc, ConfigError):
        return exc.problems, EXIT_BAD_INPUT
    if isinstance(exc, StoreError):
        return [f"store: {exc}"], EXIT_UNAVAILABLE
    if isinstance(exc, SQLAlchemyError):
        return [store_failure(exc)], EXIT_UNAVAILABLE
    if isinstance(exc, ModuleNotFoundError):
        if (exc.name or "").split(".")[0] in {"psycopg", "psycopg2", "psycopg_binary"}:
            return [
                "a PostgreSQL store needs the driver psycopg, which is not installed: install "
                "gpu-auditor with its `postgres` extra (pip install 'gpu-auditor[postgres]')"
            ], EXIT_UNAVAILABLE
        missing = f"the package {exc.name!r} is missing: reinstall gpu-auditor in its virtualenv"
        return [missing], EXIT_UNAVAILABLE
    if isinstance(exc, UnicodeDecodeError):
        return [
            f"an input file is not UTF-8 text ({exc.reason} at byte {exc.start}): is it the right file?"
        ], EXIT_BAD_INPUT
    if isinstance(exc, OverflowError | decimal.InvalidOperation | decimal.Overflow):
        return [
            "a number given is too large to compute with; use realistic values "
            "(token volumes under 10^18, amounts under $10^12)"
        ], EXIT_BAD_INPUT
    if isinstance(exc, OSError):
        return [_os_failure(exc)], EXIT_UNAVAILABLE
    if isinstance(exc, MemoryError):
        return ["out of memory: the input is too large for this machine"], EXIT_UNAVAILABLE
    return [
        f"internal error ({type(exc).__name__}: {_one_line(str(exc))}); "
        "rerun with --debug for the traceback and report it"
    ], EXIT_UNAVAILABLE


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def store_failure(exc: SQLAlchemyError) -> str:
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    reason = _one_line(str(orig if orig is not None else exc).split("\n(Background")[0])
    lowered = reason.lower()
    if "readonly database" in lowered or "read-only" in lowered:
        fix = "the store is read-only here: give this user write access to its file and directory"
    elif "database or disk is full" in lowered or "no space" in lowered:
        fix = "the disk holding the store is full: free space, or shorten store.raw_retention_h"
    elif "database is locked" in lowered:
        fix = "another process holds the store's write lock: retry, or stop the other writer"
    elif "unable to open database file" in lowered:
        fix = "check store.url: its directory must exist and be writable"
    elif "connection" in lowered or "could not translate host" in lowered or "timeout" in lowered:
        fix = "check store.url, that the database server is running and reachable, and its credentials"
    else:
        fix = "check store.url and the database"
    return f"the store cannot be used ({reason}); {fix}"


def _os_failure(exc: OSError) -> str:
    what = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or str(exc)
    fixes = {
        errno.ENOSPC: "free space on that disk",
        errno.EDQUOT: "free space (the disk quota is reached)",
        errno.EACCES: "give this user access, or choose another path",
        errno.EPERM: "give this user access, or choose another path",
        errno.EROFS: "the file system is read-only: choose a writable path",
        errno.ENOENT: "check the path",
        errno.EISDIR: "give a file, not a directory",
        errno.ENOTDIR: "check the path",
    }
    fix = fixes.get(exc.errno or -1, "check the path and its permissions")
    return f"{what}: {reason}; {fix}"


def report(exc: BaseException, stream: TextIO, *, debug: bool) -> int:
    """Print the failure (and with debug, the traceback first), redacted; returns the exit status."""
    if isinstance(exc, KeyboardInterrupt):
        print("auditor: interrupted", file=stream)
        return EXIT_INTERRUPTED
    if debug:
        stream.write(redact("".join(traceback.format_exception(exc))))
    lines, code = describe(exc)
    for line in lines:
        print(f"auditor: error: {redact(line)}", file=stream)
    return code
