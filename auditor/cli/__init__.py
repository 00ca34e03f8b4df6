"""`auditor`: the command line, and the composition root that builds what each command needs.

Each module of this package registers its commands on the one Typer app in `common`; `main`
turns usage errors into one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from auditor.cli import alerts, host, install, pricing, report
from auditor.cli.common import EXIT_USAGE, command

# Imported for the commands they register; listed so that the import is explicit.
COMMAND_MODULES = (pricing, host, alerts, report, install)


def main(argv: Sequence[str] | None = None) -> None:
    """The console script."""
    try:
        result = command().main(
            args=list(argv) if argv is not None else None, prog_name="auditor", standalone_mode=False
        )
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("auditor: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as exc:  # click-style usage errors: unknown option, missing value, …
        where = getattr(getattr(exc, "ctx", None), "command_path", "auditor")
        print(f"auditor: error: {exc.format_message()} (see `{where} --help`)", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", EXIT_USAGE))
    sys.exit(result if isinstance(result, int) else 0)
