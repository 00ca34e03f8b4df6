"""The project's own errors: what went wrong, with the thing it concerns and the fix, in one line.

Two kinds, by what a person does about them (and the exit status the CLI gives):
- `BadInputError` (exit 2): an option, a file or a config value that cannot be used; fix the input;
- `UnavailableError` (exit 1): a dependency that cannot be reached or used right now (the store, a
  directory, an optional package); fix the environment, the same command will then work.

Every other exception that reaches the CLI's failure boundary is mapped to one of these there
(`auditor.cli.failure`), or reported as an internal error with a pointer to `--debug`.
"""

from __future__ import annotations

EXIT_UNAVAILABLE = 1
EXIT_BAD_INPUT = 2


class AuditorError(Exception):
    """One line for a person: `message`, then `fix` when there is one."""

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}; {self.fix}" if self.fix else self.message


class BadInputError(AuditorError):
    """The input cannot be used (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class UnavailableError(AuditorError):
    """A dependency cannot be reached or used right now (exit 1)."""

    exit_code = EXIT_UNAVAILABLE
