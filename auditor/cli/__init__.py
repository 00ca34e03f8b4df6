"""`auditor`: the command line, and the composition root that builds what each command needs.

Each module of this package registers its commands on the one Typer app in `app`, which imports a
command's module only when the command runs (`auditor --help` stays fast). `main` is the
failure boundary: usage errors become one line and exit status 2; every other exception a command
meets becomes one line naming the thing and the fix (`auditor.cli.failure`): exit 2 for input that
cannot be used, 1 for a dependency that is unavailable. `--debug`, anywhere on the command line,
prints the traceback too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import typer

from auditor.cli.app import EXIT_USAGE, command
from auditor.redact import redact, register_env_secrets

DEBUG_FLAG = "--debug"
DEBUG_ENV = "AUDITOR_DEBUG"


def take_debug_flag(args: list[str]) -> tuple[list[str], bool]:
    """Remove `--debug` from the arguments (before any `--`); whether it was there."""
    end = args.index("--") if "--" in args else len(args)
    found = DEBUG_FLAG in args[:end]
    return [a for i, a in enumerate(args) if not (i < end and a == DEBUG_FLAG)], found


def main(argv: Sequence[str] | None = None) -> None:
    """The console script."""
    args, debug = take_debug_flag(list(argv) if argv is not None else sys.argv[1:])
    debug = debug or os.environ.get(DEBUG_ENV, "") not in {"", "0"}
    register_env_secrets(os.environ)
    try:
        result = command(everything=False).main(args=args, prog_name="auditor", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("auditor: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as exc:  # click-style usage errors: unknown option, missing value, …
        where = getattr(getattr(exc, "ctx", None), "command_path", "auditor")
        message = redact(exc.format_message())
        if message:  # none after the help a bare group prints (`auditor`, `auditor rules`)
            print(f"auditor: error: {message} (see `{where} --help`)", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", EXIT_USAGE))
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001  (the failure boundary: every exception becomes one line)
        from auditor.cli import failure

        sys.stderr.flush()
        sys.exit(failure.report(exc, sys.stderr, debug=debug))
    sys.exit(result if isinstance(result, int) else 0)
